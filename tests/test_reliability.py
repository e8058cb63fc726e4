"""Reliability: kill-and-resume bit-for-bit, divergence guards, determinism, damaged artifacts."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import metalearn
from metalearn import checkpoint
from metalearn.tasks import Task
from tests.helpers import SinusoidFamily, mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40


def run_script(*args, background=False):
    cmd = [sys.executable, "-m", "tests.fit_script", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)


def final_init(out):
    return load_file(os.path.join(out, "learner", "metalearn_state.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted_run_bit_for_bit(tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    run_script(reference, STEPS)
    proc = run_script(killed, STEPS, background=True)
    log_path = os.path.join(killed, "log.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.exists(log_path) and sum(1 for _ in open(log_path)) >= STEPS // 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = checkpoint.load(killed)
    assert 0 < state["step"] < STEPS, "the run must be killed mid-way"
    assert not os.path.exists(os.path.join(killed, "learner"))
    run_script(killed, STEPS, killed)  # resume from the run folder
    ref, resumed = final_init(reference), final_init(killed)
    assert set(ref) == set(resumed)
    for name in ref:
        assert torch.equal(ref[name], resumed[name]), name
    ref_log = [json.loads(line) for line in open(os.path.join(reference, "log.jsonl"))]
    res_log = [json.loads(line) for line in open(os.path.join(killed, "log.jsonl"))]
    assert [r["query_loss"] for r in ref_log] == [r["query_loss"] for r in res_log]


class PoisonedFamily:
    """Sinusoids, except that the task drawn at call number ``bad_call`` has NaN targets."""

    kind = "regression"

    def __init__(self, bad_call):
        self.inner, self.calls, self.bad_call = SinusoidFamily(), 0, bad_call

    def sample(self, split, rng):
        task = self.inner.sample(split, rng)
        self.calls += 1
        if split == "train" and self.calls == self.bad_call:
            y = torch.full_like(task.support["y"], float("nan"))
            return Task({"x": task.support["x"], "y": y}, task.query, "regression", task_id="poisoned-task")
        return task


def test_nan_stops_with_task_and_step_and_keeps_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    # call 1 is fit's probe task; meta-step 3 draws calls 6 and 7 with meta_batch=2
    with pytest.raises(FloatingPointError, match=r"meta-step 3: inner loss is nan at inner step 0 of task 'poisoned-task'"):
        metalearn.fit(PoisonedFamily(bad_call=6), model=mlp(), method="maml", inner_steps=1, meta_batch=2,
                      meta_steps=5, checkpoint_every=1, output_dir=out, progress=False)
    state = checkpoint.load(out)
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["meta"].values())


def test_nan_skip_mode_skips_the_step_and_continues():
    learner = metalearn.fit(PoisonedFamily(bad_call=6), model=mlp(), method="maml", inner_steps=1, meta_batch=2,
                            meta_steps=5, on_nonfinite="skip", progress=False)
    skipped = [r for r in learner.history if "skipped" in r]
    assert [r["step"] for r in skipped] == [3] and "poisoned-task" in skipped[0]["skipped"]
    assert len(learner.history) == 5
    assert all(torch.isfinite(t).all() for t in learner.init.values())


def test_same_seed_same_result_different_seed_different():
    def run(seed):
        return metalearn.fit(SinusoidFamily(), model=mlp(), method="fomaml", inner_steps=1, meta_batch=2,
                             meta_steps=5, seed=seed, progress=False).init

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_resume_with_different_settings_is_refused(tmp_path):
    out = str(tmp_path / "run")
    metalearn.fit(SinusoidFamily(), model=mlp(), method="fomaml", inner_steps=1, meta_batch=2, meta_steps=2,
                  checkpoint_every=1, output_dir=out, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        metalearn.fit(SinusoidFamily(), model=mlp(), method="fomaml", inner_steps=2, meta_batch=2, meta_steps=4,
                      checkpoint_every=1, output_dir=out, resume=out, progress=False)


def test_checkpoint_without_output_dir_is_refused():
    with pytest.raises(ValueError, match="checkpoint_every > 0 needs output_dir"):
        metalearn.fit(SinusoidFamily(), model=mlp(), checkpoint_every=1, progress=False)


def test_damaged_checkpoint_and_adapter_files_fail_clearly(tmp_path):
    from metalearn.build import build_learner
    from metalearn.training import make_config
    from tests.helpers import small_llama

    bad = tmp_path / "checkpoint.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="damaged"):
        metalearn.fit(SinusoidFamily(), model=mlp(), resume=str(bad), progress=False)

    learner = build_learner(make_config(lora_r=2, target_modules=["q_proj"], prompt_tokens=2), small_llama())
    path = tmp_path / "init"
    learner.save(str(path))
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])  # truncated
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        metalearn.load(str(path), model=small_llama())
    learner.save(str(path))
    os.remove(path / "prompt" / "adapter_config.json")  # partial
    with pytest.raises(ValueError, match="partial"):
        metalearn.load(str(path), model=small_llama())
