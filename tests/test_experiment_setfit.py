"""experiments.setfit_compare runs end to end on tiny budgets: every method on the same episodes, SetFit paired;
``--replay`` reruns the recipe row as a user would and finds the same accuracies."""
import argparse
import json

import numpy as np
import pytest

import metalearn
from experiments import common, guard_steps, setfit_compare
from metalearn.eval import guard


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("setfit") / "run"
    payload = setfit_compare.main(["--quick", "--settings", "5x2", "--setfit-iterations", "1", "--lr-grid", "1.0",
                                   "--quiet", "--output-dir", str(out)])
    return out, payload


def test_setfit_compare_quick(quick_run):
    out, payload = quick_run
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == set(setfit_compare.METHODS)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0 for r in rows.values())
    assert all(r["n"] == 6 and len(r["per_episode"]) == 6 for m, r in rows.items() if m != "setfit")
    assert rows["setfit"]["n"] == 3 and rows["recipe"]["setfit_n"] == 3
    assert rows["recipe"]["recipe"]["steps"] >= 1 and rows["recipe"]["recipe"]["guard"] is True
    verdict = rows["pooled"]["verdict"]  # one verdict pooled over the 6 support sets' folds
    assert verdict["tasks"] == 6 and verdict["use"] in ("meta", "foundation", "per task")
    if verdict["use"] == "per task":  # each task keeps its own decision: the recipe row, episode by episode
        assert rows["pooled"]["per_episode"] == rows["recipe"]["per_episode"]
    else:
        assert rows["pooled"]["kept_foundation"] == (6 if verdict["use"] == "foundation" else 0)
    assert rows["pooled"]["seconds"] > rows["protonet"]["seconds"] / 10  # its folds are counted
    frozen = rows["prototypes"]["per_episode"]
    for r in rows.values():  # paired with the frozen encoder, episode by episode (SetFit: on its episodes)
        mine = r["per_episode"]
        assert r["minus_prototypes"] == pytest.approx(sum(a - b for a, b in zip(mine, frozen)) / len(mine))
    assert rows["prototypes"]["minus_prototypes"] == 0.0 and rows["prototypes"]["minus_prototypes_ci95"] == 0.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"]))
    table = (out / "table.md").read_text()
    assert "python -m experiments.setfit_compare --quick" in table and "| 5-way 2-shot | setfit |" in table
    assert "| − frozen prototypes, paired |" in table
    assert f"Pooled verdicts (over the setting's test support sets' folds): 5-way 2-shot: {verdict['use']}," in table


def test_replay_reruns_the_recipe_row_as_a_user_would(quick_run):
    out, payload = quick_run
    recipe = next(r for r in payload["rows"] if r["method"] == "recipe")
    replayed = setfit_compare.main(["--settings", "5x2", "--replay", "4", "--output-dir", str(out)])
    check, = replayed["checks"]
    assert check["episodes"] == 4 and check["saved_mean"] == pytest.approx(sum(recipe["per_episode"][:4]) / 4)
    assert check["same"] == 4 and check["max_abs_difference"] == 0.0  # the harness's row is the user's path
    assert json.loads((out / "replay.json").read_text())["checks"] == [check]


def test_replay_with_other_guard_folds_pairs_with_every_row(quick_run):
    out, payload = quick_run
    rows = {r["method"]: r["per_episode"] for r in payload["rows"]}
    replayed = setfit_compare.main(["--settings", "5x2", "--replay", "4", "--guard-folds", "2",
                                    "--output-dir", str(out)])
    check, = replayed["checks"]
    assert check["same"] == 4  # at K = 2 two folds are the saved recipe's K folds
    assert set(check["minus"]) == set(setfit_compare.METHODS) and check["minus"]["recipe"] == (0.0, 0.0)
    mean = sum(rows["recipe"][:4]) / 4
    assert check["minus"]["prototypes"][0] == pytest.approx(mean - sum(rows["prototypes"][:4]) / 4)
    assert check["minus"]["setfit"][0] == pytest.approx(sum(rows["recipe"][:3]) / 3 - sum(rows["setfit"]) / 3)
    assert 0 <= check["kept_foundation"] <= 4 and check["seconds"] > 0
    assert json.loads((out / "replay_guard_folds_2.json").read_text())["checks"] == json.loads(json.dumps([check]))


def test_replay_with_a_reused_single_fold_pairs_with_every_row(quick_run, monkeypatch):
    out, payload = quick_run
    import metalearn.learner

    reused = []
    head = metalearn.learner.whole_support_head
    monkeypatch.setattr(metalearn.learner, "whole_support_head", lambda *a: reused.append(1) or head(*a))
    replayed = setfit_compare.main(["--settings", "5x2", "--replay", "4", "--guard-folds", "1", "--reuse-fold",
                                    "--output-dir", str(out)])
    check, = replayed["checks"]
    assert check["reuse_fold"] and check["guard_folds"] == 1 and set(check["minus"]) == set(setfit_compare.METHODS)
    assert len(reused) == 4 - check["kept_foundation"]  # every adapted task kept its fold's adaptation
    saved = json.loads((out / "replay_guard_folds_1_reuse_fold.json").read_text())["checks"]
    assert saved == json.loads(json.dumps([check]))
    assert not metalearn.load(str(out / "5x2" / "learner")).recipe.reuse_fold  # the saved recipe is untouched


def test_replay_with_a_zero_step_guard_keeps_either_the_adapted_init_or_the_frozen_encoder(quick_run):
    out, payload = quick_run
    rows = {r["method"]: r["per_episode"] for r in payload["rows"]}
    replayed = setfit_compare.main(["--settings", "5x2", "--replay", "4", "--guard-steps", "0",
                                    "--output-dir", str(out)])
    check, = replayed["checks"]
    assert check["guard_steps"] == 0 and set(check["minus"]) == set(setfit_compare.METHODS)
    adapted = [a == m for a, m in zip(check["per_episode"], rows["protonet"])]
    frozen = [a == f for a, f in zip(check["per_episode"], rows["prototypes"])]
    assert all(a or f for a, f in zip(adapted, frozen))  # each task went one way or the other, as its row has it
    assert sum(not a for a in adapted) <= check["kept_foundation"]
    assert json.loads((out / "replay_guard_steps_0.json").read_text())["checks"] == json.loads(json.dumps([check]))
    with pytest.raises(SystemExit):
        setfit_compare.main(["--settings", "5x2", "--replay", "4", "--guard-steps", "-1", "--output-dir", str(out)])

def test_replay_pooled_applies_one_verdict_and_pairs_with_every_row(quick_run):
    out, payload = quick_run
    rows = {r["method"]: r["per_episode"] for r in payload["rows"]}
    replayed = setfit_compare.main(["--settings", "5x2", "--replay", "4", "--pooled", "--output-dir", str(out)])
    check, = replayed["checks"]
    assert check["pooled"] == 0 and check["verdict"]["tasks"] == 4 and set(check["minus"]) == set(setfit_compare.METHODS)
    if check["verdict"]["use"] != "per task":
        assert check["kept_foundation"] == (4 if check["verdict"]["use"] == "foundation" else 0)
    mean = check["replayed_mean"]
    assert check["minus"]["prototypes"][0] == pytest.approx(mean - sum(rows["prototypes"][:4]) / 4)
    assert json.loads((out / "replay_pooled.json").read_text())["checks"] == json.loads(json.dumps([check]))
    first = setfit_compare.main(["--settings", "5x2", "--replay", "4", "--pooled", "2", "--output-dir", str(out)])
    check, = first["checks"]  # the verdict from the first 2 support sets; the other 2 follow it or decide alone
    assert check["pooled"] == 2 and check["verdict"]["tasks"] == 2 and (out / "replay_pooled_2.json").is_file()
    if check["verdict"]["use"] == "foundation":
        assert check["kept_foundation"] == 4
    for bad in ("1", "5"):  # at least 2, at most the replayed episodes
        with pytest.raises(SystemExit):
            setfit_compare.main(["--settings", "5x2", "--replay", "4", "--pooled", bad, "--output-dir", str(out)])
    with pytest.raises(SystemExit, match="is a run on 'clinc150', not --target 'hwu64'"):  # the run's target
        setfit_compare.main(["--target", "hwu64", "--settings", "5x2", "--replay", "4", "--output-dir", str(out)])
    with pytest.raises(SystemExit):  # --pooled belongs to a replay
        setfit_compare.main(["--settings", "5x2", "--pooled", "--output-dir", str(out / "other")])


def test_replay_online_settles_the_verdict_as_tasks_arrive_and_may_replay_more_episodes(quick_run):
    out, payload = quick_run
    rows = {r["method"]: r["per_episode"] for r in payload["rows"]}
    replayed = setfit_compare.main(["--settings", "5x2", "--replay", "8", "--online", "--output-dir", str(out)])
    check, = replayed["checks"]  # 8 tasks where the run scored 6: paired on those 6, one look at 8 tasks
    assert check["online"] is True and check["episodes"] == 8 and len(check["per_episode"]) == 8
    verdict = check["verdict"]
    assert verdict is None or verdict["tasks"] == 8 and verdict["use"] in ("meta", "foundation")
    mine = check["per_episode"][:6]
    assert check["minus"]["prototypes"][0] == pytest.approx((sum(mine) - sum(rows["prototypes"])) / 6)
    assert json.loads((out / "replay_online.json").read_text())["checks"] == json.loads(json.dumps([check]))
    with pytest.raises(SystemExit, match="no 5-way 2-shot recipe row with that many episodes"):
        setfit_compare.main(["--settings", "5x2", "--replay", "8", "--output-dir", str(out)])  # the plain check
    for argv in (["--online"], ["--replay", "4", "--online", "--pooled"]):  # a replay; one of the two
        with pytest.raises(SystemExit):
            setfit_compare.main(["--settings", "5x2", *argv, "--output-dir", str(out)])


def test_replay_without_an_earlier_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist; run setfit_compare"):
        setfit_compare.main(["--replay", "4", "--output-dir", str(tmp_path / "none")])
    with pytest.raises(SystemExit):
        setfit_compare.main(["--replay", "-1", "--output-dir", str(tmp_path / "none")])


def test_too_few_classes_in_a_split_is_a_clear_error_before_any_work(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):  # FewRel's spec keeps 3 validation relations; 5-way settings need 5
        setfit_compare.main(["--target", "fewrel", "--settings", "5x1", "--output-dir", str(out)])
    assert not out.exists()
    with pytest.raises(SystemExit):
        setfit_compare.main(["--target", "fewrel", "--splits", "0.5,0.5", "--output-dir", str(out)])
    assert not out.exists()


def test_splits_choose_the_target_classes():
    args = argparse.Namespace(target="fewrel", splits=(0.34, 0.33, 0.33))
    family = setfit_compare.target(args)
    assert [len(family.classes(s)) for s in ("train", "val", "test")] == [6, 5, 5]
    args.splits = None
    assert len(setfit_compare.target(args).classes("val")) == 3  # the spec's own split


def test_guard_steps_rows_are_the_runs_own_paths_paired(quick_run, tmp_path):
    out, payload = quick_run
    rows = {r["method"]: r["per_episode"] for r in payload["rows"]}
    result = guard_steps.main(["--learner", str(out / "5x2" / "learner"), "--targets", "clinc150", "--settings", "5x2",
                               "--episodes", "3", "--guards", "recipe,0:2", "--quiet", "--output-dir", str(tmp_path)])
    got = {r["method"]: r for r in result["rows"]}
    assert list(got)[:2] == ["unguarded", "frozen"] and list(got)[2].endswith("(recipe)") and list(got)[3] == "guard 0:2"
    assert got["unguarded"]["per_episode"] == rows["protonet"][:3]  # the harness's row: the same tasks, recipe steps
    recipe_row = next(r for m, r in got.items() if m.endswith("(recipe)"))
    assert recipe_row["per_episode"] == rows["recipe"][:3]  # what load(saved).adapt(support) did in the run
    for r in got.values():
        assert all(a in (u, f) for a, u, f in zip(r["per_episode"], got["unguarded"]["per_episode"],
                                                 got["frozen"]["per_episode"]))
        assert r["minus_unguarded"][0] == pytest.approx(np.mean(r["per_episode"]) - got["unguarded"]["accuracy"])
    assert json.loads((tmp_path / "results.json").read_text())["rows"][3]["method"] == "guard 0:2"
    assert "guard 0:2" in (tmp_path / "table.md").read_text()
    with pytest.raises(SystemExit):
        guard_steps.main(["--learner", str(out / "5x2" / "learner"), "--settings", "5x1", "--output-dir", str(tmp_path)])


def test_guard_steps_pooled_rows_follow_decide_gateds_verdict(quick_run, tmp_path):
    out, _ = quick_run
    saved = out / "5x2" / "learner"
    result = guard_steps.main(["--learner", str(saved), "--targets", "clinc150", "--settings", "5x2", "--episodes", "4",
                               "--guards", "recipe,pooled:2,pooled", "--quiet", "--output-dir", str(tmp_path)])
    got = {r["method"]: r for r in result["rows"]}
    recipe = next(m for m in got if m.endswith("(recipe)"))
    tasks = metalearn.eval.sample_tasks(common.target_spec("clinc150", n_way=5, k_shot=2, q_query=5), "test", 4, 0)
    learner = metalearn.load(str(saved))
    for name, m in (("pooled:2", 2), ("pooled", 4)):
        _, verdict = guard.decide_gated(learner, [t.support for t in tasks[:m]])  # the library's own pooling
        row = got[name]
        assert row["verdict"] == pytest.approx(verdict)
        if verdict["use"] == "per task":
            assert row["per_episode"] == got[recipe]["per_episode"]
        else:
            path = got["unguarded" if verdict["use"] == "meta" else "frozen"]["per_episode"]
            assert row["per_episode"] == path and row["kept_frozen"] == (4 if verdict["use"] == "foundation" else 0)
    assert "pooled:2: verdict" in (tmp_path / "table.md").read_text()
    with pytest.raises(SystemExit):  # pooling needs the recipe guard's folds
        guard_steps.main(["--learner", str(saved), "--guards", "0:2,pooled", "--output-dir", str(tmp_path)])


def test_guard_steps_reuse_rows_pair_with_a_reference_run_instead_of_recomputing(quick_run, tmp_path):
    out, _ = quick_run
    saved = str(out / "5x2" / "learner")
    first = guard_steps.main(["--learner", saved, "--targets", "clinc150", "--settings", "5x2", "--episodes", "3",
                              "--guards", "recipe,reuse", "--quiet", "--output-dir", str(tmp_path / "a")])
    got = {r["method"]: r for r in first["rows"]}
    steps = metalearn.load(saved).recipe.steps
    assert list(got) == ["unguarded", "frozen", next(m for m in got if m.endswith("(recipe)")), f"reuse {steps}:1"]
    again = guard_steps.main(["--learner", saved, "--targets", "clinc150", "--settings", "5x2", "--episodes", "3",
                              "--guards", "reuse", "--reference", str(tmp_path / "a"), "--quiet",
                              "--output-dir", str(tmp_path / "b")])
    now = {r["method"]: r for r in again["rows"]}
    assert list(now) == ["unguarded", "frozen", f"reuse {steps}:1"]
    for m in now:  # the same tasks: the reference's rows, and the reuse row computed again
        assert now[m]["per_episode"] == got[m]["per_episode"]
        assert now[m]["minus_unguarded"] == pytest.approx(got[m]["minus_unguarded"])
    with pytest.raises(SystemExit):  # another seed: other tasks
        guard_steps.main(["--learner", saved, "--settings", "5x2", "--guards", "reuse", "--seed", "1",
                          "--reference", str(tmp_path / "a"), "--output-dir", str(tmp_path / "c")])
    with pytest.raises(SystemExit):  # the recipe guard needs both paths of every task
        guard_steps.main(["--learner", saved, "--settings", "5x2", "--guards", "recipe",
                          "--reference", str(tmp_path / "a"), "--output-dir", str(tmp_path / "c")])
