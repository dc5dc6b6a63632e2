"""Figures (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_leaderboard(models: Sequence[str], rating: np.ndarray, low: np.ndarray | None,
                     high: np.ndarray | None, path: str | os.PathLike,
                     title: str = "Leaderboard") -> str:
    """Horizontal bars of ratings (best on top) with 95% interval whiskers."""
    plt = _pyplot()
    order = np.argsort(rating)
    height = max(2.5, 0.28 * len(models) + 1)
    fig, ax = plt.subplots(figsize=(7, height))
    y = np.arange(len(models))
    r = rating[order]
    if low is not None and high is not None:
        err = np.vstack([r - low[order], high[order] - r])
        ax.errorbar(r, y, xerr=err, fmt="o", color="#1f5fa8", ecolor="#7a9cc6", capsize=3)
    else:
        ax.plot(r, y, "o", color="#1f5fa8")
    ax.set_yticks(y, [models[i] for i in order])
    ax.set_xlabel("rating (Elo scale)" + (", 95% bootstrap interval" if low is not None else ""))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_win_rates(models: Sequence[str], observed: np.ndarray, predicted: np.ndarray,
                   path: str | os.PathLike) -> str:
    """Observed and predicted win-rate matrices side by side (row model beats column model)."""
    plt = _pyplot()
    n = len(models)
    size = max(4.0, 0.35 * n + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, matrix, title in ((axes[0], observed, "observed"), (axes[1], predicted,
                                                                 "predicted")):
        shown = np.ma.masked_invalid(matrix)
        image = ax.imshow(shown, vmin=0, vmax=1, cmap="RdBu")
        ax.set_xticks(range(n), models, rotation=90)
        ax.set_yticks(range(n), models)
        ax.set_title(f"P(row beats column), {title}")
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if not np.isnan(matrix[i, j]) and i != j:
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                                fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
