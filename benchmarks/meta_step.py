"""R = meta-step time / plain LoRA steps on the whole meta-batch: loop vs batched vs a hand-written loop.

    python -m benchmarks.meta_step                  # both workloads, ~5 minutes on 2 CPU cores
    python -m benchmarks.meta_step --workload llama --repeats 7 --profile

R: meta-step seconds / ((inner steps + 1) x one plain LoRA step on all the meta-batch's support rows
at once), the plain step being forward + backward + AdamW on the same model (peft + bitsandbytes' own
kernels for NF4): the same arithmetic without meta-learning, so R = 1 is the floor for first order.
"hand-written loop" is the per-task MAML loop one writes by hand (functional_call + autograd.grad).
"batched, chunks of C" runs the meta-batch as batched chunks of C tasks (``inner.task_chunk``): memory
bounded by C tasks' graph. Every variant is timed round-robin in CPU seconds of this process (one
thread: other jobs on a shared machine do not bias one variant against another); the median is kept.
Graph MB: the peak bytes autograd holds for backward during the meta-step (frozen weights excluded).

``--profile`` splits each metalearn variant's CPU time into the forward passes (and everything that
is not a gradient call), the inner gradients (``create_graph`` for second order) and the outer
gradient (for second order: the backward through every inner step), in units of one plain step (U).
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict

import torch

from benchmarks.common import (
    GraphMemory,
    handwritten_maml,
    llama_workload,
    median_times,
    meta_step,
    plain_lora_step,
    sinusoid_workload,
)


def variants(learner, episodes, handwritten: bool, chunk: int):
    """name -> callable; each callable sets the learner's order / batching / chunk before running."""
    def run(order, batching, task_chunk=None):
        step = meta_step(learner, episodes)

        def fn():
            inner = learner.config.inner
            inner.order, inner.task_batching, inner.task_chunk = order, batching, task_chunk
            step()
        return fn

    out = {}
    for order in ("second", "first"):
        if handwritten:
            out[f"{order} order, hand-written loop"] = handwritten_maml(learner, episodes, order)
        out[f"{order} order, metalearn loop"] = run(order, "off")
        out[f"{order} order, metalearn batched"] = run(order, "on")
        if chunk and chunk < len(episodes):
            out[f"{order} order, metalearn batched, chunks of {chunk}"] = run(order, "on", chunk)
    return out


def graph_mb(learner, fn) -> float:
    with GraphMemory(exclude=list(learner.model.parameters()) + list(learner.model.buffers())) as mem:
        fn()
    return mem.peak / 2**20


def phases(fn, repeats: int) -> dict[str, float]:
    """Median CPU seconds of ``fn`` split into gradient calls with and without ``create_graph``, and the rest."""
    original = torch.autograd.grad
    spent: dict[str, float] = defaultdict(float)

    def timed(*args, **kwargs):
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent["inner grads" if kwargs.get("create_graph") else "grads"] += time.process_time() - start

    runs = []
    torch.autograd.grad = timed
    try:
        for _ in range(repeats):
            spent.clear()
            start = time.process_time()
            fn()
            total = time.process_time() - start
            runs.append({"total": total, "inner grads (create_graph)": spent["inner grads"],
                         "other grads": spent["grads"], "forward and rest": total - sum(spent.values())})
    finally:
        torch.autograd.grad = original
    runs.sort(key=lambda r: r["total"])
    return runs[len(runs) // 2]


def bench(name: str, learner, episodes, repeats: int, handwritten: bool, chunk: int, profile: bool) -> list[dict]:
    steps = learner.config.inner.steps
    fns = variants(learner, episodes, handwritten, chunk)
    fns["plain LoRA step, whole meta-batch"] = plain_lora_step(learner, [e.support for e in episodes])
    seconds = median_times(fns, repeats)
    unit = seconds.pop("plain LoRA step, whole meta-batch")
    rows = [{"workload": name, "variant": f"plain LoRA step on the whole meta-batch (U), x {steps + 1}",
             "seconds": (steps + 1) * unit, "R": 1.0, "graph_mb": float("nan")}]
    for label, s in seconds.items():
        row = {"workload": name, "variant": label, "seconds": s, "R": s / ((steps + 1) * unit),
               "graph_mb": graph_mb(learner, fns[label])}
        if profile and "metalearn" in label:
            row["phases"] = {k: v / unit for k, v in phases(fns[label], repeats).items()}
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["llama", "sinusoid", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on shared CPUs)")
    parser.add_argument("--meta-batch", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=2, help="C of the chunked variant (0: none)")
    parser.add_argument("--profile", action="store_true", help="split each metalearn variant's time into phases")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("metalearn").setLevel(logging.WARNING)
    rows = []
    if args.workload in ("llama", "all"):
        for quant in (None, "nf4"):
            learner, episodes = llama_workload(quant, meta_batch=args.meta_batch or 4)
            rows += bench(f"tiny Llama {'NF4' if quant else 'fp32'}", learner, episodes, args.repeats, True,
                          args.chunk, args.profile)
    if args.workload in ("sinusoid", "all"):
        learner, episodes = sinusoid_workload(meta_batch=args.meta_batch or 25)
        rows += bench("sinusoid MLP", learner, episodes, args.repeats, True, args.chunk, args.profile)
    print("\n| workload | variant | CPU s / meta-step | R | graph MB |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        mb = "" if r["graph_mb"] != r["graph_mb"] else f"{r['graph_mb']:.3g}"
        print(f"| {r['workload']} | {r['variant']} | {r['seconds']:.4f} | {r['R']:.2f} | {mb} |")
    profiled = [r for r in rows if "phases" in r]
    if profiled:
        print("\nWhere the time goes, in plain whole-meta-batch steps U (a plain step is one forward and one "
              "backward):\n")
        print("| workload | variant | forward and rest | inner grads (create_graph) | other grads | total |")
        print("|---|---|---:|---:|---:|---:|")
        for r in profiled:
            p = r["phases"]
            print(f"| {r['workload']} | {r['variant']} | {p['forward and rest']:.2f} | "
                  f"{p['inner grads (create_graph)']:.2f} | {p['other grads']:.2f} | {p['total']:.2f} |")


if __name__ == "__main__":
    main()
