"""Quiet by default: no third-party noise on a normal run, and progress that reads well in a log file."""
import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np

from metalearn import quiet
from metalearn.adapters import attach
from metalearn.config import AdapterConfig
from metalearn.progress import FILE_INTERVAL_S, bar
from tests.helpers import small_llama


def test_lora_under_a_soft_prompt_attaches_without_warnings_and_as_get_peft_model_would():
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    config = AdapterConfig(lora_r=2, target_modules=["q_proj"], prompt_tokens=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted = attach(small_llama(), "causal", config)
    assert [str(w.message) for w in caught] == []
    # the reference: peft's get_peft_model on an identically wrapped model (which warns)
    lora = get_peft_model(small_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                    task_type="CAUSAL_LM"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = get_peft_model(lora.base_model.model, PromptTuningConfig(task_type="CAUSAL_LM",
                                                                              num_virtual_tokens=3))
    assert type(adapted.prompt) is type(reference)
    ours, theirs = adapted.prompt.peft_config["default"].to_dict(), reference.peft_config["default"].to_dict()
    assert ours.pop("base_model_name_or_path") == "" and theirs.pop("base_model_name_or_path") is None
    assert ours == theirs
    assert ([(n, p.shape) for n, p in adapted.module.named_parameters()]
            == [(n, p.shape) for n, p in reference.named_parameters()])


def test_lora_on_gpt2_conv1d_layers_is_set_up_without_peft_correcting_it():
    from tests.helpers import small_gpt2

    for targets in (["c_attn"], None):  # named, or peft's default for GPT-2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adapted = attach(small_gpt2(), "causal", AdapterConfig(lora_r=2, target_modules=targets))
        assert [str(w.message) for w in caught] == []
        assert adapted.lora.peft_config["default"].fan_in_fan_out is True
    llama = attach(small_llama(), "causal", AdapterConfig(lora_r=2, target_modules=["q_proj"]))
    assert llama.lora.peft_config["default"].fan_in_fan_out is False


def test_generating_through_a_soft_prompt_raises_no_position_ids_warning():
    import metalearn
    from metalearn.tasks import TextRules

    family = TextRules(k_shot=2, q_query=2)
    learner = metalearn.fit(family, model=small_llama(), method="fomaml", inner_steps=1, meta_steps=0, lora_r=2,
                            target_modules=["q_proj"], prompt_tokens=2, progress=False)
    task = family.sample("test", np.random.default_rng(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        completions = learner.adapt(task.support, steps=1).predict(task.query, max_new_tokens=3)
    assert len(completions) == len(task.query["prompt"])
    assert not [w for w in caught if "Position ids" in str(w.message)]


def test_bitsandbytes_kernel_notice_is_demoted_to_metalearn_debug(caplog):
    quiet.install_log_filters()
    quiet.install_log_filters()  # idempotent
    bnb_logger = logging.getLogger(quiet.BNB_LOGGER)
    assert sum(isinstance(f, quiet._Demote) for f in bnb_logger.filters) == 1
    with caplog.at_level(logging.DEBUG):
        bnb_logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "boom")
        bnb_logger.warning("some other bitsandbytes warning")
    by_logger = {(r.name, r.levelno, r.getMessage()[:40]) for r in caplog.records}
    assert (quiet.BNB_LOGGER, logging.WARNING, "some other bitsandbytes warning") in by_logger
    assert not [r for r in caplog.records if r.name == quiet.BNB_LOGGER and "gemm_4bit" in r.getMessage()]
    assert [r for r in caplog.records if r.name == "metalearn" and r.levelno == logging.DEBUG
            and "boom" in r.getMessage()]


def test_progress_in_a_file_is_plain_lines_at_most_every_interval(capsys):
    assert FILE_INTERVAL_S >= 10
    progress = bar(range(50), desc="meta-train")  # capsys: stderr is not a terminal
    for _ in progress:
        progress.set_postfix(query="1.0", refresh=False)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2, lines  # the start and the end: the loop takes far less than the interval
    assert lines[0].startswith("meta-train:   0%") and lines[1].startswith("meta-train: 100%")
    assert "50/50" in lines[1] and "query=1.0" in lines[1]


def test_a_quantized_prompt_run_prints_nothing_but_progress(tmp_path):
    """A fresh process (fresh warning registry): NF4 base, LoRA + soft prompt, fit, save, reload, generate."""
    script = f"""
import numpy as np, metalearn
from metalearn.foundation import tiny_llama
from metalearn.tasks import TextRules
family = TextRules(k_shot=2, q_query=2)
base = lambda: tiny_llama(vocab_size=128, hidden_size=64, layers=1, heads=2)
learner = metalearn.fit(family, model=base(), method="fomaml", inner_steps=1, meta_steps=2, meta_batch=2,
                        lora_r=2, target_modules=["q_proj"], prompt_tokens=2, quantization="nf4")
learner.save({str(tmp_path / "init")!r})
learner = metalearn.load({str(tmp_path / "init")!r}, model=base())
task = family.sample("test", np.random.default_rng(0))
print(learner.adapt(task.support, steps=1).predict(task.query, max_new_tokens=2))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("meta-train (fomaml): ") for line in lines), result.stderr[-3000:]
    for folder in (tmp_path / "init", tmp_path / "init" / "prompt"):  # not the NF4 reload's temporary folder
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == ""
