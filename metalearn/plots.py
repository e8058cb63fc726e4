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


def difference_heatmap(cells: dict[tuple[str, str], tuple[float, float]], rows: list[str], columns: list[str],
                       path: str, title: str, label: str = "accuracy points vs frozen foundation") -> None:
    """A diverging heat-map: cell (row, column) holds a paired difference and its 95% half-width (``mean ± ci``)."""
    plt = _pyplot()
    grid = [[cells.get((r, c), (float("nan"), 0.0))[0] for c in columns] for r in rows]
    import textwrap

    width = max(1.6 * len(columns) + 2.5, 5.0)
    fig, ax = plt.subplots(figsize=(width, 0.6 * len(rows) + 1.8))
    limit = max([abs(v) for row in grid for v in row if v == v] + [1e-9]) or 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")  # fill the figure's width
    wrapped = ["\n".join(textwrap.wrap(c.replace("_", " ", 1), 16, break_long_words=False)) for c in columns]
    ax.set_xticks(range(len(columns)), wrapped, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            if (r, c) in cells:
                dark = abs(cells[r, c][0]) > 0.6 * limit  # white text where the colour is deep
                ax.text(j, i, "{:+.1f}\n±{:.1f}".format(*cells[r, c]), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    fig.colorbar(image, label=label)
    ax.set_title("\n".join(textwrap.wrap(title, int(width * 9))), fontsize=9)  # ~9 characters per inch at 9 pt
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
