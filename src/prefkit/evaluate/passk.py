"""pass@k and maj@k from ``n >= k`` samples per prompt, with bootstrap intervals over prompts.

Both metrics are estimated from ``n`` samples of each prompt as the EXACT expectation over the
``C(n, k)`` equally likely k-subsets of those samples, so they are unbiased estimates of the
metric a policy would score with ``k`` fresh samples (every k-subset of i.i.d. samples is
itself a set of ``k`` i.i.d. samples), and use every sample rather than one split of them.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): with
``c`` correct samples out of ``n``, the share of k-subsets holding at least one correct sample:

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

(1 when ``n - c < k``); the product form has no huge binomials, so it is exact in float64.

maj@k (majority voting, "self-consistency"): each sample carries an answer (``None``:
unparsed, casts no vote) and whether it is correct; a k-subset is scored by its most frequent
answer. Ties are broken uniformly at random, so a tie between ``j`` answers of which ``i`` are
correct scores ``i / j``; a subset of unparsed samples only scores 0. With answer ``a`` held by
``m_a`` samples and ``x_a`` of them drawn (multivariate hypergeometric,
``P(x) = prod_a C(m_a, x_a) * C(m_none, x_none) / C(n, k)``):

    maj@k = sum_x P(x) * (#correct answers with x_a = t) / (#answers with x_a = t),
            t = max_a x_a >= 1.

:func:`maj_at_k` sums this by dynamic programming rather than by listing subsets: for each
top count ``t`` it runs over the answers keeping, for every number of samples drawn so far, the
weight of the draws with every answer at most ``t`` split by how many correct and how many
wrong answers sit exactly at ``t``; the weights are the products of binomials above, so the
sum is exact up to float rounding (the tests compare it with listing every k-subset). The work
is about ``max_a m_a * (n + #answers)`` array updates of size ``k * (k / t)^2`` at most.
Correctness must be a property of the answer: two samples with one answer and different flags
are refused.

Intervals: percentile bootstrap over prompts (:func:`bootstrap_interval`), resampling prompt
counts (multinomial) rather than rows; per-task figures are the same statistics over the
prompts of each task (:func:`passk_report`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from math import comb
from typing import Any

import numpy as np

__all__ = [
    "MAX_SAMPLES_MAJ",
    "bootstrap_interval",
    "maj_at_k",
    "pass_at_k",
    "passk_report",
]

MAX_SAMPLES_MAJ = 1000
"""Most samples per prompt :func:`maj_at_k` takes: its weights are binomials ``C(m, x)`` in
float64, which stay finite up to ``C(1000, 500) ~ 2.7e299``."""


def pass_at_k(n: Any, c: Any, k: int) -> np.ndarray:
    """Unbiased pass@k of each prompt: ``1 - C(n - c, k) / C(n, k)`` (module docstring), as
    the product ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``; 1 where ``n - c < k``.

    Args:
        n: samples per prompt (an int or an array of ints, each ``>= k``).
        c: correct samples per prompt (same shape, ``0 <= c <= n``).
        k: the number of tries, ``>= 1``.
    Returns:
        a float64 array of the shape of ``n`` and ``c`` broadcast.
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, dtype=np.int64), np.asarray(c,
                                                                                 dtype=np.int64))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if np.any(n_arr < k):
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got n = "
                         f"{int(n_arr.min())}")
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ValueError("need 0 <= c <= n for every prompt")
    out = np.empty(n_arr.shape, dtype=np.float64)
    for idx in np.ndindex(n_arr.shape):
        ni, ci = int(n_arr[idx]), int(c_arr[idx])
        if ni - ci < k:
            out[idx] = 1.0
        else:
            i = np.arange(ni - ci + 1, ni + 1, dtype=np.float64)
            out[idx] = 1.0 - float(np.prod(1.0 - k / i))
    return out


def _answer_classes(answers: Sequence[Hashable | None], correct: Sequence[bool]
                    ) -> tuple[list[int], list[bool], int]:
    """(count of each distinct answer, whether it is correct, number of unparsed samples)."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    counts: dict[Hashable, int] = {}
    flags: dict[Hashable, bool] = {}
    n_none = 0
    for a, ok in zip(answers, correct, strict=True):
        if a is None:
            n_none += 1
            continue
        if a in flags and flags[a] != bool(ok):
            raise ValueError(f"answer {a!r} is marked both correct and wrong: correctness "
                             "must be a property of the answer")
        flags[a] = bool(ok)
        counts[a] = counts.get(a, 0) + 1
    return list(counts.values()), [flags[a] for a in counts], n_none


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """Exact maj@k of one prompt from its ``n = len(answers) >= k`` samples: the mean, over
    all k-subsets of the samples, of the score of the subset's majority answer (module
    docstring: unparsed ``None`` answers do not vote, a tie between ``j`` answers of which
    ``i`` are correct scores ``i / j``, a subset with no vote scores 0).

    Args:
        answers: each sample's answer (any hashable value) or ``None`` when it has none.
        correct: whether each sample is correct (equal for equal answers).
        k: votes per majority, ``1 <= k <= n <= MAX_SAMPLES_MAJ``.
    """
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@{k} needs 1 <= k <= n samples, got n = {n}")
    if n > MAX_SAMPLES_MAJ:
        raise ValueError(f"maj@k takes at most {MAX_SAMPLES_MAJ} samples per prompt, got {n}")
    counts, flags, n_none = _answer_classes(answers, correct)
    n_right, n_wrong = sum(flags), len(flags) - sum(flags)
    none_w = np.array([comb(n_none, x) for x in range(min(n_none, k) + 1)], dtype=np.float64)
    total = 0.0
    for t in range(1, min(k, max(counts, default=0)) + 1):  # no answer is drawn more often
        cap = k // t  # at most this many answers can be drawn exactly t times
        kr, kw = min(cap, n_right), min(cap, n_wrong)
        # w[s, r, u]: weight of draws of s samples with every answer drawn <= t times, r
        # correct and u wrong answers drawn exactly t times. Start with the unparsed samples.
        w = np.zeros((k + 1, kr + 1, kw + 1))
        w[: len(none_w), 0, 0] = none_w
        for m, ok in zip(counts, flags, strict=True):
            new = np.zeros_like(w)
            for x in range(min(m, t) + 1):
                cx = float(comb(m, x))
                if x < t:
                    new[x:] += cx * w[: k + 1 - x]
                elif ok:
                    new[x:, 1:] += cx * w[: k + 1 - x, :-1]
                else:
                    new[x:, :, 1:] += cx * w[: k + 1 - x, :, :-1]
            w = new
        r = np.arange(kr + 1)[:, None]
        u = np.arange(kw + 1)[None, :]
        tied = r + u
        score = np.divide(r, tied, out=np.zeros(tied.shape), where=tied > 0)
        total += float((w[k] * score).sum())
    return total / comb(n, k)


def bootstrap_interval(values: Any, *, level: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt ``values``: ``n_boot``
    resamples of the prompts with replacement (multinomial counts of each prompt), the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of their means. One prompt gives
    ``(v, v)``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("need a non-empty 1-D array of per-prompt values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(v.size, np.full(v.size, 1.0 / v.size), size=n_boot)
    means = draws @ v / v.size
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _summary(values: np.ndarray, level: float, n_boot: int, seed: int) -> dict[str, float]:
    lo, hi = bootstrap_interval(values, level=level, n_boot=n_boot, seed=seed)
    return {"mean": float(values.mean()), "ci_low": lo, "ci_high": hi}


def passk_report(
    correct: Sequence[Sequence[bool]],
    ks: Sequence[int],
    *,
    answers: Sequence[Sequence[Hashable | None]] | None = None,
    tasks: Sequence[str] | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """pass@k and maj@k of a set of prompts, with bootstrap intervals over prompts, overall
    and per task.

    Args:
        correct: per prompt, whether each of its samples is correct (``n_i >= max(ks)``).
        ks: the k values.
        answers: per prompt, each sample's answer (``None``: unparsed) for majority voting;
            without it there is no maj@k.
        tasks: per prompt, its task name (per-task figures under ``"tasks"``).
        level, n_boot, seed: of :func:`bootstrap_interval` (the same resamples for every
            metric, so their intervals are paired).

    Returns:
        ``{"n_prompts", "n_samples", "accuracy" (mean share of correct samples),
        "pass@k": {k: {"mean", "ci_low", "ci_high"}}, "maj@k": {...} (with ``answers``),
        "tasks": {name: the same for its prompts} (with ``tasks``)}``.
    """
    if not correct:
        raise ValueError("no prompts")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be >= 1, got {list(ks)}")
    for name, other in (("answers", answers), ("tasks", tasks)):
        if other is not None and len(other) != len(correct):
            raise ValueError(f"{len(correct)} prompts but {len(other)} {name}")
    n = np.array([len(c) for c in correct])
    c = np.array([sum(bool(x) for x in row) for row in correct])
    per_prompt: dict[str, np.ndarray] = {"accuracy": c / n}
    for k in ks:
        per_prompt[f"pass@{k}"] = pass_at_k(n, c, k)
        if answers is not None:
            per_prompt[f"maj@{k}"] = np.array(
                [maj_at_k(a, f, k) for a, f in zip(answers, correct, strict=True)])

    def summarize(index: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"n_prompts": int(index.size), "n_samples": int(n[index].sum())}
        out["accuracy"] = _summary(per_prompt["accuracy"][index], level, n_boot, seed)
        for metric in ("pass", "maj"):
            rows = {k: _summary(per_prompt[f"{metric}@{k}"][index], level, n_boot, seed)
                    for k in ks if f"{metric}@{k}" in per_prompt}
            if rows:
                out[f"{metric}@k"] = rows
        return out

    report = summarize(np.arange(len(correct)))
    report["level"] = level
    if tasks is not None:
        names: Mapping[str, np.ndarray] = {
            t: np.flatnonzero(np.array(tasks, dtype=object) == t) for t in dict.fromkeys(tasks)}
        report["tasks"] = {t: summarize(idx) for t, idx in names.items()}
    return report
