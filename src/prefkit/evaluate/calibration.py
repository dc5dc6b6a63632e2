"""Calibration of probabilistic predictions: reliability bins, ECE and a reliability plot.

A reward model that scores pairs defines a probability through the Bradley–Terry link,
``P(chosen beats rejected) = sigmoid(scale * (r_chosen - r_rejected))``. How well those
probabilities match observed frequencies is what this module measures.

The array validators used across :mod:`prefkit.evaluate` live here too (this is the lowest
module of the package): they name the first bad index so a user can find the record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

# --------------------------------------------------------------------------- validation


def as_finite(values: Any, name: str, *, ndim: int = 1) -> np.ndarray:
    """``values`` as a float array of ``ndim`` dimensions; raise ``ValueError`` on NaN/inf.

    The message names the first non-finite index (in row-major order), e.g.
    ``"chosen[3] is not finite (nan)"``.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    _check_finite(array, np.ones(array.shape, dtype=bool), name)
    return array


def _check_finite(array: np.ndarray, where: np.ndarray, name: str) -> None:
    bad = where & ~np.isfinite(array)
    if bad.any():
        index = np.argwhere(bad)[0]
        at = ", ".join(str(int(i)) for i in index)
        raise ValueError(f"{name}[{at}] is not finite ({array[tuple(index)]})")


def same_length(**arrays: np.ndarray) -> int:
    """The common first dimension of ``arrays``; ``ValueError`` naming both if they differ."""
    items = list(arrays.items())
    first_name, first = items[0]
    for name, array in items[1:]:
        if len(array) != len(first):
            raise ValueError(f"{name} has {len(array)} rows but {first_name} has {len(first)}")
    if len(first) == 0:
        raise ValueError(f"{first_name} is empty")
    return len(first)


def as_binary(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D bool array; every entry must be 0/1 (or bool)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype == bool:
        return array
    numeric = as_finite(array, name)
    bad = (numeric != 0) & (numeric != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] must be 0 or 1, got {numeric[i]}")
    return numeric == 1


def _as_probs(probs: Any) -> np.ndarray:
    p = as_finite(probs, "probs")
    bad = (p < 0) | (p > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"probs[{i}] = {p[i]} is outside [0, 1]")
    return p


# --------------------------------------------------------------------------- reliability


def bin_index(probs: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: ``b = min(floor(p * n_bins), n_bins - 1)``.

    Bin ``b`` is ``[b/n, (b+1)/n)``, except the last, which is closed on the right so
    that ``p = 1`` belongs to it.
    """
    return np.minimum(np.floor(probs * n_bins).astype(int), n_bins - 1)


def reliability_bins(probs: Any, labels: Any, n_bins: int = 10) -> list[dict[str, Any]]:
    """Reliability table: for each of ``n_bins`` equal-width bins on ``[0, 1]``::

        count     = n_b = number of predictions with p in the bin
        mean_prob = conf_b = mean p in the bin
        accuracy  = acc_b  = mean label in the bin (the observed frequency of label 1)

    Bins are ``[lo, hi)`` except the last, ``[lo, 1]``. Empty bins are kept (so the list
    always has ``n_bins`` entries) with ``mean_prob`` and ``accuracy`` set to ``None``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = _as_probs(probs)
    y = as_binary(labels, "labels").astype(float)
    same_length(probs=p, labels=y)
    which = bin_index(p, n_bins)
    count = np.bincount(which, minlength=n_bins)
    prob_sum = np.bincount(which, weights=p, minlength=n_bins)
    label_sum = np.bincount(which, weights=y, minlength=n_bins)
    bins = []
    for b in range(n_bins):
        n_b = int(count[b])
        bins.append({
            "lo": b / n_bins,
            "hi": (b + 1) / n_bins,
            "count": n_b,
            "mean_prob": float(prob_sum[b] / n_b) if n_b else None,
            "accuracy": float(label_sum[b] / n_b) if n_b else None,
        })
    return bins


def ece_from_bins(bins: list[dict[str, Any]]) -> float:
    """ECE of a reliability table: ``sum_b (n_b / N) * |acc_b - conf_b|`` over non-empty bins."""
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ValueError("no predictions in the bins")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["mean_prob"])
                     for b in bins if b["count"]))


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins::

        ECE = sum_b (n_b / N) * |acc_b - conf_b|

    where ``acc_b`` is the mean label and ``conf_b`` the mean probability in bin ``b``
    (see :func:`reliability_bins`). 0 is perfectly calibrated; the maximum is 1.
    """
    return ece_from_bins(reliability_bins(probs, labels, n_bins))


def pairwise_probabilities(chosen: Any, rejected: Any, *, scale: float = 1.0) -> np.ndarray:
    """``P(chosen beats rejected) = sigmoid(scale * (r_chosen - r_rejected))`` per pair."""
    c = as_finite(chosen, "chosen")
    r = as_finite(rejected, "rejected")
    same_length(chosen=c, rejected=r)
    return expit(scale * (c - r))


def pairwise_calibration(chosen: Any, rejected: Any, n_bins: int = 10, *,
                         scale: float = 1.0) -> dict[str, Any]:
    """Calibration of a pairwise reward model, symmetrised over presentation order.

    Each pair gives ``p = sigmoid(scale * (r_c - r_r))`` with label 1 (the chosen response
    did win). Binning only ``(p, 1)`` makes every bin's accuracy 1, so the ECE would
    collapse to ``1 - mean(p)`` and reward over-confidence. We therefore score each pair
    in both orders, ``(p, 1)`` and ``(1 - p, 0)`` — the prediction for "rejected beats
    chosen" is equally a prediction — so the table has 2N entries, is mirror-symmetric
    (bin b with accuracy a <-> bin n-1-b with accuracy 1-a) and an over-confident model
    (p near 0 or 1 with accuracy near 0.5) shows up in the tails.

    Returns ``{"ece", "bins", "n_pairs", "mean_confidence", "scale"}`` where
    ``mean_confidence`` is the mean of ``max(p, 1 - p)``.
    """
    p = pairwise_probabilities(chosen, rejected, scale=scale)
    probs = np.concatenate([p, 1.0 - p])
    labels = np.concatenate([np.ones(len(p)), np.zeros(len(p))])
    bins = reliability_bins(probs, labels, n_bins)
    return {
        "ece": ece_from_bins(bins),
        "bins": bins,
        "n_pairs": len(p),
        "mean_confidence": float(np.mean(np.maximum(p, 1.0 - p))),
        "scale": float(scale),
    }


# --------------------------------------------------------------------------- plot


def plot_reliability(bins: list[dict[str, Any]], path: str | os.PathLike,
                     title: str = "Reliability") -> Path:
    """Write a reliability diagram (PNG): observed accuracy per bin as bars, the diagonal
    of perfect calibration, mean confidence per bin as dots, and each bin's count above
    its bar. ``bins`` is the output of :func:`reliability_bins`. Returns the path."""
    from prefkit.report.figures import plot_reliability_diagram

    out = Path(path)
    plot_reliability_diagram(bins, out, title=title, xlabel="predicted probability",
                             ylabel="observed frequency")
    return out
