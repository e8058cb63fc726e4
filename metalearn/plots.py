"""Matplotlib PNGs people can look at (headless backend)."""
from __future__ import annotations

import os


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(records: list[dict], path: str) -> None:
    """Query loss per meta-step (and validation loss where measured)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [r for r in records if "skipped" not in r]
    ax.plot([r["step"] for r in finite], [r["query_loss"] for r in finite], label="train query loss (after adaptation)",
            alpha=0.7)
    val = [(r["step"], r["val_query_loss"]) for r in records if "val_query_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="val query loss")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
