"""Two gloo processes on localhost give the same meta-update as one process on the same tasks."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import metalearn
from tests.helpers import SinusoidFamily, mlp

SETTINGS = dict(method="maml", inner_steps=2, meta_batch=4, meta_steps=2, meta_lr=1e-2, progress=False)
BATCHING = ("auto", "off")


def fit_all() -> dict:
    """The final init of each run (task batching on and off), as plain tensors."""
    out = {}
    for batching in BATCHING:
        learner = metalearn.fit(SinusoidFamily(), model=mlp(), task_batching=batching, **SETTINGS)
        out[batching] = {n: t.detach().clone() for n, t in learner.init.items()}
    return out


def worker(rank: int, world: int, port: int, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results[rank] = fit_all()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_give_the_single_process_meta_update():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, free_port(), results), nprocs=2, join=True)
        ranks = [dict(results[r]) for r in range(2)]
    single = fit_all()
    before = dict(mlp().named_parameters())  # a plain module's init is its own parameters
    for batching in BATCHING:
        for name, expected in single[batching].items():
            assert not torch.equal(expected, before[name])  # the meta-steps moved it
            for r in range(2):  # every rank holds the same, single-process result
                torch.testing.assert_close(ranks[r][batching][name], expected, rtol=0, atol=1e-6)
    for name in single["auto"]:  # and batching does not change it either
        torch.testing.assert_close(single["auto"][name], single["off"][name], rtol=0, atol=1e-6)
