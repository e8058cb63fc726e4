"""The layer rules (pyproject's import-linter contracts) hold, and an upward import breaks them."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(package_parent: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": package_parent}
    return subprocess.run([LINT, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"], cwd=package_parent,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def package_copy(tmp_path):
    shutil.copytree(os.path.join(ROOT, "metalearn"), tmp_path / "metalearn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_package_keeps_every_contract(package_copy):
    result = lint(str(package_copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("config.py", "from .eval import evaluate", "Layers"),             # the foundations reaching the harness
    ("learner.py", "from .eval.results import EvalResults", "Layers"),  # the Learner knowing evaluation
    ("tasks/task.py", "from ..model import TaskModel", "Task families know no model"),
    ("eval/score.py", "from ..adapters import write_params", "Evaluation reaches models only through the Learner"),
])
def test_an_upward_import_breaks_a_contract(package_copy, module, line, contract):
    path = package_copy / "metalearn" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint(str(package_copy))
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and "BROKEN" in result.stdout
