"""Figures (matplotlib, PNG). Each is drawn on its own :class:`matplotlib.figure.Figure` (no
pyplot, no global backend switch: a caller's interactive backend and open figures are left
alone) and saved with the Agg renderer PNG output uses."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np


def _subplots(*args: Any, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """``(figure, axes)`` like ``pyplot.subplots``, on a standalone Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def plot_leaderboard(models: Sequence[str], rating: np.ndarray, low: np.ndarray | None,
                     high: np.ndarray | None, path: str | os.PathLike,
                     title: str = "Leaderboard",
                     interval: str = "95% bootstrap interval") -> str:
    """Horizontal bars of ratings (best on top) with interval whiskers; ``interval`` names the
    interval on the axis (``"95% sandwich interval"`` for robust standard errors, say).

    A whisker never points away from its estimate: an interval that misses the estimate (a
    percentile interval from few bootstrap rounds may) is drawn from the estimate to the
    interval's far end, the near side clipped at 0."""
    order = np.argsort(rating)
    height = max(2.5, 0.28 * len(models) + 1)
    fig, ax = _subplots(figsize=(7, height))
    y = np.arange(len(models))
    r = rating[order]
    if low is not None and high is not None:
        err = np.clip(np.vstack([r - low[order], high[order] - r]), 0.0, None)
        ax.errorbar(r, y, xerr=err, fmt="o", color="#1f5fa8", ecolor="#7a9cc6", capsize=3)
    else:
        ax.plot(r, y, "o", color="#1f5fa8")
    ax.set_yticks(y, [models[i] for i in order])
    ax.set_xlabel("rating (Elo scale)" + (f", {interval}" if low is not None else ""))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def plot_win_rates(models: Sequence[str], observed: np.ndarray, predicted: np.ndarray,
                   path: str | os.PathLike) -> str:
    """Observed and predicted win-rate matrices side by side (row model beats column model)."""
    n = len(models)
    size = max(4.0, 0.35 * n + 2)
    fig, axes = _subplots(1, 2, figsize=(2 * size, size))
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
    return str(path)


# --- lab report figures -------------------------------------------------------------------------
# ``target`` is a file path or a binary file object (e.g. ``io.BytesIO`` for an HTML report);
# the image is always PNG.

Target = str | os.PathLike | BinaryIO
_BLUE, _LIGHT_BLUE, _GREY, _ORANGE = "#1f5fa8", "#7a9cc6", "#808080", "#d9822b"


def _save(fig, target: Target) -> Target:
    """Save ``fig`` as PNG (dpi 110, like the other figures) to ``target`` and close it."""
    fig.savefig(target, format="png", dpi=110)
    return str(target) if isinstance(target, str | os.PathLike) else target


def plot_lab_win_rates(methods: Sequence[str], win_rate: Sequence[float],
                       low: Sequence[float | None], high: Sequence[float | None],
                       target: Target, reference: str | None = "sft",
                       title: str = "Gold win rate vs SFT") -> Target:
    """One row per method (first on top): the gold win rate against the reference policy with
    its 95% interval as whiskers (no whisker where a bound is missing), a line at 0.5 (a tie
    with the reference); the reference row is grey."""
    n = len(methods)
    fig, ax = _subplots(figsize=(7, max(2.4, 0.36 * n + 1.2)))
    for i, (name, w, lo, hi) in enumerate(zip(methods, win_rate, low, high, strict=True)):
        color = _GREY if name == reference else _BLUE
        if lo is not None and hi is not None:
            ax.errorbar([w], [i], xerr=[[max(w - lo, 0.0)], [max(hi - w, 0.0)]], fmt="o",
                        color=color, ecolor=_LIGHT_BLUE if name != reference else _GREY,
                        capsize=3)
        else:
            ax.plot([w], [i], "o", color=color)
    ax.axvline(0.5, color=_GREY, linestyle="--", linewidth=1)
    ax.set_yticks(range(n), list(methods))
    ax.set_ylim(n - 0.5, -0.5)  # first method on top, as in the table
    ax.set_xlabel("gold win rate vs SFT (ties count half), 95% interval")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, target)


def plot_reward_vs_kl(methods: Sequence[str], kl: Sequence[float], gold: Sequence[float],
                      target: Target, gold_se: Sequence[float | None] | None = None,
                      reference: str | None = "sft",
                      title: str = "Gold reward vs KL to SFT") -> Target:
    """Scatter of each method's mean gold reward against its KL to the SFT policy, every point
    labelled with its method (standard-error whiskers when ``gold_se`` is given)."""
    fig, ax = _subplots(figsize=(7, 4.2))
    for i, (name, x, y) in enumerate(zip(methods, kl, gold, strict=True)):
        color = _GREY if name == reference else _BLUE
        se = gold_se[i] if gold_se is not None else None
        if se is not None:
            ax.errorbar([x], [y], yerr=[[se], [se]], fmt="o", color=color, ecolor=_LIGHT_BLUE,
                        capsize=3, alpha=0.9)
        else:
            ax.plot([x], [y], "o", color=color)
        ax.annotate(name, (x, y), xytext=(6, 3), textcoords="offset points", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85),
                    zorder=5)
    ax.set_xlabel("KL to SFT (nats per answer)")
    ax.set_ylabel("mean gold reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    fig.tight_layout()
    return _save(fig, target)


def plot_overoptimization(xs: Sequence[float], gold: Sequence[float], proxy: Sequence[float],
                          target: Target, gold_se: Sequence[float] | None = None,
                          xlabel: str = "n (best-of-n)", log2: bool = True,
                          title: str = "Over-optimization: gold vs proxy reward") -> Target:
    """Gold and proxy reward along the optimisation axis (``n`` of best-of-n on a log2 axis,
    or KL), the gold maximum marked (± ``gold_se`` whiskers when given). Proxy and gold live
    on different scales, so the proxy has its own y axis on the right."""
    x = np.asarray(xs, dtype=float)
    order = np.argsort(x, kind="stable")
    x, g, p = x[order], np.asarray(gold, float)[order], np.asarray(proxy, float)[order]
    fig, ax = _subplots(figsize=(7, 4.6))
    if gold_se is not None:
        ax.errorbar(x, g, yerr=np.asarray(gold_se, float)[order], fmt="o-", color=_BLUE,
                    ecolor=_LIGHT_BLUE, capsize=3, label="gold reward (± se)")
    else:
        ax.plot(x, g, "o-", color=_BLUE, label="gold reward")
    k = int(np.nanargmax(g))
    ax.plot([x[k]], [g[k]], "*", color=_BLUE, markersize=14, label="gold maximum")
    ax.set_ylabel("mean gold reward", color=_BLUE)
    twin = ax.twinx()
    twin.plot(x, p, "s--", color=_ORANGE, label="proxy reward")
    twin.set_ylabel("mean proxy reward (reward model)", color=_ORANGE)
    if log2:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "gold maximum")
    # below the axes: inside it would cover the rising proxy curve
    fig.legend([handles[i] for i in order] + more[0], [labels[i] for i in order] + more[1],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, target)


def plot_training_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], target: Target,
                         keys: Sequence[str] = ("gold_reward", "proxy_reward", "kl"),
                         title: str = "Training curves") -> Target:
    """One panel per key of ``keys`` that some curve has (gold reward, proxy reward, KL)
    against ``step``, one line per method (the same colour in every panel)."""
    shown = [k for k in keys if any(_finite(pt.get(k)) is not None
                                    for pts in curves.values() for pt in pts)]
    if not shown:
        raise ValueError("no curve has any of " + ", ".join(keys))
    # at most ~10 inches wide: the HTML page shows it ~940 px wide, text stays readable
    fig, axes = _subplots(1, len(shown), figsize=(min(3.6 * len(shown) + 0.6, 10.5), 3.9),
                             squeeze=False)
    from matplotlib import rcParams

    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    handles: dict[str, Any] = {}  # each method's first line, whichever panel it is in
    for j, key in enumerate(shown):
        ax = axes[0][j]
        for i, (name, pts) in enumerate(curves.items()):
            xy = [(_finite(pt.get("step")), _finite(pt.get(key))) for pt in pts]
            xy = sorted((x, y) for x, y in xy if x is not None and y is not None)
            if xy:
                (line,) = ax.plot(*zip(*xy, strict=True), "-", color=colors[i % len(colors)],
                                  label=name, linewidth=1.5)
                handles.setdefault(name, line)
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    labels = [name for name in curves if name in handles]  # in the order of ``curves``
    fig.legend([handles[name] for name in labels], labels, loc="lower center",
               ncol=min(len(labels), 6) or 1, fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, target)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (missing, non-numeric, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if np.isfinite(out) else None


_GREEN = "#2e8b57"


def plot_lab_leaderboard(models: Sequence[str], rating: Sequence[float],
                         low: Sequence[float | None], high: Sequence[float | None],
                         target: Target, ranks: Sequence[Any] | None = None,
                         reference: str | None = "sft",
                         title: str = "Arena leaderboard (gold-judged pairwise)") -> Target:
    """Ratings sorted best on top, 95% bootstrap intervals as whiskers, each labelled with its
    rating (and rank when ``ranks`` is given); the reference (the anchor) is grey with a
    dashed vertical line at its rating."""
    r = np.asarray(rating, dtype=float)
    order = np.argsort(-r, kind="stable")
    n = len(models)
    fig, ax = _subplots(figsize=(7.5, max(2.4, 0.36 * n + 1.3)))
    for row, i in enumerate(order):
        name, w, lo, hi = models[i], r[i], low[i], high[i]
        ref = name == reference
        color = _GREY if ref else _BLUE
        if lo is not None and hi is not None:
            ax.errorbar([w], [row], xerr=[[max(w - lo, 0.0)], [max(hi - w, 0.0)]], fmt="o",
                        color=color, ecolor=_GREY if ref else _LIGHT_BLUE, capsize=3)
        else:
            ax.plot([w], [row], "o", color=color)
        label = f"{w:.0f}" + (f"  (rank {ranks[i]})" if ranks is not None else "")
        right = hi if hi is not None else w
        ax.annotate(label, (right, row), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=8, color=color)
        if ref:
            ax.axvline(w, color=_GREY, linestyle="--", linewidth=1)
    names = [models[i] + (" (anchor)" if models[i] == reference else "") for i in order]
    ax.set_yticks(range(n), names)
    ax.set_ylim(n - 0.5, -0.5)  # best on top, as in the table
    ends = [h if h is not None else v for v, h in zip(r, high, strict=True)]
    starts = [lo if lo is not None else v for v, lo in zip(r, low, strict=True)]
    span = max(max(ends) - min(starts), 1.0)
    ax.set_xlim(min(starts) - 0.05 * span, max(ends) + 0.2 * span)  # room for the labels
    ax.set_xlabel("rating (Bradley-Terry, Elo scale), 95% bootstrap interval")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, target)


def plot_judge_win_rates(methods: Sequence[str],
                         judges: Mapping[str, tuple[Sequence[float | None],
                                                    Sequence[float | None],
                                                    Sequence[float | None]]],
                         target: Target, reference: str | None = "sft",
                         title: str = "Win rate vs SFT by judge") -> Target:
    """One row per method (first on top), one marker per judge (``judges`` maps a judge's
    label to its win rates, lower and upper 95% bounds; a None win rate is not drawn), the
    judges side by side within the row, a dashed line at 0.5 (a tie with SFT); the legend
    lists the judges in the order of ``judges``."""
    n, k = len(methods), len(judges)
    fig, ax = _subplots(figsize=(7.5, max(2.6, 0.5 * n + 1.4)))
    colors = [_BLUE, _GREEN, _ORANGE, _GREY]
    markers = ["o", "s", "D", "^"]
    offsets = np.linspace(-0.22, 0.22, k) if k > 1 else np.zeros(1)
    handles: dict[str, Any] = {}  # each judge's first marker, for the legend
    for j, (label, (win, low, high)) in enumerate(judges.items()):
        color = colors[j % len(colors)]
        for i in range(n):
            w, lo, hi = win[i], low[i], high[i]
            if w is None:
                continue
            y = i + offsets[j]
            if lo is not None and hi is not None:
                drawn = ax.errorbar([w], [y], xerr=[[max(w - lo, 0.0)], [max(hi - w, 0.0)]],
                                    fmt=markers[j % len(markers)], color=color, ecolor=color,
                                    elinewidth=1.2, capsize=2.5, markersize=5)
            else:
                (drawn,) = ax.plot([w], [y], markers[j % len(markers)], color=color,
                                   markersize=5)
            handles.setdefault(label, drawn)
    for i in range(n - 1):
        ax.axhline(i + 0.5, color="#e4e8ec", linewidth=0.8)
    ax.axvline(0.5, color=_GREY, linestyle="--", linewidth=1)
    ax.set_yticks(range(n), [m + (" (reference)" if m == reference else "") for m in methods])
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("win rate vs SFT (ties count half), 95% interval")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    labels = [label for label in judges if label in handles]  # in the order given
    fig.legend([handles[label] for label in labels], labels, loc="lower center",
               ncol=max(len(labels), 1), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, target)


def plot_reliability_diagram(bins: Sequence[Mapping[str, Any]], target: Target,
                             ece: float | None = None,
                             title: str = "Reward model calibration",
                             xlabel: str = "predicted probability (reward model)",
                             ylabel: str = "observed frequency (pool labels)") -> Target:
    """A reliability diagram (:func:`prefkit.evaluate.calibration.plot_reliability` writes it
    to a file): observed frequency per bin as bars, the diagonal of perfect calibration,
    each bin's mean predicted probability as a dot and its count above the bar; ``ece`` goes
    into the title. Bins are dicts with ``lo``, ``hi``, ``count``, ``mean_prob`` and
    ``accuracy`` (empty bins are skipped)."""
    filled = [b for b in bins if _finite(b.get("count")) and _finite(b.get("accuracy"))
              is not None and _finite(b.get("lo")) is not None
              and _finite(b.get("hi")) is not None]
    if not filled:
        raise ValueError("no non-empty calibration bin")
    fig, ax = _subplots(figsize=(5.6, 5.0))
    ax.plot([0, 1], [0, 1], "--", color=_GREY, label="perfect calibration")
    centers = [(b["lo"] + b["hi"]) / 2 for b in filled]
    widths = [b["hi"] - b["lo"] for b in filled]
    accuracy = [b["accuracy"] for b in filled]
    ax.bar(centers, accuracy, width=widths, edgecolor=_BLUE, color=_LIGHT_BLUE, alpha=0.8,
           label="observed frequency")
    means = [(c, _finite(b.get("mean_prob"))) for c, b in zip(centers, filled, strict=True)]
    means = [(c, m) for c, m in means if m is not None]
    if means:
        ax.plot([m for _, m in means], [m for _, m in means], "o", color="#c0392b",
                markersize=4, label="mean predicted probability")
    for x, a, b in zip(centers, accuracy, filled, strict=True):
        ax.annotate(str(b["count"]), (x, min(a, 0.95)), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f", ECE = {ece:.3f}" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, target)


def plot_length_drift(methods: Sequence[str], length_delta: Sequence[float],
                      gold_delta: Sequence[float], target: Target,
                      gold_se: Sequence[float | None] | None = None,
                      reference_length: float | None = None,
                      title: str = "Length drift vs gold reward (relative to SFT)") -> Target:
    """Two panels sharing the method rows (first on top): the change of mean answer length
    from SFT's (left) and the change of mean gold reward from SFT's with ± se whiskers
    (right); longer answers are orange, shorter blue, gains green and losses red."""
    n = len(methods)
    fig, (left, right) = _subplots(1, 2, figsize=(9.5, max(2.6, 0.38 * n + 1.4)),
                                      sharey=True)
    y = np.arange(n)
    dl = np.asarray(length_delta, dtype=float)
    dg = np.asarray(gold_delta, dtype=float)
    left.barh(y, dl, color=[_ORANGE if v > 0 else _BLUE for v in dl], alpha=0.85)
    err = None
    if gold_se is not None and all(s is not None for s in gold_se):
        err = np.asarray(gold_se, dtype=float)
    right.barh(y, dg, xerr=err, color=[_GREEN if v > 0 else "#c0392b" for v in dg],
               alpha=0.85, ecolor=_GREY, capsize=3)
    for ax in (left, right):
        ax.axvline(0, color=_GREY, linewidth=1)
        ax.grid(axis="x", alpha=0.3)
    for i, v in enumerate(dl):
        left.annotate(f"{v:+.2f}", (v, i), xytext=(4 if v >= 0 else -4, 0),
                      textcoords="offset points", va="center",
                      ha="left" if v >= 0 else "right", fontsize=7)
    span = max(float(np.max(np.abs(dl))) if n else 0.0, 1e-6)
    left.set_xlim(-1.35 * span, 1.35 * span)
    left.set_yticks(y, list(methods))
    left.set_ylim(n - 0.5, -0.5)
    ref = f" (SFT: {reference_length:.2f})" if reference_length is not None else ""
    left.set_xlabel(f"mean length − SFT's, words{ref}")
    right.set_xlabel("mean gold reward − SFT's (± se)")
    left.set_title("longer (orange) or shorter (blue)?", fontsize=10)
    right.set_title("better (green) or worse (red)?", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, target)
