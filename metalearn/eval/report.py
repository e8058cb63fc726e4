"""Results as files people read: a markdown table, JSON, CSV and matplotlib PNGs (Agg backend).

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash never leaves a half-written result where a complete one was.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Optional, Protocol, Sequence, Union

from ..files import atomic_write
from . import metrics

__all__ = ["Results", "markdown", "pick_metric", "plot_shots", "plot_steps", "plot_training", "write_all"]

KEYS = ("method", "shots", "steps", "episode", "task_id")


class Results(Protocol):
    """What a report reads of ``metalearn.eval.EvalResults`` (which imports this module, not the reverse)."""

    records: list[dict]
    summary: list[dict]
    paired: list[dict]
    tuning: list[dict]
    settings: dict
    histories: dict[str, list[dict]]
    timing: list[dict]

    @property
    def methods(self) -> list[str]: ...


# ---------------------------------------------------------------- markdown


def _fmt(mean: float, ci: Optional[float] = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    digits = 1 if abs(mean) >= 10 else 3
    text = f"{mean:.{digits}f}"
    if ci is not None and not (isinstance(ci, float) and math.isnan(ci)):
        text += f" ± {ci:.{digits}f}"
    return text


def _steps_header(steps: list[int]) -> str:
    return "| method | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |"


def markdown(results: Results, metric: Union[str, Sequence[str], None] = None, seconds: bool = True) -> str:
    """Per shot count: each of ``metric`` (default: the primary one) by method x steps with paired differences,
    then all metrics after the last step count, then (``seconds``) wall seconds per episode."""
    st = results.settings
    chosen = [pick_metric(results, metric)] if metric is None or isinstance(metric, str) else list(metric)
    steps = st["steps"]
    summary = {(r["method"], r["shots"], r["steps"], r["metric"]): r for r in results.summary}
    lines = [f"## Evaluation: {st['kind']} ({st['episodes']} test episodes per shot count, seed {st['seed']})", "",
             f"Mean ± 95% CI ({st['interval'].split(': ', 1)[1]}); every method ran on the same episodes. "
             + (f"Inner learning rates chosen per method and step count on {st['val_episodes']} val episodes "
                f"(grid x{st['lr_grid']})." if st["lr_grid"] else "No learning-rate search.")
             + " Best mean per column in bold; non-adapting baselines repeat across step counts.", ""]
    for shots in st["shots"]:
        k = "" if shots is None else f", K = {shots}"
        for name in chosen:
            lines += _metric_tables(results, summary, name, shots, k)
        last = steps[-1]
        shown = [name for name in metrics.HIGHER_IS_BETTER
                 if any((m, shots, last, name) in summary for m in st["methods"])]
        if len(shown) > 1:
            lines += [f"All metrics after {last} step{'s' if last != 1 else ''}{k}:", "",
                      "| method | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
            for m in st["methods"]:
                cells = [_fmt(summary[(m, shots, last, n)]["mean"], summary[(m, shots, last, n)]["ci95"])
                         if (m, shots, last, n) in summary else "—" for n in shown]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += _seconds_table(results, shots, k) if seconds else []
    return "\n".join(lines)


def _seconds_table(results: Results, shots: Any, k: str) -> list[str]:
    """Wall seconds per episode (adaptation + scoring), mean ± 95% CI, by method and step count."""
    rows: dict[tuple[str, int], list[float]] = {}
    for t in results.timing:
        if t["shots"] == shots:
            rows.setdefault((t["method"], t["steps"]), []).append(t["seconds"])
    if not rows:
        return []
    steps = results.settings["steps"]
    lines = [f"Seconds per episode (adapt + score){k}:", "", _steps_header(steps), "|---" * (len(steps) + 1) + "|"]
    for m in results.methods:
        cells = [_fmt(*metrics.mean_ci(rows[m, s])) if (m, s) in rows else "—" for s in steps]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + [""]


def _metric_tables(results: Results, summary: dict, metric: str, shots: Any, k: str) -> list[str]:
    st = results.settings
    steps = st["steps"]
    higher = metrics.HIGHER_IS_BETTER.get(metric, True)
    lines = [f"### {metric} ({'higher' if higher else 'lower'} is better){k}", "", _steps_header(steps),
             "|---" * (len(steps) + 1) + "|"]
    best = {}
    for s in steps:
        vals = [summary[(m, shots, s, metric)]["mean"] for m in st["methods"] if (m, shots, s, metric) in summary]
        vals = [v for v in vals if not math.isnan(v)]
        best[s] = (max if higher else min)(vals) if len(set(vals)) > 1 else None  # no bold for a tie of all
    for m in st["methods"]:
        cells = []
        for s in steps:
            row = summary.get((m, shots, s, metric))
            cell = _fmt(row["mean"], row["ci95"]) if row else "—"
            cells.append(f"**{cell}**" if row and row["mean"] == best[s] else cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    paired = {(r["method"], r["steps"]): r for r in results.paired if r["shots"] == shots and r["metric"] == metric}
    if paired:
        ref = st["reference"]
        lines += [f"Paired difference {metric}(method) − {metric}({ref}) on the same episodes "
                  f"({'positive' if higher else 'negative'} = better than {ref}):", "", _steps_header(steps),
                  "|---" * (len(steps) + 1) + "|"]
        for m in st["methods"]:
            if m == ref:
                continue
            cells = [_fmt(paired[(m, s)]["mean_diff"], paired[(m, s)]["ci95"]) if (m, s) in paired else "—"
                     for s in steps]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- files


def pick_metric(results: Results, metric: Optional[str] = None) -> str:
    """``metric``, else the kind's primary metric if it was measured, else the first metric measured."""
    if metric:
        return metric
    measured = {r["metric"] for r in results.summary}
    primary = results.settings["primary_metric"]
    return primary if primary in measured or not measured else next(m for m in metrics.HIGHER_IS_BETTER
                                                                     if m in measured)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _csv(rows: list[dict], first: tuple[str, ...]) -> str:
    keys = {k for r in rows for k in r}
    columns = [c for c in first if c in keys] + sorted(keys - set(first) - set(metrics.HIGHER_IS_BETTER)) + \
        [m for m in metrics.HIGHER_IS_BETTER if m in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def write_all(results: Results, output_dir: str) -> dict[str, str]:
    """results.json, summary.csv, paired.csv, episodes.csv, results.md and PNG plots; returns {name: path}."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir={output_dir!r} is a file; give a folder path")
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, name) for name in
             ("results.json", "summary.csv", "paired.csv", "episodes.csv", "results.md")}
    payload = {"settings": results.settings, "summary": results.summary, "paired": results.paired,
               "timing": results.timing,
               "tuning": results.tuning, "records": results.records}
    atomic_write(paths["results.json"], json.dumps(_clean(payload), indent=1, allow_nan=False))
    atomic_write(paths["summary.csv"], _csv(results.summary, ("method", "shots", "steps", "metric", "mean", "ci95", "n")))
    atomic_write(paths["paired.csv"], _csv(results.paired, ("method", "reference", "shots", "steps", "metric",
                                                            "mean_diff", "ci95", "n")))
    atomic_write(paths["episodes.csv"], _csv(results.records, KEYS))
    atomic_write(paths["results.md"], markdown(results) + "\n")
    paths["steps.png"] = os.path.join(output_dir, "steps.png")
    plot_steps(results, paths["steps.png"])
    if len(results.settings["shots"]) > 1:
        paths["shots.png"] = os.path.join(output_dir, "shots.png")
        plot_shots(results, paths["shots.png"])
    if results.histories:
        paths["training_curves.png"] = os.path.join(output_dir, "training_curves.png")
        plot_training(results.histories, paths["training_curves.png"])
    return paths


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _series(results: Results, metric: str, method: str, shots: Any, along: str, fixed: dict):
    rows = [r for r in results.summary if r["method"] == method and r["metric"] == metric
            and all(r[k] == v for k, v in fixed.items()) and (along == "shots" or r["shots"] == shots)]
    rows.sort(key=lambda r: r[along])
    return [r[along] for r in rows], [r["mean"] for r in rows], [0.0 if r["ci95"] is None or math.isnan(r["ci95"])
                                                                 else r["ci95"] for r in rows]


def plot_steps(results: Results, path: str, metric: Optional[str] = None) -> None:
    """``metric`` vs inner steps, one line per method with its 95% band, one panel per shot count."""
    plt = _pyplot()
    metric = pick_metric(results, metric)
    shots = results.settings["shots"]
    fig, axes = plt.subplots(1, len(shots), figsize=(5 * len(shots), 3.8), squeeze=False)
    adapting = set(results.settings.get("adapting", results.methods))
    for ax, k in zip(axes[0], shots):
        for m in results.methods:
            x, y, ci = _series(results, metric, m, k, "steps", {})
            if not x:
                continue
            style = "o-" if m in adapting else "--"
            line, = ax.plot(x, y, style, label=m)
            ax.fill_between(x, [a - b for a, b in zip(y, ci)], [a + b for a, b in zip(y, ci)],
                            color=line.get_color(), alpha=0.15)
        ax.set_xlabel("inner steps")
        ax.set_ylabel(metric)
        if metric in ("mse", "nll"):
            ax.set_yscale("log")
        ax.set_title(f"{metric} vs inner steps" + ("" if k is None else f" (K = {k})"))
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_shots(results: Results, path: str, metric: Optional[str] = None) -> None:
    """``metric`` vs shots after the largest step count, one line per method."""
    plt = _pyplot()
    metric = pick_metric(results, metric)
    last = results.settings["steps"][-1]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m in results.methods:
        x, y, ci = _series(results, metric, m, None, "shots", {"steps": last})
        if x:
            ax.errorbar(x, y, yerr=ci, fmt="o-", capsize=3, label=m)
    ax.set_xlabel("shots (K)")
    ax.set_ylabel(metric)
    if metric in ("mse", "nll"):
        ax.set_yscale("log")
    ax.set_title(f"{metric} vs shots after {last} inner steps")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_training(histories: dict[str, list[dict]], path: str) -> None:
    """Meta-training curves (query loss after adaptation per meta-step) from ``learner.history``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, records in histories.items():
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["query_loss"] for r in records], label=f"{name} (train query loss)", alpha=0.8)
        val = [(r["step"], r["val_query_loss"]) for r in records if "val_query_loss" in r]
        if val:
            ax.plot(*zip(*val), "o--", label=f"{name} (val)")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("meta-training")
    ax.legend(fontsize=8)
    _save(fig, path)
