"""Episodes evaluated in forked worker processes give the numbers of one process, and bad counts fail early."""
import numpy as np
import pytest
import torch

from metalearn.build import build_learner
from metalearn.eval import evaluate, guard
from metalearn.eval.workers import forked_map
from metalearn.foundation import byte_tokenizer
from metalearn.training import make_config
from tests.helpers import CopyFamily, IntentFamily, SinusoidFamily, small_bert, small_llama
from tests.test_eval_reuse import by_key, regression_learners


@pytest.fixture(autouse=True)
def one_thread():
    """Workers run one torch thread each; the reference run must too (thread counts change rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encoder():
    return build_learner(make_config(method="fomaml", inner_steps=1, inner_lr=0.1, lora_r=4,
                                     target_modules=["query", "value"], head="prototype", prompt_tokens=2),
                         small_bert(), tokenizer=byte_tokenizer())


@pytest.mark.parametrize("family, make, kwargs", [
    (SinusoidFamily(k=5, q=5), regression_learners, dict(baselines=["random_init"])),
    (IntentFamily(), lambda: {"protomaml": encoder()}, dict(baselines=["prototypes", "linear_probe", "random_init"])),
    (CopyFamily(), lambda: {"maml": build_learner(make_config(method="maml", inner_steps=1, inner_lr=0.1, lora_r=2,
                                                              target_modules=["q_proj"]), small_llama())},
     dict(baselines=["zero_shot"], max_new_tokens=3)),
], ids=["sinusoid", "encoder", "causal-lm"])
def test_workers_give_the_single_process_numbers(family, make, kwargs):
    common = dict(steps=[0, 1, 3], episodes=5, lr_grid=(0.5, 1.0), val_episodes=3, progress=False, **kwargs)
    one = evaluate(make(), family, **common)
    many = evaluate(make(), family, workers=2, **common)
    assert by_key(many) == by_key(one)  # every metric of every method, step count and episode
    assert many.tuning == one.tuning  # the learning-rate search ran in the workers too


def test_guard_decisions_in_workers_equal_one_process():
    learner = encoder()
    tasks = [IntentFamily().sample("test", np.random.default_rng(i)) for i in range(4)]
    kwargs = dict(steps=1, folds=2)
    many, one = (guard.decide_tasks(learner, tasks, workers=w, **kwargs) for w in (2, 1))
    assert all(c["seconds"] > 0 for c in many + one)  # each decision's own wall time
    assert [{**c, "seconds": 0} for c in many] == [{**c, "seconds": 0} for c in one]


def test_forked_map_keeps_order_and_raises_a_workers_error_here():
    offset = 10  # a closure: workers inherit it through the fork, nothing is pickled
    assert list(forked_map(lambda i: i + offset, list(range(7)), 3)) == list(range(10, 17))

    def fails(i):
        if i == 2:
            raise KeyError("episode 2 broke")
        return i

    with pytest.raises(KeyError, match="episode 2 broke"):
        list(forked_map(fails, [0, 1, 2, 3], 2))


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused_before_any_work(workers):
    with pytest.raises(ValueError, match="workers="):
        evaluate(regression_learners(), SinusoidFamily(), episodes=2, progress=False, workers=workers)


def test_workers_are_refused_once_cuda_is_initialized(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match="cannot use CUDA"):
        evaluate(regression_learners(), SinusoidFamily(), episodes=2, progress=False, workers=2)
