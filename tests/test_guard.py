"""The forgetting guard picks on validation data, and transfer targets must be held out."""
import numpy as np
import pytest
import torch

from metalearn.build import build_learner
from metalearn.eval import guard
from metalearn.foundation import byte_tokenizer
from metalearn.tasks import NWayKShot
from metalearn.training import make_config
from tests.helpers import CopyFamily, IntentFamily, small_bert, small_llama


def llama_learner(**kw):
    config = make_config(method="fomaml", inner_steps=1, lora_r=2, target_modules=["q_proj", "v_proj"],
                         prompt_tokens=2, **kw)
    return build_learner(config, small_llama())


def encoder_learner(**kw):
    config = make_config(method="fomaml", inner_steps=1, lora_r=2, target_modules=["query", "value"],
                         head="prototype", **kw)
    return build_learner(config, small_bert(), tokenizer=byte_tokenizer())


def test_guard_keeps_the_init_where_it_helps_and_the_foundation_where_it_hurts():
    helpful = encoder_learner()  # LoRA B = 0: the foundation's features; one step on the prototype head helps
    choice = guard.choose(helpful, IntentFamily(), steps=1, episodes=6, metric="nll")
    assert choice["use"] == "meta" and choice["val"]["meta"] < choice["val"]["foundation"]
    damaged = llama_learner(init_lora_weights="gaussian")
    with torch.no_grad():
        for t in damaged.init.values():
            t.copy_(torch.randn_like(t) * 3.0)  # adapters that scramble the model
    choice = guard.choose(damaged, CopyFamily(), episodes=4, metric="nll")
    assert choice["use"] == "foundation" and choice["val"]["foundation"] < choice["val"]["meta"]


def test_a_tie_on_validation_keeps_the_foundation():
    tied = encoder_learner(head_metric="cosine")  # LoRA B = 0 and no steps: exactly the frozen cosine prototypes
    choice = guard.choose(tied, IntentFamily(), foundation="prototypes", steps=0, episodes=4, metric="accuracy")
    assert choice["val"]["meta"] == choice["val"]["foundation"] and choice["use"] == "foundation"


def test_transfer_target_overlapping_meta_training_classes_is_refused():
    rows = {"text": [f"t{i}" for i in range(40)], "label": [f"c{i % 8}" for i in range(40)]}
    source = NWayKShot(rows, n_way=2, k_shot=1, q_query=1, splits=(0.5, 0.25, 0.25), seed=0)
    same_classes = NWayKShot(rows, n_way=2, k_shot=1, q_query=1, splits=(0.25, 0.25, 0.5), seed=1)
    with pytest.raises(ValueError, match="not held out: its test classes"):
        guard.check_held_out(source, same_classes)
    guard.check_held_out(source, source)  # its own test split is held out
    with pytest.raises(ValueError, match="margin"):
        guard.choose(encoder_learner(), IntentFamily(), margin=-1)


# ---------------------------------------------------------------- per task, from the support set alone


def two_shot_task(query_text=None):
    from metalearn.tasks import Task

    support = {"text": ["please alarm now", "alarm me please", "play music now", "some music please",
                        "taxi for me now", "call a taxi please"], "label": torch.tensor([0, 0, 1, 1, 2, 2])}
    query = {"text": query_text or ["alarm at six", "music loud", "taxi home"], "label": torch.tensor([0, 1, 2])}
    return Task(support, query, "classification", task_id="toy", label_names=("alarm", "music", "taxi"))


def test_support_folds_hold_out_one_example_per_class():
    task = two_shot_task()
    folds = guard.support_folds(task)
    assert len(folds) == 2 and len(guard.support_folds(task, folds=1)) == 1
    held = []
    for fold in folds:
        assert sorted(fold.query["label"].tolist()) == [0, 1, 2] and sorted(fold.support["label"].tolist()) == [0, 1, 2]
        assert not set(fold.query["text"]) & set(fold.support["text"])
        held += fold.query["text"]
    assert sorted(held) == sorted(task.support["text"])  # every support example is held out once
    one_shot = type(task)({k: v[::2] for k, v in task.support.items()}, task.query, "classification", task_id="k1")
    with pytest.raises(ValueError, match="needs K >= 2; at K = 1 decide per family"):
        guard.support_folds(one_shot)


def test_support_folds_keep_class_names_in_the_support_and_never_count_them():
    from metalearn.tasks import load

    task = load("clinc150", n_way=5, k_shot=2, q_query=1, class_names=True).sample("test", np.random.default_rng(0))
    names = [task.support["text"][r] for r in task.meta["name_rows"]]
    assert len(names) == 5 and len(task.support["text"]) == 15
    folds = guard.support_folds(task)
    assert len(folds) == 2  # K = 2 real examples per class, not 3 with the name
    held = []
    for fold in folds:
        assert set(names) <= set(fold.support["text"]) and not set(names) & set(fold.query["text"])
        assert sorted(fold.query["label"].tolist()) == [0, 1, 2, 3, 4]
        assert [fold.support["text"][r] for r in fold.meta["name_rows"]] == [n for n in fold.support["text"]
                                                                             if n in names]
        held += fold.query["text"]
    assert sorted(held) == sorted(t for t in task.support["text"] if t not in names)
    one_shot = load("clinc150", n_way=5, k_shot=1, q_query=1, class_names=True).sample(
        "test", np.random.default_rng(0))  # 2 support rows per class, but one is the name
    with pytest.raises(ValueError, match="has 1 support example"):
        guard.support_folds(one_shot)


def test_decide_never_reads_the_query_and_refuses_damaged_adapters():
    learner = encoder_learner(init_lora_weights="gaussian")
    with torch.no_grad():
        for name, t in learner.init.items():
            t.copy_(torch.randn_like(t) * 3.0)  # adapters that scramble the features
    damaged = guard.decide_tasks(learner, [two_shot_task()], steps=0)[0]
    assert damaged["use"] == "foundation" and damaged["folds"] == 2
    acc = damaged["held_out_accuracy"]
    assert acc["foundation"] > acc["meta"] or damaged["held_out_nll"]["foundation"] < damaged["held_out_nll"]["meta"]
    other_query = guard.decide_tasks(learner, [two_shot_task(["x", "y", "z"])], steps=0)[0]
    assert other_query["held_out_accuracy"] == acc and other_query["held_out_nll"] == damaged["held_out_nll"]
    same = encoder_learner()  # LoRA B = 0 and no adaptation: the foundation's own predictions; a tie keeps the init
    tie = guard.decide_tasks(same, [two_shot_task()], steps=0)[0]
    assert tie["held_out_accuracy"]["meta"] == tie["held_out_accuracy"]["foundation"] and tie["use"] == "meta"


def test_combine_takes_each_episode_from_the_chosen_method():
    from metalearn.eval.results import EvalResults

    records = [{"method": m, "shots": 5, "steps": 3, "episode": i, "task_id": f"t{i}", "accuracy": acc}
               for i in range(4) for m, acc in (("meta", 1.0), ("prototypes", 0.5))]
    settings = {"methods": ["meta", "prototypes"], "reference": "prototypes"}
    results = EvalResults(records, [], [], [], settings)
    choices = [{"use": u, "task_id": f"t{i}"} for i, u in enumerate(["meta", "foundation", "meta", "foundation"])]
    guarded = guard.combine(results, "meta", "prototypes", 3, choices)
    mean, _ = guarded.score("meta+guard", "accuracy", 3, shots=5)
    diff, _ = guarded.diff("meta+guard", "accuracy", 3, shots=5)
    assert mean == pytest.approx(0.75) and diff == pytest.approx(0.25)
    assert [r["guard"] for r in guarded.records if r["method"] == "meta+guard"] == [c["use"] for c in choices]
    with pytest.raises(ValueError, match="made for task 'other'"):
        guard.combine(results, "meta", "prototypes", 3, [{"use": "meta", "task_id": "other"}] * 4)
    with pytest.raises(ValueError, match="no 'meta' or 'prototypes' records at 1 steps"):
        guard.combine(results, "meta", "prototypes", 1, choices)


def test_held_out_check_looks_inside_a_mixture_at_the_same_data_set_only():
    from metalearn.tasks import mix

    rows = {"text": [f"t{i}" for i in range(40)], "label": [f"c{i % 8}" for i in range(40)]}
    source = NWayKShot(rows, n_way=2, k_shot=1, q_query=1, splits=(0.5, 0.25, 0.25), seed=0, name="intents")
    other = NWayKShot(rows, n_way=2, k_shot=1, q_query=1, splits=(0.5, 0.25, 0.25), seed=1, name="other")
    target = NWayKShot(rows, n_way=2, k_shot=1, q_query=1, splits=(0.25, 0.25, 0.5), seed=1, name="intents")
    with pytest.raises(ValueError, match="not held out"):
        guard.check_held_out(mix([source, other]), target)
    guard.check_held_out(mix([other]), target)  # the same class names in another data set are other classes


def test_gated_decisions_pool_the_tasks_folds_into_a_family_verdict(monkeypatch):
    from metalearn.tasks import Task

    six = [Task(two_shot_task().support, two_shot_task().query, "classification", task_id=f"t{i}",
                label_names=("alarm", "music", "taxi")) for i in range(6)]

    def folds_say(differences):  # each task's held-out accuracy, meta minus foundation; its own decision follows
        table = dict(zip([f"t{i}" for i in range(6)], differences))
        monkeypatch.setattr(guard, "decide", lambda learner, task, **kw: {
            "use": "meta" if table[task.task_id] > 0 else "foundation", "task_id": task.task_id,
            "held_out_accuracy": {"meta": 0.5 + table[task.task_id], "foundation": 0.5}})

    learner, tasks = encoder_learner(), six[:3]
    folds_say([0.3, -0.1, 0.1])  # better on the whole, but the interval reaches 0: each task keeps its own decision
    choices, verdict = guard.decide_gated(learner, tasks, steps=1)
    assert verdict["use"] == "per task" and verdict["held_out_difference"] == pytest.approx(0.1)
    assert verdict["tasks"] == 3 and verdict["held_out_difference"] - verdict["ci95"] < 0
    assert [c["use"] for c in choices] == ["meta", "foundation", "meta"]
    folds_say([0.3, -0.2, -0.2])  # worse on the whole: the one task that "won" was noise, all keep the foundation
    choices, verdict = guard.decide_gated(learner, tasks, steps=1)
    assert verdict["use"] == "foundation" and [c["use"] for c in choices] == ["foundation"] * 3
    assert [c["task_id"] for c in choices] == ["t0", "t1", "t2"]
    folds_say([0.3, -0.1, 0.1])
    assert guard.decide_gated(learner, tasks, steps=1, margin=0.2)[1]["use"] == "foundation"  # not by enough
    tasks = six
    folds_say([0.3, 0.3, 0.3, 0.3, 0.3, -0.05])  # better beyond doubt: the one task that "lost" was noise, all adapt
    choices, verdict = guard.decide_gated(learner, tasks, steps=1)
    assert verdict["use"] == "meta" and verdict["held_out_difference"] - verdict["ci95"] > 0
    assert [c["use"] for c in choices] == ["meta"] * 6 and choices[5]["gate"] == "family"
    assert choices[5]["verdict"] == verdict  # each choice carries the verdict it follows
    assert verdict["held_out_difference"] - verdict["ci95"] < 0.2
    assert guard.decide_gated(learner, tasks, steps=1, margin=0.2)[1]["use"] == "per task"  # not beyond the margin


def test_a_choice_that_follows_a_verdict_keeps_the_tasks_own_scores():
    verdict = {"use": "foundation", "held_out_difference": -0.1, "ci95": 0.05, "tasks": 40}
    own = {"use": "meta", "task_id": "t3", "held_out_accuracy": {"meta": 0.9, "foundation": 0.8}}
    choice = guard.follow(verdict, own)
    assert choice["use"] == "foundation" and choice["gate"] == "family" and choice["verdict"] == verdict
    assert choice["held_out_accuracy"] == own["held_out_accuracy"] and own["use"] == "meta"  # the task's own: untouched
    verdict["use"] = "meta"  # a later change to the caller's dict does not rewrite a choice already made
    assert choice["verdict"]["use"] == "foundation"
    assert guard.follow(verdict) == {"use": "meta", "gate": "family", "verdict": verdict}  # a task without folds


def test_a_target_gate_settles_its_verdict_online_and_then_skips_the_folds(monkeypatch):

    calls = []

    def folds_say(differences):  # the n-th task's held-out difference, meta minus foundation
        calls.clear()

        def decide(learner, task, **kw):
            calls.append(task.task_id)
            d = differences[len(calls) - 1]
            return {"use": "meta" if d > 0 else "foundation", "task_id": task.task_id,
                    "held_out_accuracy": {"meta": 0.5 + d, "foundation": 0.5}}
        monkeypatch.setattr(guard, "decide", decide)

    learner, support = encoder_learner(), two_shot_task().support
    folds_say([0.3, 0.2, 0.3, 0.25, 0.3, 0.2, 0.3, -0.05] + [0.0] * 8)  # clear at the first look (8 tasks)
    gate = guard.TargetGate(learner, steps=1)
    choices = [gate.choose(support) for _ in range(7)]
    assert gate.verdict is None and [c["use"] for c in choices] == ["meta"] * 7  # each task on its own folds
    eighth = gate.choose(support)
    assert gate.verdict["use"] == "meta" and gate.verdict["tasks"] == 8 and eighth["gate"] == "family"
    assert eighth["use"] == "meta" and eighth["verdict"]["confidence"] == pytest.approx(1 - 0.05 / 2)
    rest = gate.choose_many([support] * 5)
    assert len(calls) == 8 and [c["use"] for c in rest] == ["meta"] * 5  # no more folds
    assert [c["seconds"] for c in rest] == [0.0] * 5 and rest[-1]["task_id"] == "support 12"
    folds_say([0.3, -0.3] * 16)  # never clear: every task follows its own folds, looks at 8, 16 and 32 tasks
    gate = guard.TargetGate(learner, steps=1)
    choices = gate.choose_many([support] * 32)
    assert gate.verdict is None and len(calls) == 32 and [c["use"] for c in choices] == ["meta", "foundation"] * 16
    folds_say([-0.2, -0.3] * 4 + [-0.25] * 8)  # clearly worse: all keep the foundation from the first look on
    batch = guard.TargetGate(learner, steps=1)
    choices = batch.choose_many([support] * 12)
    assert batch.verdict["use"] == "foundation" and [c["use"] for c in choices] == ["foundation"] * 12
    assert len(calls) == 8 and "gate" not in choices[6] and choices[7]["gate"] == "family"
    unclear_then_clear = [0.3] * 6 + [-0.4, -0.3] + [0.3] * 8  # unclear at 8 tasks, clear at 16 (level 1 - 0.05/4)
    folds_say(unclear_then_clear)
    one_by_one = guard.TargetGate(learner, steps=1)
    single = [one_by_one.choose(support) for _ in range(20)]
    folds_say(unclear_then_clear)
    batched = guard.TargetGate(learner, steps=1, first_look=8)
    together = batched.choose_many([support] * 20)
    assert one_by_one.verdict == batched.verdict and one_by_one.verdict["tasks"] == 16 and len(calls) == 16
    assert one_by_one.verdict["confidence"] == pytest.approx(1 - 0.05 / 4)
    assert one_by_one.verdict["half_width"] > one_by_one.verdict["ci95"]  # wider than 95%: the price of 2 looks
    strip = lambda cs: [{k: v for k, v in c.items() if k != "seconds"} for c in cs]  # noqa: E731
    assert strip(single) == strip(together)
    assert [c["use"] for c in single[:8]] == ["meta"] * 6 + ["foundation"] * 2  # before the verdict: own folds
    assert "gate" not in single[14] and all(c["gate"] == "family" and c["use"] == "meta" for c in single[15:])
    for bad, match in [(dict(first_look=1), "first_look=1"), (dict(alpha=0.0), "alpha=0.0"),
                       (dict(workers=0), "workers")]:
        with pytest.raises(ValueError, match=match):
            guard.TargetGate(learner, **bad)


def test_a_target_gate_drives_adapt_on_a_real_learner():
    learner = encoder_learner()
    support = two_shot_task().support
    gate = guard.TargetGate(learner, steps=1, first_look=2)
    first = gate.choose(support)
    assert gate.verdict is None and first["folds"] == 2 and first["seconds"] > 0
    adapted = learner.adapt(support, guard=first, steps=1)
    assert adapted.use == first["use"]
    second = gate.choose(support)  # the same support twice: the same held-out difference, a zero-width interval
    difference = first["held_out_accuracy"]["meta"] - first["held_out_accuracy"]["foundation"]
    assert gate.verdict == {"use": "meta" if difference > 0 else "foundation", "held_out_difference": difference,
                            "ci95": 0.0, "confidence": 0.975, "half_width": 0.0, "tasks": 2}
    assert second["gate"] == "family" and second["held_out_accuracy"] == first["held_out_accuracy"]
    adapted = learner.adapt(support, guard=second, steps=1)
    assert adapted.use == gate.verdict["use"] and "pooled over 2 tasks" in adapted.decision["why"]
    assert gate.choose(support)["seconds"] == 0.0  # settled: no folds
