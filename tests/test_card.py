"""A saved learner's folder is a Hub-ready peft repo: a model card, and push_to_hub up to the network call."""
import json
import os

import numpy as np
import pytest
from huggingface_hub import ModelCard

import metalearn
from metalearn.adapters import load_adapters
from metalearn.tasks import TextRules
from tests.helpers import SinusoidFamily, mlp, small_llama

FAMILY = TextRules(k_shot=2, q_query=2)


@pytest.fixture(scope="module")
def trained():
    learner = metalearn.fit(FAMILY, model=small_llama(), method="fomaml", inner_steps=1, meta_steps=7, meta_batch=2,
                            lora_r=2, target_modules=["q_proj"], prompt_tokens=2, eval_every=3, eval_tasks=1,
                            progress=False)
    results = metalearn.evaluate({"fomaml": learner}, FAMILY, baselines=["random_init"], steps=[0, 1], episodes=3,
                                 val_episodes=1, generate=False, progress=False)
    return learner, results


def test_saved_folder_has_a_hub_valid_peft_model_card(trained, tmp_path):
    learner, _ = trained
    learner.save(str(tmp_path / "init"))
    card = ModelCard.load(str(tmp_path / "init" / "README.md"))
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"metalearn", "meta-learning", "fomaml", "lora", "prompt-tuning"} <= set(card.data.tags)
    assert card.data.base_model is None  # built in memory: no Hub reference to make
    text = card.text
    assert "| task family | TextRules(" in text and "| method | fomaml |" in text
    assert "LoRA (r=2 on q_proj) + a 2-token soft prompt" in text
    last = learner.history[-1]  # the curve's end: the last 5 of 7 meta-steps, with the validation at step 6
    assert "Last 5 of 7 meta-steps" in text and f"| 7 | {last['query_loss']:.4g} |" in text
    assert f"{learner.history[5]['val_query_loss']:.4g} |" in text
    config = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert config == json.loads(json.dumps(learner.config.to_dict()))
    prompt_card = ModelCard.load(str(tmp_path / "init" / "prompt" / "README.md"))
    assert prompt_card.data.library_name == "peft" and "../README.md" in prompt_card.text
    reloaded = metalearn.load(str(tmp_path / "init"), model=small_llama())  # the card changes nothing else
    assert all(np.allclose(reloaded.init[n].detach(), t.detach()) for n, t in learner.init.items())
    assert load_adapters(small_llama(), str(tmp_path / "init")) is not None


def test_card_names_a_hub_base_model(trained, tmp_path, monkeypatch):
    learner, _ = trained
    monkeypatch.setattr(learner.config.base, "name_or_path", "meta-llama/Llama-3.2-1B")
    monkeypatch.setattr(learner.config.base, "quantization", "nf4")
    learner.save(str(tmp_path / "init"))
    card = ModelCard.load(str(tmp_path / "init" / "README.md"))
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert {"base_model:adapter:meta-llama/Llama-3.2-1B", "nf4"} <= set(card.data.tags)
    assert "frozen (4-bit NF4) `meta-llama/Llama-3.2-1B`" in card.text
    monkeypatch.setattr(learner.config.base, "name_or_path", str(tmp_path))  # a local folder is no Hub id
    learner.save(str(tmp_path / "again"))
    assert ModelCard.load(str(tmp_path / "again" / "README.md")).data.base_model is None


def test_evaluation_results_join_the_card_passed_or_saved(trained, tmp_path):
    learner, results = trained
    learner.save(str(tmp_path / "a"), results=results)
    text = (tmp_path / "a" / "README.md").read_text()
    assert results.table() in text
    assert json.loads((tmp_path / "a" / "eval" / "results.json").read_text())["summary"] == json.loads(
        json.dumps(results.summary))
    results.save(str(tmp_path / "eval"))
    learner.save(str(tmp_path / "b"), results=str(tmp_path / "eval"))
    assert results.table() in (tmp_path / "b" / "README.md").read_text()


def test_bad_results_leave_the_saved_folder_untouched(trained, tmp_path):
    learner, _ = trained
    learner.save(str(tmp_path / "init"))
    before = {p: (tmp_path / "init" / p).read_bytes() for p in os.listdir(tmp_path / "init") if p != "prompt"}
    with pytest.raises(ValueError, match="not an evaluation written by EvalResults.save"):
        learner.save(str(tmp_path / "init"), results=str(tmp_path / "nowhere"))
    assert {p: (tmp_path / "init" / p).read_bytes() for p in before} == before
    assert [p for p in os.listdir(tmp_path) if p != "init"] == []  # no temporary folder left behind


def test_a_plain_module_learner_gets_a_card_without_peft_metadata(tmp_path):
    learner = metalearn.fit(SinusoidFamily(), model=mlp(), method="metasgd", inner_steps=1, meta_steps=2,
                            progress=False)
    learner.save(str(tmp_path / "init"))
    card = ModelCard.load(str(tmp_path / "init" / "README.md"))
    assert card.data.library_name is None and "metasgd" in card.data.tags
    assert "All the model's weights + per-tensor step sizes" in card.text


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = sorted(os.path.relpath(os.path.join(d, f), folder_path) for d, _, fs in os.walk(folder_path) for f in fs)
        card = ModelCard.load(os.path.join(folder_path, "README.md"))
        FakeApi.calls.append(("upload_folder", repo_id, kwargs, files, card.data.library_name))

        class Commit:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"
        return Commit()


class Reachable:
    def head(self, url, timeout=None):
        return object()


def test_push_to_hub_uploads_the_saved_folder(trained, monkeypatch):
    import huggingface_hub
    import huggingface_hub.utils
    from huggingface_hub import constants

    learner, results = trained
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: Reachable())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    url = learner.push_to_hub("me/text-rules-init", results=results, private=True, token="t0k")
    assert url == "https://huggingface.co/me/text-rules-init/commit/abc"
    (kind, repo, kwargs), (kind2, repo2, kwargs2, files, library) = FakeApi.calls
    assert (kind, repo, kind2, repo2) == ("create_repo", "me/text-rules-init", "upload_folder", "me/text-rules-init")
    assert kwargs == {"repo_type": "model", "private": True, "exist_ok": True} and kwargs2["repo_type"] == "model"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "metalearn.json",
            "metalearn_state.safetensors", "prompt/adapter_config.json", "eval/results.json"} <= set(files)
    assert library == "peft"


def test_push_to_hub_checks_name_and_network_before_any_work(trained, monkeypatch):
    import huggingface_hub
    import huggingface_hub.utils
    from huggingface_hub import constants

    learner, _ = trained
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("network reached"))
    monkeypatch.setattr(learner, "save", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ValueError, match="repo_id='not a/valid/id' is invalid"):
        learner.push_to_hub("not a/valid/id")

    class Dead:
        def head(self, url, timeout=None):
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: Dead())
    with pytest.raises(ValueError, match="unreachable .*Name or service not known.*hf upload me/x DIR"):
        learner.push_to_hub("me/x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        learner.push_to_hub("me/x")
