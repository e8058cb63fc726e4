"""Two runs, one folder: the run lock, concurrent saves and loads, symlinks and permissions of saved folders."""
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import metalearn
from metalearn.build import build_learner
from metalearn.training import make_config
from tests.helpers import SinusoidFamily, mlp, small_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = "metalearn.lock"


def start_run(out, steps=100_000):
    """A long fit (tests/fit_script.py) in another process; returns once it has written its first log line."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tests.fit_script", str(out), str(steps)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"the background run did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    return proc


def quick_fit(out, **kwargs):
    return metalearn.fit(SinusoidFamily(), model=mlp(), method="fomaml", inner_steps=1, meta_batch=2, meta_steps=2,
                         output_dir=str(out), progress=False, **kwargs)


def test_a_folder_held_by_a_live_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    proc = start_run(out)
    try:
        lines = len((out / "log.jsonl").read_text().splitlines())
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == proc.pid and holder["host"]
        with pytest.raises(RuntimeError, match=rf"in use by a live run: pid {proc.pid} on .*another output_dir"):
            quick_fit(out)
        assert not (out / "learner").exists()
        assert len((out / "log.jsonl").read_text().splitlines()) >= lines  # the live run's log was not rewritten
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == proc.pid  # a crash leaves the file, naming a dead pid
    learner = quick_fit(out)  # ... which is taken over
    assert len(learner.history) == 2 and (out / "learner" / "metalearn.json").exists()
    assert not (out / LOCK).exists(), "the lock file is removed when the run ends"


def test_a_lock_file_naming_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": "gone"}))
    quick_fit(out)
    assert not (out / LOCK).exists()


# ------------------------------------------------------------------ concurrent saves and loads

SAVES = 25


def lora_mlp_learner():
    return build_learner(make_config(lora_r=2, target_modules=["0", "2"]), mlp())


def save_and_load_loop(path, value, queue):
    """Save a learner whose every tensor equals ``value``, load, check the load is one whole save; repeat."""
    torch.set_num_threads(1)
    learner = lora_mlp_learner()
    with torch.no_grad():
        for t in [*learner.init.values(), *learner.step_sizes.values()]:
            t.fill_(value)
    errors, seen = [], set()
    for _ in range(SAVES):
        for action in ("save", "load", "load"):
            try:
                if action == "save":
                    learner.save(path)
                    continue
                loaded = metalearn.load(path, model=mlp())
                tensors = [*loaded.init.values(), *loaded.step_sizes.values()]
                values = {float(v) for t in tensors for v in t.detach().flatten()}
                if len(values) != 1:
                    errors.append(f"a load mixed two saves: values {sorted(values)}")
                seen |= values
            except Exception as err:  # noqa: BLE001 - every failure is the finding
                errors.append(f"{action}: {type(err).__name__}: {err}")
    queue.put((value, errors, sorted(seen)))


def test_concurrent_saves_and_loads_of_one_folder_never_fail_mix_or_leave_stray_folders(tmp_path):
    path = str(tmp_path / "learner")
    lora_mlp_learner()  # import peft here, once, before the workers fork
    ctx = multiprocessing.get_context("fork")  # no re-import: the workers start at once
    queue = ctx.Queue()
    procs = [ctx.Process(target=save_and_load_loop, args=(path, value, queue)) for value in (1.0, 2.0, 3.0)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [f"writer {value}: {e}" for value, errs, _ in results for e in errs]
    assert not errors, f"{len(errors)} failures, e.g. {errors[:3]}"
    assert set().union(*(seen for _, _, seen in results)) <= {1.0, 2.0, 3.0}
    assert os.listdir(tmp_path) == ["learner"], "no .old, temporary or lock files may be left behind"
    final = metalearn.load(path, model=mlp())
    assert len({float(v) for t in final.init.values() for v in t.detach().flatten()}) == 1


# ------------------------------------------------------------------ symlinks and permissions

def test_a_load_waits_for_a_save_in_the_middle_of_its_swap(tmp_path):
    """A load that starts while a save holds the lock with the folder swapped out waits, then reads the new one
    (checked outside the lock, the missing folder was an error: 'does not exist' / 'is a file')."""
    import threading

    from metalearn import files, saved

    path = tmp_path / "learner"
    lora_mlp_learner().save(str(path))
    aside = tmp_path / ".learner.old"
    result: dict = {}

    def load():
        try:
            result["folder"] = saved.read(str(path))
        except Exception as err:  # noqa: BLE001 - reported below
            result["error"] = err

    with files.locked(saved._lock_path(str(path))):  # what publish holds while it swaps
        os.rename(path, aside)
        reader = threading.Thread(target=load)
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive(), f"the load did not wait for the save: {result}"
        os.rename(aside, path)
    reader.join(timeout=30)
    assert "error" not in result and result["folder"].meta["config"]


def test_saving_through_a_symlink_updates_its_target(tmp_path):
    real = tmp_path / "store" / "init"
    real.parent.mkdir()
    first = lora_mlp_learner()
    first.save(str(real))
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    second = lora_mlp_learner()
    with torch.no_grad():
        for t in second.init.values():
            t.add_(1.0)
    second.save(str(link))
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert os.listdir(real.parent) == ["init"]
    loaded = metalearn.load(str(real), model=mlp())
    assert all(torch.equal(loaded.init[n], second.init[n].detach()) for n in second.init)


@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_saved_folders_get_the_permissions_the_umask_gives(tmp_path, umask, folder_mode, file_mode):
    learner = build_learner(make_config(lora_r=2, target_modules=["q_proj"], prompt_tokens=2), small_llama())
    old = os.umask(umask)
    try:
        learner.save(str(tmp_path / "init"))
    finally:
        os.umask(old)
    root = tmp_path / "init"
    for folder in (root, root / "prompt"):
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode, folder
    for name in ("metalearn.json", "metalearn_state.safetensors", "adapter_model.safetensors",
                 "prompt/adapter_model.safetensors"):
        assert stat.S_IMODE((root / name).stat().st_mode) == file_mode, name


def test_saving_over_a_folder_that_is_not_a_saved_learner_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files and no metalearn.json"):
        lora_mlp_learner().save(str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_save_sweeps_the_old_folder_a_crash_mid_swap_left_behind(tmp_path):
    learner = lora_mlp_learner()
    learner.save(str(tmp_path / "learner"))
    (tmp_path / ".learner.old-999-deadbeef").mkdir()  # what a SIGKILL between the swap's two renames leaves
    learner.save(str(tmp_path / "learner"))
    assert os.listdir(tmp_path) == ["learner"]
