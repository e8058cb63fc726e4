"""adapt() runs the recipe: the step count and step size chosen on val tasks, and the guard, saved with the learner."""
import json
import os

import numpy as np
import pytest
import torch

import metalearn
import metalearn.guarded
from metalearn.build import build_learner
from metalearn.config import Recipe
from metalearn.eval import baselines as bl
from metalearn.eval import guard
from metalearn.eval.recipe import fewest_within
from metalearn.foundation import byte_tokenizer
from metalearn.functional import head_logits, logits
from metalearn.tasks import Task
from metalearn.training import make_config
from tests.helpers import IntentFamily, small_bert


def encoder_learner(seed=0):
    config = make_config(method="fomaml", inner_steps=1, inner_lr=0.05, lora_r=2, target_modules=["query", "value"],
                         head="prototype")
    return build_learner(config, small_bert(seed), tokenizer=byte_tokenizer())


def task(seed=0):
    return IntentFamily().sample("test", np.random.default_rng(seed))


def test_tune_recipe_chooses_on_val_tasks_and_saves_with_the_learner(tmp_path):
    learner = encoder_learner()
    recipe = metalearn.tune_recipe(learner, IntentFamily(), steps=[1, 3], lr_grid=[0.5, 2.0], val_episodes=3)
    assert learner.recipe is recipe and recipe.steps in (1, 3) and recipe.scale in (0.5, 2.0) and recipe.guard
    assert set(recipe.chosen_on["val_scores"]) == {"1", "3"} and recipe.chosen_on["metric"] == "accuracy"
    best = max(recipe.chosen_on["val_scores"].values())
    assert recipe.chosen_on["val_scores"][str(recipe.steps)] == best
    learner.save(str(tmp_path / "init"))
    saved = json.loads((tmp_path / "init" / "metalearn.json").read_text())
    assert saved["recipe"] == recipe.to_dict()
    assert metalearn.load(str(tmp_path / "init"), model=small_bert()).recipe == recipe


@pytest.mark.parametrize("scores, higher, tolerance, fewest", [
    ({1: 0.719, 2: 0.7175, 3: 0.721, 5: 0.73, 10: 0.731}, True, 0.0, 10),  # FewRel 5-way 1-shot's validation
    ({1: 0.719, 2: 0.7175, 3: 0.721, 5: 0.73, 10: 0.731}, True, 0.005, 5),
    ({1: 0.719, 2: 0.7175, 3: 0.721, 5: 0.73, 10: 0.731}, True, 0.01, 3),
    ({1: 0.719, 2: 0.7175, 3: 0.721, 5: 0.73, 10: 0.731}, True, 0.015, 1),
    ({1: 0.9, 3: 0.9, 5: 0.8}, True, 0.0, 1),  # an exact tie: the fewer steps
    ({1: 2.0, 3: 1.5, 5: 1.45}, False, 0.1, 3),  # lower is better (NLL)
    ({1: float("-inf"), 3: 0.5, 5: 0.52}, True, 10.0, 3)])  # a diverged count is never within reach
def test_fewest_steps_within_the_tolerance(scores, higher, tolerance, fewest):
    assert fewest_within(scores, higher, tolerance) == fewest


def test_tune_recipe_with_a_tolerance_takes_the_fewest_steps_within_it():
    learner = encoder_learner()
    exact = metalearn.tune_recipe(learner, IntentFamily(), steps=[1, 3], lr_grid=[0.5, 2.0], val_episodes=3)
    loose = metalearn.tune_recipe(learner, IntentFamily(), steps=[1, 3], lr_grid=[0.5, 2.0], val_episodes=3,
                                  tolerance=1.0)
    assert loose.chosen_on["val_scores"] == exact.chosen_on["val_scores"]  # the same search, another choice
    assert loose.steps == 1 and loose.chosen_on["tolerance"] == 1.0 and learner.recipe is loose
    assert exact.chosen_on["val_scores"][str(exact.steps)] == max(exact.chosen_on["val_scores"].values())


def test_adapt_uses_the_recipe_steps_and_step_size():
    learner = encoder_learner()
    t = task()
    learner.recipe = Recipe(steps=3, scale=7.0, guard=False)
    adapted = learner.adapt(t.support)
    assert len(adapted.support_losses) == 3 and adapted.use == "meta"
    expected, _ = learner.adapt_params(learner.episode(Task(t.support, t.support, "classification")), 3, 7.0)
    plain, _ = learner.adapt_params(learner.episode(Task(t.support, t.support, "classification")), 3, 1.0)
    assert all(torch.equal(adapted.params[n], expected[n]) for n in expected)
    assert any(not torch.equal(adapted.params[n], plain[n]) for n in plain)  # the scale made a difference
    told = learner.adapt(t.support, steps=1, scale=1.0)  # explicit arguments win over the recipe
    assert len(told.support_losses) == 1


def test_adapt_is_guarded_by_default_at_two_shots_and_matches_the_evaluation_guard():
    learner = encoder_learner()
    t = task(1)
    adapted = learner.adapt(t.support)
    decision = guard.decide(learner, t, steps=learner.config.inner.steps)  # the tables' guard, zero-shot foundation
    assert adapted.decision["use"] == decision["use"] == adapted.use
    assert adapted.decision["held_out_accuracy"] == pytest.approx(decision["held_out_accuracy"])
    assert "held-out support accuracy" in adapted.decision["why"]
    unguarded = learner.adapt(t.support, guard=False)
    assert unguarded.use == "meta" and "unguarded" in unguarded.decision["why"]


def test_a_damaged_init_keeps_the_foundation_and_predicts_like_it():
    learner = encoder_learner()
    with torch.no_grad():
        for name, tensor in learner.init.items():
            tensor.copy_(torch.randn_like(tensor) * 4.0)  # adapters that scramble the encoder
    t = task(2)
    adapted = learner.adapt(t.support)
    assert adapted.use == "foundation", adapted.decision
    assert adapted.decision["held_out_accuracy"]["foundation"] > adapted.decision["held_out_accuracy"]["meta"]
    pred = adapted.predict(t.query)
    with learner.frozen() as frozen:  # the zero-shot baseline: frozen features, the learner's prototype head
        expected = bl.feature_scores("zero_shot", frozen, *_features(frozen, t), t.n_way)
    assert float((pred == t.query["label"]).float().mean()) == pytest.approx(expected["accuracy"])
    with pytest.raises(ValueError, match="kept the frozen foundation"):
        adapted.as_module()


def _features(frozen, t):
    with torch.no_grad():
        s, q = frozen.encode(t.support, "classification"), frozen.encode(t.query, "classification")
        return frozen.features(s), s["label"], frozen.features(q), q["label"]


def test_one_shot_adapts_unguarded_and_a_given_verdict_is_applied():
    learner = encoder_learner()
    t = task(3)
    one = {"text": t.support["text"][::2], "label": t.support["label"][::2]}
    adapted = learner.adapt(one)
    assert adapted.use == "meta" and "K = 1" in adapted.decision["why"]
    with pytest.raises(ValueError, match="needs K >= 2"):
        learner.adapt(one, guard=True)
    assert learner.adapt(t.support, guard="foundation").use == "foundation"
    with pytest.raises(ValueError, match="guard='maybe' is invalid"):
        learner.adapt(t.support, guard="maybe")


def test_a_verdict_pooled_over_a_users_support_sets_uses_the_recipe_and_goes_to_adapt():
    learner = encoder_learner()
    learner.recipe = Recipe(steps=2, scale=3.0, guard=True, folds=2)
    tasks = [task(s) for s in range(4)]
    supports = [t.support for t in tasks]  # what a user has: support sets, no query
    choices, verdict = guard.decide_gated(learner, supports)
    alone = [guard.decide(learner, Task(s, s, "classification"), steps=2, scale=3.0, folds=2) for s in supports]
    assert [c["held_out_accuracy"] for c in choices] == [a["held_out_accuracy"] for a in alone]  # the recipe's
    assert [c["folds"] for c in choices] == [2] * 4 and verdict["tasks"] == 4
    for support, choice in zip(supports, choices):
        adapted = learner.adapt(support, guard=choice)
        assert adapted.use == choice["use"] and adapted.decision["held_out_accuracy"] == choice["held_out_accuracy"]
    own = {k: v for k, v in choices[0].items() if k != "verdict"}
    pooled = learner.adapt(supports[0], guard={**own, "use": "foundation", "gate": "family"})
    assert pooled.use == "foundation" and "pooled over many tasks" in pooled.decision["why"]
    verdict = {"use": "foundation", "held_out_difference": -0.05, "ci95": 0.02, "tasks": 4}
    pooled = learner.adapt(supports[0], guard={**own, "use": "foundation", "gate": "family", "verdict": verdict})
    assert "pooled over 4 tasks: held-out accuracy adapted minus foundation -0.050 ± 0.020" in pooled.decision["why"]
    adapted = learner.adapt(supports[0], guard={**own, "use": "meta", "gate": "family"})
    expected, _ = learner.adapt_params(learner.episode(Task(supports[0], supports[0], "classification")), 2, 3.0)
    assert all(torch.equal(adapted.params[n], expected[n]) for n in expected)  # the recipe's steps and step size
    with pytest.raises(ValueError, match="a decision needs use='meta' or 'foundation'"):
        learner.adapt(supports[0], guard={"use": "per task"})
    with pytest.raises(ValueError, match="was given none"):
        guard.decide_gated(learner, [])
    one_shot = {"text": supports[0]["text"][::2], "label": supports[0]["label"][::2]}
    with pytest.raises(ValueError, match="needs K >= 2"):  # nothing to hold out
        guard.decide_gated(learner, [one_shot, one_shot])


@pytest.mark.parametrize("bad, match", [
    (dict(steps=-1), "recipe.steps=-1"), (dict(steps=2, scale=0), "recipe.scale=0"),
    (dict(steps=2, folds=0), "recipe.folds=0"), (dict(steps=2, margin=-0.1), "recipe.margin=-0.1"),
    (dict(steps=2, reuse_fold=1), "recipe.reuse_fold=1"),
    (dict(steps=2, reuse_fold=True, guard_steps=0), "has no adaptation to reuse")])
def test_bad_recipes_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**bad)


def test_bad_tune_recipe_settings_are_refused_before_any_work():
    learner = encoder_learner()
    for kwargs, match in [(dict(steps=[0]), "steps=\\[0\\]"), (dict(lr_grid=[-1.0]), "lr_grid"),
                          (dict(val_episodes=0), "val_episodes=0"), (dict(margin=-1.0), "recipe.margin"),
                          (dict(tolerance=-0.1), "tolerance=-0.1"), (dict(tolerance=float("nan")), "tolerance=nan")]:
        with pytest.raises(ValueError, match=match):
            metalearn.tune_recipe(learner, IntentFamily(), **kwargs)
    assert learner.recipe is None


def test_a_corrupted_saved_recipe_is_a_clear_error(tmp_path):
    learner = encoder_learner()
    learner.recipe = Recipe(steps=2)
    path = str(tmp_path / "init")
    learner.save(path)
    meta_path = os.path.join(path, "metalearn.json")
    meta = json.loads(open(meta_path).read())
    meta["recipe"]["steps"] = "many"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="its recipe is corrupted.*recipe.steps='many'"):
        metalearn.load(path, model=small_bert())


def test_adapt_and_predict_run_without_dropout_and_leave_the_mode_as_found():
    learner = encoder_learner()  # built from a model in training mode: BERT's dropout 0.1 is live
    module = learner.model
    assert module.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules())
    t = task(2)
    runs = [learner.adapt(t.support, steps=2, guard=False) for _ in range(2)]
    assert runs[0].support_losses == runs[1].support_losses  # no dropout mask was drawn
    assert all(torch.equal(runs[0].params[n], runs[1].params[n]) for n in runs[0].params)
    assert torch.equal(runs[0].predict(t.query), runs[1].predict(t.query))
    module.eval()
    reference = learner.adapt(t.support, steps=2, guard=False)  # the same numbers in eval mode by hand
    assert all(torch.equal(reference.params[n], runs[0].params[n]) for n in reference.params)
    module.train()
    assert all(m.training for m in module.modules())  # adapt/predict put every submodule's mode back
    learner.adapt(t.support, steps=1, guard=False).predict(t.query)
    assert all(m.training for m in module.modules())
    module.train()
    with torch.random.fork_rng():  # in training mode, the same loop does draw masks: the test can fail
        noisy = [learner.adapt_params(learner.episode(Task(t.support, t.support, "classification")), 2)[1]
                 for _ in range(2)]
    assert noisy[0] != noisy[1]



def _fold_scores_by_adapting(learner, t, folds):
    """``guarded.decide``'s held-out accuracies at 0 steps the long way: per fold, the inner loop run for 0 steps
    on the rest (the init and its prototype head), the foundation's prototypes of the rest, each fold encoded
    on its own."""
    meta, base = [], []
    for pseudo in guard.support_folds(t, folds):
        fast, losses = learner.adapt_params(learner.episode(Task(pseudo.support, pseudo.support, "classification")), 0)
        assert losses == []
        with torch.no_grad():
            query = learner.model.encode(pseudo.query, "classification")
            meta.append(float((logits(learner.model, fast, query).argmax(-1) == query["label"]).double().mean()))
            head = learner.foundation_head(pseudo)
            with learner.frozen() as frozen:
                lg = head_logits(frozen, head, frozen.features(frozen.encode(pseudo.query, "classification")))
                base.append(float((lg.argmax(-1) == query["label"]).double().mean()))
    return {"meta": float(np.mean(meta)), "foundation": float(np.mean(base))}


@pytest.mark.parametrize("folds", [None, 2])
def test_a_zero_step_guard_scores_the_folds_from_one_forward_as_the_inner_loop_would(folds):
    learner = encoder_learner()
    with torch.no_grad():
        for tensor in learner.init.values():
            tensor.add_(torch.randn_like(tensor) * 0.5)  # an init whose features differ from the foundation's
    for seed in range(3):
        t = task(seed)
        decision = guard.decide(learner, t, steps=0, folds=folds, foundation="zero_shot")
        fast = metalearn.guarded.decide(learner, t, steps=0, folds=folds)
        assert decision["held_out_accuracy"] == pytest.approx(_fold_scores_by_adapting(learner, t, folds))
        assert fast["held_out_accuracy"] == pytest.approx(decision["held_out_accuracy"])
        assert fast["held_out_nll"] == pytest.approx(decision["held_out_nll"], rel=1e-4)
        assert fast["folds"] == (folds or 2)


def test_adapt_runs_the_recipes_guard_steps_and_no_inner_loop_for_the_folds_at_zero(monkeypatch):
    learner = encoder_learner()
    t = task(1)
    learner.recipe = Recipe(steps=2, scale=3.0, guard=True, guard_steps=0)
    calls = []
    adapt_params = learner.adapt_params
    monkeypatch.setattr(learner, "adapt_params", lambda *a, **k: calls.append(a[1:]) or adapt_params(*a, **k))
    adapted = learner.adapt(t.support)
    expected = guard.decide(learner, t, steps=0)
    assert adapted.decision["held_out_accuracy"] == pytest.approx(expected["held_out_accuracy"])
    assert calls == ([(2, 3.0)] if adapted.use == "meta" else [])  # the folds adapted nothing
    calls.clear()
    learner.recipe = Recipe(steps=2, scale=3.0, guard=True, guard_steps=1)
    learner.adapt(t.support, guard=True)
    assert calls[:2] == [(1, 3.0), (1, 3.0)]  # one adaptation per fold (K = 2), at the guard's steps
    learner.recipe = Recipe(steps=2, scale=3.0, guard=True, folds=2, guard_steps=0)
    choices, _ = guard.decide_gated(learner, [t.support])
    assert choices[0]["held_out_accuracy"] == pytest.approx(expected["held_out_accuracy"])


def test_guard_steps_are_saved_with_the_recipe_and_checked(tmp_path):
    learner = encoder_learner()
    recipe = metalearn.tune_recipe(learner, IntentFamily(), steps=[1], lr_grid=[1.0], val_episodes=2, guard_steps=0)
    assert recipe.guard_steps == 0
    learner.save(str(tmp_path / "init"))
    assert metalearn.load(str(tmp_path / "init"), model=small_bert()).recipe.guard_steps == 0
    old = {k: v for k, v in recipe.to_dict().items() if k != "guard_steps"}  # saved before the field existed
    assert Recipe.from_dict(old).guard_steps is None
    with pytest.raises(ValueError, match="recipe.guard_steps=-1"):
        metalearn.tune_recipe(learner, IntentFamily(), guard_steps=-1)


@pytest.mark.parametrize("folds", [1, 2])
def test_reuse_fold_keeps_the_first_folds_adaptation_with_prototypes_of_the_whole_support(monkeypatch, tmp_path, folds):
    from metalearn.functional import prototype_head
    from metalearn.tasks.folds import support_folds

    learner = encoder_learner()
    t = task(1)
    learner.recipe = Recipe(steps=2, scale=3.0, guard=True, folds=folds, reuse_fold=True)
    learner.save(str(tmp_path / "init"))
    learner = metalearn.load(str(tmp_path / "init"), model=small_bert())
    assert learner.recipe.reuse_fold
    monkeypatch.setattr(metalearn.guarded, "_foundation_fold_scores",  # the foundation loses every fold: adapt
                        lambda learner, pseudo: {"accuracy": -1.0, "nll": float("inf")})
    calls = []
    adapt_params = learner.adapt_params
    monkeypatch.setattr(learner, "adapt_params", lambda *a, **k: calls.append(a[1:]) or adapt_params(*a, **k))
    adapted = learner.adapt(t.support)
    assert adapted.use == "meta" and "first fold's adaptation" in adapted.decision["why"]
    assert calls == [(2, 3.0)] * folds  # the folds' adaptations only: none again on the whole support set
    # independently: fold 0 adapted by hand, then ProtoMAML's head on the whole (one-batch) support set
    pseudo = support_folds(t, folds)[0]
    fold, losses = adapt_params(learner.episode(metalearn.tasks.Task(pseudo.support, pseudo.support, t.kind)), 2, 3.0)
    expected = {**fold, **prototype_head(learner.model, fold, learner.model.encode(t.support, "classification"),
                                         t.n_way)}
    assert set(adapted.params) == set(expected) and adapted.support_losses == pytest.approx(losses)
    for n, v in expected.items():
        torch.testing.assert_close(adapted.params[n], v, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(adapted.params["head.weight"], fold["head.weight"])  # the head saw the held-out shots
    refit = Recipe(steps=2, scale=3.0, guard=True, folds=folds)
    learner.recipe = refit
    calls.clear()
    again = learner.adapt(t.support)
    assert calls == [(2, 3.0)] * folds + [(2, 3.0)]  # without reuse_fold: one more adaptation, on all K shots
    assert "first fold" not in again.decision["why"]
