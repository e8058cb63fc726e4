"""Checkpoints never run code: a crafted pickle is refused and its payload does not execute."""
import math
import pickle

import numpy as np
import pytest
import torch

import metalearn
from metalearn import checkpoint
from metalearn.config import OuterConfig
from metalearn.meta_optimizer import make_optimizer
from tests.helpers import SinusoidFamily, mlp


class Payload:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


def malicious_files(tmp_path):
    marker = tmp_path / "PWNED"
    raw = pickle.dumps({"step": 1, "meta": Payload(marker)})
    zipped = tmp_path / "zipped.pt"
    torch.save({"step": 1, "meta": Payload(marker)}, zipped)
    return marker, {"raw pickle": raw, "torch.save zip": zipped.read_bytes()}


@pytest.mark.parametrize("name", ["checkpoint.pt", "checkpoint.safetensors", "anything.bin"])
def test_crafted_pickle_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, name):
    marker, blobs = malicious_files(tmp_path)
    pickle.loads(pickle.dumps(Payload(tmp_path / "SELF-CHECK")))  # the payload works when unpickled
    assert (tmp_path / "SELF-CHECK").read_text() == "payload ran"
    for kind, blob in blobs.items():
        run = tmp_path / kind.replace(" ", "_")
        run.mkdir()
        (run / name).write_bytes(blob)
        for resume in (str(run / name), str(run)):
            if resume == str(run) and name == "anything.bin":
                continue  # a folder resumes from the checkpoint file names only
            with pytest.raises(ValueError, match="pickle.*does not unpickle|not a metalearn checkpoint"):
                metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=1, resume=resume, progress=False)
            assert not marker.exists(), f"the {kind} payload ran while resuming from {resume}"


def test_checkpoint_round_trip_keeps_every_value_and_type(tmp_path):
    meta = {"0.weight": torch.randn(3, 2, requires_grad=True), "lr:0.weight": torch.rand(2, dtype=torch.float64)}
    meta["lr:0.weight"].requires_grad_(True)
    optimizer, scheduler = make_optimizer(meta, OuterConfig(lr=1e-2, warmup_steps=2, schedule="cosine"))
    for _ in range(3):
        for t in meta.values():
            t.grad = torch.randn_like(t)
        optimizer.step()
        scheduler.step()
    rng = np.random.default_rng(7)
    rng.random(5)
    history = [{"step": 1, "query_loss": float("nan"), "skipped": "x"}, {"step": 2, "query_loss": 0.25}]
    path = str(tmp_path / checkpoint.FILE)
    checkpoint.save(path, step=3, meta=meta, optimizer=optimizer, scheduler=scheduler, rng=rng, history=history,
                    config={"outer": {"lr": 0.01, "betas": [0.9, 0.99]}})
    with open(path, "rb") as f:
        assert f.read(2) not in (b"PK", b"\x80\x04")  # not a pickle, not a torch.save zip
    state = checkpoint.load(str(tmp_path))  # the run folder resolves to the file
    assert state["step"] == 3 and state["config"] == {"outer": {"lr": 0.01, "betas": [0.9, 0.99]}}
    assert state["history"][1] == history[1] and math.isnan(state["history"][0]["query_loss"])
    for name, t in meta.items():
        assert torch.equal(state["meta"][name], t.detach()) and state["meta"][name].dtype == t.dtype
    saved, restored = optimizer.state_dict(), state["optimizer"]
    assert restored["param_groups"] == saved["param_groups"]  # includes the (beta1, beta2) tuple
    assert set(restored["state"]) == set(saved["state"]) == {0, 1}  # integer keys, as torch needs them
    for k in saved["state"]:
        for field, value in saved["state"][k].items():
            assert torch.equal(restored["state"][k][field], value), (k, field)
    assert state["scheduler"] == scheduler.state_dict()
    assert state["rng"] == rng.bit_generator.state
    assert torch.equal(state["torch_rng"], torch.get_rng_state())

    # restore into a fresh run: the next optimizer step and random draws are identical
    fresh = {n: torch.zeros_like(t).requires_grad_(True) for n, t in meta.items()}
    opt2, sched2 = make_optimizer(fresh, OuterConfig(lr=1e-2, warmup_steps=2, schedule="cosine"))
    rng2 = np.random.default_rng(0)
    checkpoint.restore(state, meta=fresh, optimizer=opt2, scheduler=sched2, rng=rng2)
    grads = {n: torch.randn_like(t) for n, t in meta.items()}
    for params, opt, sched in ((meta, optimizer, scheduler), (fresh, opt2, sched2)):
        for n, t in params.items():
            t.grad = grads[n].clone()
        opt.step()
        sched.step()
    assert all(torch.equal(meta[n], fresh[n]) for n in meta)
    assert rng.random() == rng2.random()


def test_an_old_pickled_run_folder_names_the_problem(tmp_path):
    torch.save({"step": 1}, tmp_path / "checkpoint.pt")  # harmless, but still a pickle
    with pytest.raises(ValueError, match="does not unpickle checkpoints, because unpickling can run arbitrary code"):
        checkpoint.load(str(tmp_path))


@pytest.mark.parametrize("first_byte", [0x80, ord("P")])
def test_a_checkpoint_whose_header_length_looks_like_a_pickle_still_loads(tmp_path, first_byte):
    """A safetensors file starts with its header length: its first byte can be 0x80 (a pickle's opcode) or 'P'."""
    meta = {"w": torch.zeros(2, requires_grad=True)}
    optimizer, scheduler = make_optimizer(meta, OuterConfig(lr=1e-2))
    path = str(tmp_path / checkpoint.FILE)
    for pad in range(256):  # pad the JSON metadata until the header length's low byte is the one asked for
        checkpoint.save(path, step=1, meta=meta, optimizer=optimizer, scheduler=scheduler,
                        rng=np.random.default_rng(0), history=[], config={"pad": "x" * pad})
        with open(path, "rb") as f:
            if f.read(1)[0] == first_byte:
                break
    else:
        pytest.fail(f"no padding gave a header length starting with {first_byte:#x}")
    assert checkpoint.load(path)["config"]["pad"] == "x" * pad
