"""Seconds per meta-step, graph memory and the ratio to plain LoRA steps: per-task loop vs batched.

    python -m benchmarks.meta_step                  # both workloads, ~3 minutes on 2 CPU cores
    python -m benchmarks.meta_step --workload llama --repeats 7

Ratio (per task): meta-step seconds / (meta_batch x (inner steps + 1) x one plain LoRA step on one
task's batch), the plain step being forward + backward + AdamW on the same model (peft + bitsandbytes'
own kernels for NF4). "plain, whole meta-batch" does those (steps + 1) plain steps on all tasks' rows
at once: the floor a first-order meta-step can reach. "hand-written loop" is the per-task MAML loop
one writes by hand (functional_call + autograd.grad), measured in the same run as a reference.
Every variant is timed round-robin (so load on the machine hits all alike) and the median is kept.
Graph MB: the peak bytes autograd holds for backward during the meta-step (frozen weights excluded).
"""
from __future__ import annotations

import argparse
import logging

import torch

from benchmarks.common import (GraphMemory, handwritten_maml, llama_workload, median_times, meta_step,
                               plain_lora_step, sinusoid_workload)


def variants(learner, episodes, handwritten: bool):
    """name -> (callable, settings); the callable sets the learner's order / batching before running."""
    def run(order, batching):
        step = meta_step(learner, episodes)

        def fn():
            learner.config.inner.order, learner.config.inner.task_batching = order, batching
            step()
        return fn

    out = {}
    for order in ("second", "first"):
        out[f"{order} order, metalearn loop"] = run(order, "off")
        out[f"{order} order, metalearn batched"] = run(order, "on")
        if handwritten:
            hand = handwritten_maml(learner, episodes, order)
            out[f"{order} order, hand-written loop"] = hand
    return out


def graph_mb(learner, fn) -> float:
    with GraphMemory(exclude=list(learner.model.parameters()) + list(learner.model.buffers())) as mem:
        fn()
    return mem.peak / 2**20


def bench(name: str, learner, episodes, repeats: int, handwritten: bool) -> list[dict]:
    steps, tasks = learner.config.inner.steps, len(episodes)
    fns = variants(learner, episodes, handwritten)
    fns["plain LoRA step, one task"] = plain_lora_step(learner, [episodes[0].support])
    fns["plain LoRA step, whole meta-batch"] = plain_lora_step(learner, [e.support for e in episodes])
    seconds = median_times(fns, repeats)
    plain = seconds["plain LoRA step, one task"]
    unit = tasks * (steps + 1) * plain
    rows = []
    for label, s in seconds.items():
        if label.startswith("plain LoRA step, one"):
            continue
        if label.startswith("plain LoRA step, whole"):
            label, s = f"plain, whole meta-batch ({steps + 1} steps)", (steps + 1) * s
        rows.append({"workload": name, "variant": label, "seconds": s, "ratio": s / unit,
                     "graph_mb": graph_mb(learner, fns[label]) if label in fns else float("nan")})
    rows.append({"workload": name, "variant": "plain LoRA step, one task", "seconds": plain, "ratio": float("nan"),
                 "graph_mb": float("nan")})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["llama", "sinusoid", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on shared CPUs)")
    parser.add_argument("--meta-batch", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("metalearn").setLevel(logging.WARNING)
    rows = []
    if args.workload in ("llama", "all"):
        for quant in (None, "nf4"):
            learner, episodes = llama_workload(quant, meta_batch=args.meta_batch or 4)
            rows += bench(f"tiny Llama {'NF4' if quant else 'fp32'}", learner, episodes, args.repeats, True)
    if args.workload in ("sinusoid", "all"):
        learner, episodes = sinusoid_workload(meta_batch=args.meta_batch or 25)
        rows += bench("sinusoid MLP", learner, episodes, args.repeats, True)
    print("\n| workload | variant | s / meta-step | ratio to plain LoRA steps | graph MB |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        ratio = "" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}"
        mb = "" if r["graph_mb"] != r["graph_mb"] else f"{r['graph_mb']:.3g}"
        print(f"| {r['workload']} | {r['variant']} | {r['seconds']:.4f} | {ratio} | {mb} |")


if __name__ == "__main__":
    main()
