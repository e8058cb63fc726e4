"""An unreachable Hub fails at once with one error that names the fix, never after a round of retries."""
import os

import pytest
import transformers
from huggingface_hub import constants

from metalearn import foundation


class DeadSession:
    def __init__(self):
        self.calls = 0

    def head(self, url, timeout=None):
        self.calls += 1
        raise ConnectionError("[Errno -2] Name or service not known")


class LiveSession:
    def head(self, url, timeout=None):
        return object()


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub, dead until ``state["session"] = LiveSession()``; records AutoConfig/AutoTokenizer look-ups."""
    import huggingface_hub.utils

    state = {"cached": set(), "calls": [], "session": DeadSession()}

    def from_pretrained(name, **kwargs):
        state["calls"].append(kwargs)
        local_only = kwargs.get("local_files_only", False)
        if (os.path.isdir(name) or (local_only and name in state["cached"])
                or (not local_only and isinstance(state["session"], LiveSession))):
            return transformers.LlamaConfig()
        raise OSError(f"{name} not found")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: state["session"])
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    return state


@pytest.mark.parametrize("load", [foundation._load_hf_config, foundation.load_tokenizer])
def test_unreachable_hub_fails_once_naming_a_local_folder_and_offline_mode(hub, load):
    with pytest.raises(ValueError, match="Hub .* is unreachable") as err:
        load("someone/some-model")
    message = str(err.value)
    assert "Name or service not known" in message and "--local-dir DIR" in message and "HF_HUB_OFFLINE=1" in message
    assert hub["session"].calls == 1  # one probe, no retries
    assert all(call.get("local_files_only") for call in hub["calls"])  # nothing but the cache was asked


def test_unreachable_hub_says_when_the_model_is_cached(hub):
    hub["cached"].add("someone/cached-model")
    with pytest.raises(ValueError, match="it is in the local Hugging Face cache: set HF_HUB_OFFLINE=1"):
        foundation._load_hf_config("someone/cached-model")


def test_reachable_hub_and_offline_mode_load_as_usual(hub, monkeypatch):
    hub["session"] = LiveSession()
    assert isinstance(foundation._load_hf_config("someone/some-model"), transformers.LlamaConfig)
    assert hub["calls"] == [{}]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no probe at all: transformers reads the cache
    hub["session"] = DeadSession()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        foundation._load_hf_config("someone/some-model")
    assert hub["session"].calls == 0


def test_local_folders_never_touch_the_network(hub, tmp_path):
    assert isinstance(foundation._load_hf_config(str(tmp_path)), transformers.LlamaConfig)
    assert hub["session"].calls == 0 and hub["calls"] == [{}]
