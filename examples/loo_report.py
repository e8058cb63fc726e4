"""The leave-one-data-set-out example's report: tables, heat-map and the commands that made them.

Split from ``leave_one_out.py`` (which runs the experiment); reads only the summary it writes.
"""
from __future__ import annotations

import os
import shlex

from metalearn.eval.report import atomic_write


def checkout() -> str:
    """This code's git commit ('+' when the checkout has uncommitted changes), 'unknown' outside git: which
    code computed the cells a run added (a resumed table may hold cells of several runs)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+" if dirty else "")


TABLE_METHODS = [("protomaml", "last"), ("protomaml+guard", "last"), ("protonet", 0), ("protonet", "last"),
                 ("finetune", "last"), ("random_init", "last"), ("linear_probe", "last"), ("prototypes", "last")]


def tables(summary: dict, out: str) -> str:
    """Accuracy, difference from the frozen encoder, and ProtoMAML − ProtoNet, as markdown; draws the heat-map."""
    from metalearn.plots import difference_heatmap

    rows, last = summary["rows"], max(summary["args"]["steps"])
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    label = lambda m, s: m if m in ("prototypes", "linear_probe") else f"{m} ({s} step{'' if s == 1 else 's'})"  # noqa: E731
    head = lambda first: ["| " + first + " | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]  # noqa: E731
    acc, diff, heat = head("accuracy (%)"), head("paired difference from the frozen encoder"), {}
    for method, steps in TABLE_METHODS:
        steps = last if steps == "last" else steps
        a = {r["cell"]: r for r in rows if not r.get("paired") and r["method"] == method and r["steps"] == steps}
        d = {r["cell"]: r for r in rows if r.get("paired") and r["method"] == method and r["steps"] == steps
             and r["reference"] == "prototypes"}
        acc.append(f"| {label(method, steps)} | " + " | ".join(
            f"{100 * a[c]['mean']:.1f} ± {100 * a[c]['ci95']:.1f}" if c in a else "" for c in cells) + " |")
        if method != "prototypes":
            diff.append(f"| {label(method, steps)} | " + " | ".join(
                f"{100 * d[c]['mean_diff']:+.1f} ± {100 * d[c]['ci95']:.1f}" if c in d else "" for c in cells) + " |")
            heat.update({(label(method, steps), c): (100 * d[c]["mean_diff"], 100 * d[c]["ci95"]) for c in d})
    versus = head("ProtoMAML − ProtoNet (paired)")
    for ref in list(dict.fromkeys(r["reference"] for r in rows if r.get("reference", "").startswith("protonet"))):
        d = {r["cell"]: r for r in rows if r.get("reference") == ref}
        versus.append(f"| − {ref} | " + " | ".join(
            f"{100 * d[c]['mean_diff']:+.1f} ± {100 * d[c]['ci95']:.1f}" if c in d else "" for c in cells) + " |")
    methods = list(dict.fromkeys(m for m, _ in heat))
    difference_heatmap(heat, methods, cells, os.path.join(out, "loo_heatmap.png"),
                       "leave one data set out: paired difference from the frozen encoder (95% CI)")
    guard_lines = [f"- {c}: {g['kind']}, adapted on {100 * g['adapted']:.0f}% of episodes"
                   + (f" (validation accuracy meta {g['val']['meta']:.3f} vs frozen {g['val']['foundation']:.3f})"
                      if "val" in g else "")
                   + (f" (pooled held-out accuracy, meta − frozen: {100 * g['held_out_difference']:+.1f} ± "
                      f"{100 * g['ci95']:.1f} points)" if "held_out_difference" in g else "")
                   for c, g in summary["guard"].items()]
    return "\n\n".join(["\n".join(acc), "\n".join(diff), "\n".join(versus), "The guard:\n" + "\n".join(guard_lines)])


def report(summary: dict, out: str) -> str:
    args = summary["args"]
    runs = summary.get("runs") or [{"argv": args["argv"], "minutes": summary.get("minutes")}]

    def command(run: dict) -> str:
        notes = ([f"{run['minutes']:.1f} min wall time"] if run.get("minutes") else []) + (
            [f"code {run['code']}"] if run.get("code") else [])
        return f"`python examples/leave_one_out.py {shlex.join(run['argv'])}`" + (f" ({', '.join(notes)})" if notes else "")

    commands = "; then ".join(command(r) for r in runs)
    text = (f"# Leave one data set out, all-MiniLM-L6-v2 in NF4\n\n"
            f"Accuracy (%) on the query sets (5 per class), mean ± 95% CI over {args['episodes']} paired test episodes "
            f"per cell; adapting methods after the step count shown, inner learning rates chosen on validation "
            f"episodes by accuracy.\nCommand{'s' if len(runs) > 1 else ''}: {commands}.\n\n"
            + tables(summary, out) + "\n")
    atomic_write(os.path.join(out, "summary.md"), text)
    return text
