"""The package surface: a light ``import metalearn`` whose public names still resolve to the right objects."""
import subprocess
import sys

import metalearn


def test_import_metalearn_loads_no_torch_transformers_or_peft():
    code = ("import sys, metalearn; metalearn.RunConfig(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_names_resolve_and_fit_stays_the_function():
    import metalearn.training  # binds the submodule on the package, which must not hide the function
    from metalearn.learner import Learner
    from metalearn.training import fit as fit_function

    assert metalearn.fit is fit_function and callable(metalearn.fit)
    assert metalearn.Learner is Learner and metalearn.tasks.load is not None
    assert set(metalearn.__all__) <= set(dir(metalearn))
    for name in metalearn.__all__:
        assert getattr(metalearn, name) is not None


def test_fit_can_be_replaced_and_restored(monkeypatch):
    original = metalearn.fit
    monkeypatch.setattr(metalearn, "fit", len)
    assert metalearn.fit is len
    monkeypatch.undo()
    assert metalearn.fit is original
