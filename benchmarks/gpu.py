"""Tasks per second and peak memory of a meta-step on a 0.5B-shaped NF4 Llama on CUDA: loop vs batched.

    python -m benchmarks.gpu                 # needs a CUDA GPU; ~5-10 minutes
    python -m benchmarks.gpu --quick         # a tiny shape on CPU (what the tests run)

Model: a Llama built from a config with the shape of a 0.5B model (hidden 896, 24 layers, 14 heads
of 64 and 2 key/value heads, MLP 4864, vocab 32k; random weights, speed does not depend on them),
loaded in NF4 with double quantization and bfloat16 compute (QLoRA), eager attention (second order
needs its double backward). LoRA r=8 on q_proj/v_proj, 3 inner SGD steps, 4 support and 4 query
sequences of 256 random tokens per task. For meta-batch 4 and 8, first and second order, the per-task
loop (``task_batching="off"``) and the batched step (``"on"``) are timed round-robin (wall time after
``torch.cuda.synchronize``, median of ``--repeats``), then run once more for the peak memory
(``torch.cuda.max_memory_allocated``, minus what the model holds before the step). A variant that runs
out of memory is reported as such. "max rel diff" compares the batched meta-gradient with the loop's.
On CPU (``--quick``) the memory column is the autograd graph's peak (``benchmarks.common.GraphMemory``).
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

SHAPES = {
    "0.5B": dict(vocab_size=32000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2),
    "quick": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2),
}


def build(shape: str, device: str, seq: int):
    """The NF4 learner on a Llama of ``shape`` (random weights), LoRA r=8 on q/v, 3 inner steps."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from metalearn.build import build_learner
    from metalearn.training import make_config

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=max(seq, 256), pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.bfloat16)
    compute = "bfloat16" if device == "cuda" else "float32"
    config = make_config(method="maml", quantization="nf4", compute_dtype=compute, inner_steps=3, inner_lr=1e-2,
                         lora_r=8, target_modules=["q_proj", "v_proj"])
    return build_learner(config, model)


def episodes_for(learner, tasks: int, rows: int, seq: int):
    from benchmarks.common import random_tokens
    from metalearn.learner import Episode

    gen = torch.Generator().manual_seed(0)
    vocab, device = learner.model.module.config.vocab_size, learner.model.device
    move = lambda batch: {k: v.to(device) for k, v in batch.items()}  # noqa: E731
    return [Episode(move(random_tokens(rows, seq, vocab, gen)), move(random_tokens(rows, seq, vocab, gen)),
                    "generation", 0, f"random-{i}") for i in range(tasks)]


def step_fn(learner, episodes, order: str, batching: str, sync):
    from metalearn import algorithms

    def fn():
        learner.config.inner.order, learner.config.inner.task_batching = order, batching
        out = algorithms.meta_gradient(learner, episodes, "maml")
        sync()
        return out
    return fn


def peak_mb(fn, learner, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from benchmarks.common import GraphMemory

    with GraphMemory(exclude=list(learner.model.parameters()) + list(learner.model.buffers())) as mem:
        fn()
    return mem.peak / 2**20


def max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[n].float() - b[n].float()).norm() / b[n].float().norm().clamp_min(1e-30)) for n in b)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shape on CPU, short sequences, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--meta-batches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rows", type=int, default=4, help="support (and query) sequences per task")
    args = parser.parse_args(argv)
    if args.quick:
        device, shape, args.seq, args.repeats, args.meta_batches = "cpu", "quick", 32, 1, [2, 4]
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA GPU (bitsandbytes NF4 on CUDA); run with --quick for the "
                         "tiny CPU version")
    else:
        device, shape = "cuda", "0.5B"
    from benchmarks.common import median_times

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    learner = build(shape, device, args.seq)
    all_episodes = episodes_for(learner, max(args.meta_batches), args.rows, args.seq)
    rows = []
    for tasks in args.meta_batches:
        episodes = all_episodes[:tasks]
        fns = {(order, batching): step_fn(learner, episodes, order, batching, sync)
               for order in ("second", "first") for batching in ("off", "on")}
        ok = {}
        for key, fn in fns.items():  # one run each: warm-up, the meta-gradients to compare, out-of-memory check
            try:
                ok[key] = fn()[0]
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                ok[key] = None
        timed = median_times({k: f for k, f in fns.items() if ok[k] is not None}, args.repeats, warmup=0,
                             clock=time.perf_counter)
        for (order, batching), fn in fns.items():
            row = {"meta-batch": tasks, "order": order, "engine": "batched" if batching == "on" else "loop"}
            if ok[order, batching] is None:
                row.update(seconds=float("nan"), tasks_per_s=float("nan"), peak_mb=float("nan"), oom=True)
            else:
                seconds = timed[order, batching]
                row.update(seconds=seconds, tasks_per_s=tasks / seconds, peak_mb=peak_mb(fn, learner, cuda), oom=False)
                if batching == "on" and ok[order, "off"] is not None:
                    row["max_rel_diff"] = max_rel_diff(ok[order, "on"], ok[order, "off"])
            rows.append(row)
    where = torch.cuda.get_device_name() if cuda else "CPU, 1 thread"
    memory = "peak MB above the model (CUDA)" if cuda else "graph MB"
    print(f"\n{shape}-shaped Llama, NF4, {args.rows}+{args.rows} sequences of {args.seq} tokens per task, "
          f"3 inner steps, LoRA r=8 q/v, {where}, median of {args.repeats}\n")
    print(f"| meta-batch | order | engine | s / meta-step | tasks/s | {memory} | max rel diff vs loop |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r["oom"]:
            print(f"| {r['meta-batch']} | {r['order']} | {r['engine']} | out of memory | | | |")
            continue
        diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else ""
        print(f"| {r['meta-batch']} | {r['order']} | {r['engine']} | {r['seconds']:.3f} | {r['tasks_per_s']:.2f} | "
              f"{r['peak_mb']:.0f} | {diff} |")
    return rows


if __name__ == "__main__":
    logging.getLogger("metalearn").setLevel(logging.WARNING)  # here, not in main(): a caller's logging stays as it was
    main()
