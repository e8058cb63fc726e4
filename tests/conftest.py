"""Test-wide settings: one intra-op thread, and bitsandbytes' AVX512-BF16 CPU branch forced on.

The tests use tiny models, whose ops are far too small to gain from threads; with several threads
on a busy 2-core machine each tiny op pays thread hand-off and spin-wait costs instead.

bitsandbytes takes another code path on CPUs with AVX512-BF16: an eval-mode, no-grad forward repacks a
4-bit layer's bytes in place (see ``metalearn.quant``). Every 4-bit layer built during the tests believes
it runs on such a CPU, so the suite checks that path on every machine instead of only on some.
"""
import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def force_avx512bf16_cpu_path():
    import bitsandbytes.nn.modules as bnb_modules

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
        yield


@pytest.fixture(scope="session")
def base_cache(tmp_path_factory):
    """Where tests keep pretrained tiny bases: ``$METALEARN_CACHE`` if set, else one folder for the session."""
    return os.environ.get("METALEARN_CACHE") or str(tmp_path_factory.mktemp("metalearn-cache"))
