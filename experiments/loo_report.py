"""The leave-one-data-set-out experiment's report: tables, heat-map and the commands that made them.

Split from ``leave_one_out.py`` (which runs the experiment); reads only the summary it writes. As a command, it
compares two runs' cells episode by episode (``across``)::

    python -m experiments.loo_report runs/a/huffpost_in/huffpost_in_5way_5shot runs/b/huffpost_in/huffpost_in_5way_5shot
"""
from __future__ import annotations

import os
import re

from experiments import common
from metalearn.eval import EvalResults
from metalearn.eval.results import paired_differences
from metalearn.files import atomic_write


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
CELL = re.compile(r"(\w+)( \(in-domain\))? (\d+|all)w(\d+)s")
"""A cell's name, as ``leave_one_out.cell_name`` writes it: 'hwu64 5w1s', 'clinc150 (in-domain) 15w1s', and
'hwu64 allw5s' for the full-label protocol (every class, 5 shots each)."""


def cell_order(cells: list[str]) -> list[str]:
    """Held-out targets in the order they first appear, the in-domain row last; within a target 5-shot before
    1-shot, fewer ways first (5w5s, 5w1s, 15w1s), whatever order resumed runs added them in."""
    first = {}
    for c in cells:
        target, in_domain, _, _ = CELL.fullmatch(c).groups()
        first.setdefault((bool(in_domain), target), len(first))

    def key(c: str):
        target, in_domain, n_way, k_shot = CELL.fullmatch(c).groups()
        full = n_way == "all"  # full-label cells after the N-way ones
        return bool(in_domain), first[bool(in_domain), target], full, -int(k_shot), 0 if full else int(n_way)
    return sorted(cells, key=key)


def tables(summary: dict, out: str) -> str:
    """Markdown, one line per cell: the paired differences from the frozen encoder with ProtoMAML − ProtoNet (the
    table of README), then every method's accuracy; draws the heat-map of the differences."""
    from metalearn.plots import difference_heatmap

    rows, last = summary["rows"], max(summary["args"]["steps"])
    cells = cell_order(list(dict.fromkeys(r["cell"] for r in rows)))
    label = lambda m, s: m if m in ("prototypes", "linear_probe") else f"{m} ({s} step{'' if s == 1 else 's'})"  # noqa: E731
    fmt = lambda r, key, digits: f"{100 * r[key]:+.{digits}f} ± {100 * r['ci95']:.{digits}f}"  # noqa: E731
    methods = [(m, last if s == "last" else s) for m, s in TABLE_METHODS]
    refs = list(dict.fromkeys(r["reference"] for r in rows if r.get("reference", "").startswith("protonet")))
    accuracy = {(r["cell"], r["method"], r["steps"]): r for r in rows if not r.get("paired")}
    paired = {(r["cell"], r["method"], r["steps"], r["reference"]): r for r in rows if r.get("paired")}
    frozen = ("prototypes", last)
    diff_head = ["cell", "frozen encoder (%)"] + [label(*m) for m in methods if m != frozen] + [
        f"ProtoMAML − {ref}" for ref in refs]
    acc_head = ["cell"] + [label(*m) for m in methods]
    diff, acc, heat = [diff_head, ["---"] * len(diff_head)], [acc_head, ["---"] * len(acc_head)], {}
    for c in cells:
        line = [c, f"{100 * accuracy[(c, *frozen)]['mean']:.1f}" if (c, *frozen) in accuracy else ""]
        for m in methods:
            if m == frozen:
                continue
            d = paired.get((c, *m, "prototypes"))
            line.append(fmt(d, "mean_diff", 1) if d else "")
            if d:
                heat[c, label(*m)] = (100 * d["mean_diff"], 100 * d["ci95"])
        versus = {r["reference"]: r for r in rows if r.get("cell") == c and r.get("reference") in refs}
        diff.append(line + [fmt(versus[ref], "mean_diff", 2) if ref in versus else "" for ref in refs])
        acc.append([c] + [f"{100 * accuracy[(c, *m)]['mean']:.1f} ± {100 * accuracy[(c, *m)]['ci95']:.1f}"
                          if (c, *m) in accuracy else "" for m in methods])
    columns = list(dict.fromkeys(m for _, m in heat))
    difference_heatmap(heat, cells, columns, os.path.join(out, "loo_heatmap.png"),
                       "leave one data set out: paired difference from the frozen encoder (95% CI)")
    markdown = lambda lines: "\n".join("| " + " | ".join(line) + " |" for line in lines)  # noqa: E731
    guard_lines = [f"- {c}: {g['kind']}, adapted on {100 * g['adapted']:.0f}% of episodes"
                   + (f" (validation accuracy meta {g['val']['meta']:.3f} vs frozen {g['val']['foundation']:.3f})"
                      if "val" in g else "")
                   + (f" (pooled held-out accuracy, meta − frozen: {100 * g['held_out_difference']:+.1f} ± "
                      f"{100 * g['ci95']:.1f} points" + (f"; verdict: {g['verdict']}" if "verdict" in g else "") + ")"
                      if "held_out_difference" in g else "")
                   for c, g in sorted(summary["guard"].items(), key=lambda item: cells.index(item[0]))]
    return "\n\n".join([
        "Paired difference from the frozen encoder (cosine prototypes), in points with its 95% interval; the "
        "frozen encoder's accuracy in the first column:", markdown(diff),
        "Accuracy (%), mean ± 95% interval:", markdown(acc), "The guard:\n" + "\n".join(guard_lines)])


def report(summary: dict, out: str) -> str:
    args = summary["args"]
    runs = summary.get("runs") or [{"argv": args["argv"], "minutes": summary.get("minutes")}]

    def quoted(run: dict) -> str:
        notes = ([f"{run['minutes']:.1f} min wall time"] if run.get("minutes") else []) + (
            [f"code {run['code']}"] if run.get("code") else [])
        return f"`{common.command('leave_one_out', run['argv'])}`" + (f" ({', '.join(notes)})" if notes else "")

    commands = "; then ".join(quoted(r) for r in runs)
    cells = {r["cell"] for r in summary["rows"]}
    shapes = ([f"N-way cells: {args['episodes']} paired test episodes, 5 queries per class"]
              if any(CELL.fullmatch(c).group(3) != "all" for c in cells) else []) + (
        [f"full-label cells (allw): {args.get('full_seeds', 5)} seeds, each one task of every class with the whole "
         "official test split as queries"] if any(CELL.fullmatch(c).group(3) == "all" for c in cells) else [])
    text = (f"# Leave one data set out, all-MiniLM-L6-v2 in NF4\n\n"
            f"{'; '.join(shapes) or 'no cells yet'}; adapting methods after the step "
            f"count shown, inner learning rates chosen on validation episodes by accuracy.\n"
            f"Command{'s' if len(runs) > 1 else ''}: {commands}.\n\n"
            + tables(summary, out) + "\n")
    atomic_write(os.path.join(out, "summary.md"), text)
    return text


def across(cell_a: str, cell_b: str, metric: str = "accuracy") -> list[dict]:
    """Each method of run A's cell minus the same method of run B's, paired over the episodes both scored.

    Two runs with the same seed and target draw the same test episodes (their task ids are checked, and a
    difference is refused), so a change of training can be compared episode by episode. ``cell_a``,
    ``cell_b``: cell folders the runs saved (e.g. ``runs/x/huffpost_in/huffpost_in_5way_5shot``)."""
    a, b = EvalResults.load(cell_a), EvalResults.load(cell_b)
    rows = []
    for method in sorted({r["method"] for r in a.records} & {r["method"] for r in b.records}):
        records = ([{**r, "method": "A"} for r in a.records if r["method"] == method]
                   + [{**r, "method": "B"} for r in b.records if r["method"] == method])
        rows += [{**p, "method": method} for p in paired_differences(records, "B") if p["metric"] == metric]
    if not rows:
        raise SystemExit(f"{cell_a} and {cell_b} share no method and step count: nothing to compare")
    return sorted(rows, key=lambda r: (r["method"], r["steps"]))


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="paired differences between two leave-one-out runs' cells "
                                     "(the same test episodes), method by method: A - B")
    parser.add_argument("cell_a", help="a cell folder of run A")
    parser.add_argument("cell_b", help="the same cell's folder in run B")
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args(argv)
    print(f"| method | steps | A − B ({args.metric}, points) | episodes |\n| --- | --- | --- | --- |")
    for r in across(args.cell_a, args.cell_b, args.metric):
        print(f"| {r['method']} | {r['steps']} | {100 * r['mean_diff']:+.2f} ± {100 * r['ci95']:.2f} | {r['n']} |")


if __name__ == "__main__":
    main()
