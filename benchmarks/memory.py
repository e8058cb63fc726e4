"""Memory of a meta-step vs inner steps and vs meta-batch size (tiny Llama, LoRA r=8 on q/v, 8 x 32 tokens).

    python -m benchmarks.memory

Graph MB: the peak bytes autograd holds for backward during the meta-step, each storage counted once,
the frozen base's weights excluded (``benchmarks.common.GraphMemory``). RSS MB: growth of the peak
resident set over one meta-step, in a fresh subprocess per measurement (allocator effects included).
Expected: second order grows with inner steps, first order and Reptile stay flat (truncation and
checkpointing bound the second-order growth); the per-task loop's peak does not grow with the
meta-batch (one task's graph at a time), the batched step's grows about linearly.
With checkpointing, graph MB shows only what the forward keeps (the recomputation in backward saves
under torch.utils.checkpoint's own hooks); read its RSS column.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys

import torch

from benchmarks.common import GraphMemory, llama_workload, meta_step

SETTINGS = {
    "second order": dict(method="maml"),
    "second order, checkpointed": dict(method="maml", checkpoint=True),
    "truncated (last step)": dict(method="maml", order="truncated", truncate=1),
    "first order": dict(method="fomaml"),
    "reptile": dict(method="reptile"),
}


def measure(setting: str, steps: int, meta_batch: int, batching: str, quantization=None) -> dict:
    overrides = dict(SETTINGS[setting])
    method = overrides.pop("method")
    learner, episodes = llama_workload(quantization, meta_batch=meta_batch, steps=steps, method=method,
                                       task_batching=batching, **overrides)
    step = meta_step(learner, episodes, method)
    frozen = list(learner.model.parameters()) + list(learner.model.buffers())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with GraphMemory(exclude=frozen) as mem:
        step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"graph_mb": mem.peak / 2**20, "rss_mb": (after - before) / 1024}


def in_subprocess(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--one", json.dumps(args)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quantization", default=None, choices=[None, "nf4"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("metalearn").setLevel(logging.WARNING)
    if args.one:
        print(json.dumps(measure(*json.loads(args.one))))
        return
    q = args.quantization
    print(f"\nMemory vs inner steps (one task, per-task loop, {'NF4' if q else 'fp32'}): graph MB / RSS MB")
    steps_list = (1, 2, 4, 8)
    print("| setting | " + " | ".join(f"{k} steps" for k in steps_list) + " |")
    print("|---|" + "---:|" * len(steps_list))
    for setting in SETTINGS:
        cells = [in_subprocess(setting, k, 1, "off", q) for k in steps_list]
        print(f"| {setting} | " + " | ".join(f"{c['graph_mb']:.1f} / {c['rss_mb']:.0f}" for c in cells) + " |")
    print(f"\nMemory vs meta-batch (3 inner steps, {'NF4' if q else 'fp32'}): graph MB / RSS MB")
    batches = (1, 2, 4, 8)
    print("| path | " + " | ".join(f"{b} tasks" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    for setting in ("second order", "first order"):
        for batching in ("off", "on"):
            cells = [in_subprocess(setting, 3, b, batching, q) for b in batches]
            label = f"{setting}, {'per-task loop' if batching == 'off' else 'batched'}"
            print(f"| {label} | " + " | ".join(f"{c['graph_mb']:.1f} / {c['rss_mb']:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
