"""The `metalearn` command: --help everywhere, fit -> eval through files, the quick demo, bad input."""
import json
import os
import subprocess
import sys

import pytest

from metalearn.cli import build_model, main, parser


def subcommands():
    actions = [a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return actions[0].choices


@pytest.mark.parametrize("command", ["fit", "eval", "demo"])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in subcommands()[command]._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert option in text


def test_help_texts_print_as_written(capsys):
    from metalearn.config import METHODS

    texts = {}
    for command in ("fit", "eval", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        texts[command] = capsys.readouterr().out
    assert all("%%" not in text for text in texts.values())
    assert "95% CI" in texts["eval"]
    method_line = next(line for line in texts["fit"].splitlines() if line.strip().startswith("method:"))
    assert all(method in method_line for method in METHODS), method_line


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "metalearn")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "fit" in result.stdout and "demo" in result.stdout


def test_fit_then_eval_through_files(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("family: {name: sinusoid, k_shot: 5}\nmodel: {name: mlp, hidden: [16], seed: 3}\n"
                      f"fit: {{method: fomaml, inner_steps: 1, meta_steps: 3, meta_batch: 2}}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    assert main(["fit", str(config), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"]["hidden"] == [16]
    out = tmp_path / "eval"
    code = main(["eval", "--learner", f"mine={tmp_path / 'run'}", "--steps", "0,1", "--shots", "2,4", "--episodes",
                 "3", "--baselines", "random_init", "--lr-grid", "1,2", "--val-episodes", "1", "--output-dir", str(out),
                 "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| mine |" in printed and "| random_init |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["shots"] == [2, 4] and results["settings"]["methods"] == ["mine", "random_init"]
    assert (out / "steps.png").stat().st_size > 1000


def test_demo_quick_end_to_end(tmp_path, capsys, monkeypatch, base_cache):
    monkeypatch.setenv("METALEARN_CACHE", base_cache)  # pretrained once per session (or loaded from your cache)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| metasgd |" in printed and "| multitask |" in printed and "| maml |" in printed
    # the printed example: a held-out table, its 8 examples, the frozen base's and the adapted answers
    import re

    assert re.search(r"A new rule, never seen in pretraining or meta-training: `(caesar|affine|permute)\(", printed)
    examples = re.search(r"Its 8 examples \(all the adapters see\): (.*)", printed).group(1)
    assert len(re.findall(r"`[a-f]{4}=[a-f]{4}`", examples)) == 8
    rows = re.findall(r"^\| `[a-f]{4}=` \| `([a-f]{4})` \| `(.*)` \((right|wrong)\) \| `(.*)` \((right|wrong)\) \|$",
                      printed, re.M)
    assert len(rows) == 8
    for truth, base, base_mark, adapted, adapted_mark in rows:
        assert (base == truth) == (base_mark == "right") and (adapted == truth) == (adapted_mark == "right")
    base_hits, adapted_hits = (sum(r[i] == "right" for r in rows) for i in (2, 4))
    # a 4-letter answer over 6 letters is right by chance 1 time in 1296: 3 of 8 is far beyond luck, and leaves room
    # for the CPU-to-CPU spread of the tiny base's pretraining (5 of 8 on a CPU without AVX512-BF16)
    assert adapted_hits >= 3 and adapted_hits > base_hits, rows
    for part in ("sinusoid", "substitution"):
        data = json.loads((out / part / "results.json").read_text())
        assert data["records"] and (out / part / "steps.png").stat().st_size > 1000
    assert json.loads((out / "sinusoid" / "results.json").read_text())["settings"]["steps"] == [0, 1, 5, 10]
    assert (out / "results.md").read_text().startswith("# metalearn demo")


@pytest.mark.parametrize("argv, match", [
    (["eval", "--learner", "{run}", "--steps", ""], r"steps=\[\] is empty"),
    (["eval", "--learner", "{run}", "--steps", "0,-2"], r"not non-negative"),
    (["eval", "--learner", "{run}", "--shots", "0"], r"shots=\[0\]"),
    (["eval", "--learner", "{run}", "--steps", "a,b"], r"--steps 'a,b' is invalid"),
    (["eval", "--learner", "{run}", "--baselines", "in_context"], r"'in_context' does not apply to a 'module'"),
    (["eval", "--learner", "{run}", "--baselines", "randm_init"], r"unknown baseline 'randm_init'"),
    (["eval", "--learner", "{tmp}/nowhere"], r"is not a folder"),
    (["eval", "--baselines", "random_init"], r"nothing to evaluate: give --learner DIR"),
    (["eval", "--base", "{run}"], r"name them with --baselines"),
    (["eval", "--base", "{tmp}/nowhere", "--baselines", "random_init"], r"--base .* is not a folder"),
    (["fit", "{tmp}/missing.yaml"], r"does not exist"),
])
def test_bad_input_exits_2_with_the_fix(argv, match, tmp_path, capsys, saved_run):
    argv = [a.format(run=saved_run, tmp=tmp_path) for a in argv]
    assert main(argv + ["--quiet"]) == 2
    import re

    assert re.search(match, capsys.readouterr().err)


def test_fit_with_a_recipe_saves_it_with_the_learner(tmp_path, capsys):
    import metalearn

    config = tmp_path / "run.yaml"
    config.write_text("family: {name: sinusoid, k_shot: 5}\nmodel: {name: mlp, hidden: [16], seed: 3}\n"
                      "fit: {method: fomaml, inner_steps: 1, meta_steps: 2, meta_batch: 2}\n"
                      "recipe: {steps: [1, 3], lr_grid: [1.0], val_episodes: 2, tolerance: 1.0e+9}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    assert main(["fit", str(config), "--quiet"]) == 0
    assert "recipe (chosen on 2 val tasks): 1 test-time steps" in capsys.readouterr().out
    mlp, _ = build_model({"name": "mlp", "hidden": [16], "seed": 3})
    recipe = metalearn.load(str(tmp_path / "run" / "learner"), model=mlp).recipe  # what adapt() will use
    assert recipe.steps == 1 and recipe.chosen_on["tolerance"] == 1e9  # any tolerance that large: the fewest
    assert set(recipe.chosen_on["val_scores"]) == {"1", "3"} and recipe.chosen_on["val_episodes"] == 2
    assert json.loads((tmp_path / "run" / "run.json").read_text())["recipe"]["steps"] == [1, 3]


@pytest.mark.parametrize("recipe, match", [
    ("{tolerence: 0.02}", r"recipe: unknown option\(s\) \['tolerence'\]"),
    ("{steps: [0, 1]}", r"recipe: steps=\[0, 1\] is invalid"),
    ("{folds: 0}", r"recipe: recipe.folds=0 is invalid"),
    ("{guard_steps: -1}", r"recipe: recipe.guard_steps=-1 is invalid"),
    ("5", r"'recipe' must be true or a mapping"),
])
def test_fit_with_a_bad_recipe_exits_2_before_any_work(recipe, match, tmp_path, capsys):
    import re

    config = tmp_path / "run.yaml"
    config.write_text(f"family: sinusoid\nmodel: mlp\nfit: {{meta_steps: 1}}\nrecipe: {recipe}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    assert main(["fit", str(config), "--quiet"]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_fit_config_with_an_unknown_method(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"family": "sinusoid", "model": "mlp", "fit": {"method": "mamal"},
                                  "output_dir": str(tmp_path / "run")}))
    assert main(["fit", str(config), "--quiet"]) == 2
    assert "method='mamal' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    config = folder / "run.yaml"
    config.write_text(f"family: sinusoid\nmodel: mlp\nfit: {{method: fomaml, meta_steps: 1, meta_batch: 1}}\n"
                      f"output_dir: {folder / 'run'}\n")
    assert main(["fit", str(config), "--quiet"]) == 0
    return str(folder / "run")


def test_eval_with_base_scores_the_baselines_alone(saved_run, tmp_path, capsys):
    """--base: the baselines on a learner's frozen model, the learner itself not scored; the same numbers as beside it."""
    argv = ["--steps", "1", "--episodes", "3", "--baselines", "random_init", "--lr-grid", "none", "--quiet"]
    assert main(["eval", "--base", saved_run, *argv, "--output-dir", str(tmp_path / "base")]) == 0
    assert main(["eval", "--learner", f"mine={saved_run}", *argv, "--output-dir", str(tmp_path / "both")]) == 0
    alone, beside = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("base", "both"))
    assert alone["settings"]["methods"] == ["random_init"] and beside["settings"]["methods"] == ["mine", "random_init"]
    rows = {d: [(r["episode"], r["mse"]) for r in run["records"] if r["method"] == "random_init"]
            for d, run in (("base", alone), ("both", beside))}
    assert len(rows["base"]) == 3 and rows["base"] == rows["both"]
