"""The experiments run the way their docstrings say: ``python -m experiments.NAME`` from the repository root.

Each script's docstring lists its commands; every one must name the script's own module, so no documented form
(an old ``python examples/NAME.py``, or a path that imports ``experiments`` without the package on the path)
can drift out of use. ``--help`` then runs each module in a fresh interpreter, as a user would.
"""
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["leave_one_out", "loo_report", "clinc_intents", "text_rules", "adapter_sets", "sinusoid_maml", "setfit_compare",
           "frozen_full_label"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_documented_commands_name_the_module(name):
    doc = importlib.import_module(f"experiments.{name}").__doc__
    commands = re.findall(r"^\s+(python\S* .*)$", doc, flags=re.MULTILINE)
    assert commands, f"experiments/{name}.py documents no command"
    for line in commands:
        assert line.startswith(f"python -m experiments.{name}"), line


@pytest.mark.parametrize("name", SCRIPTS)
def test_module_runs_from_the_repository_root(name):
    done = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and "--help" in done.stdout
