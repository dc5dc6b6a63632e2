"""Bootstrap confidence intervals for pairwise ratings, resampling aggregated counts.

A bootstrap round of N votes is a multinomial draw of N votes over the unique (pair, outcome)
categories with probabilities equal to their observed shares -- the same distribution as
resampling the N vote rows with replacement, without ever touching the rows. All rounds are
drawn at once (``rng.multinomial(N, p, size=rounds)``); each round is refitted by Newton's
method warm-started at the full-data estimate (a handful of steps).

Intervals are percentiles of the rounds (95%: 2.5% and 97.5%). CI-aware rank (Chatbot Arena):
``rank_i = 1 + #{j : lower_j > upper_i}``, so models with overlapping intervals share a rank.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .aggregate import PairCounts
from .bt import fit_bradley_terry, mle_exists


@dataclass
class BootstrapResult:
    samples: np.ndarray
    """``[rounds, n]`` centred log-strengths, one row per round."""
    diverged: int
    """Rounds whose resample has no finite MLE (a model undefeated in that resample, say):
    they are fitted with the prior ``fallback_alpha`` instead."""


def resample_counts(counts: PairCounts, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """``[rounds, n_pairs, 3]`` multinomial resamples of the pair x outcome counts."""
    table = counts.outcome_table()
    flat = table.ravel()
    total = flat.sum()
    n_votes = int(round(total))
    draws = rng.multinomial(n_votes, flat / total, size=rounds)
    if n_votes and abs(total - n_votes) > 1e-9:  # weighted votes: keep the total weight
        draws = draws * (total / n_votes)
    return draws.reshape(rounds, *table.shape).astype(float)


def bootstrap_bt(
    counts: PairCounts, rounds: int = 100, *, ties: str = "half", alpha: float = 0.0,
    seed: int = 0, initial_params: np.ndarray | None = None, fallback_alpha: float = 0.01,
) -> BootstrapResult:
    """Bradley-Terry bootstrap: ``rounds`` multinomial resamples of ``counts``, each refitted
    (with ``fallback_alpha`` when ``alpha`` is 0 and a resample has no finite MLE)."""
    rng = np.random.default_rng(seed)
    tables = resample_counts(counts, rounds, rng)
    if initial_params is None:
        initial_params = fit_bradley_terry(counts, ties=ties, alpha=alpha).params
    samples = np.empty((rounds, counts.n_items))
    diverged = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for r in range(rounds):
            sample = counts.with_table(tables[r])
            round_alpha = alpha
            if alpha == 0 and not mle_exists(sample, np.union1d(counts.i, counts.j)):
                round_alpha = fallback_alpha
                diverged += 1
            fit = fit_bradley_terry(sample, ties=ties, alpha=round_alpha,
                                    initial_params=initial_params, max_iter=50, tol=1e-8)
            samples[r] = fit.params
    return BootstrapResult(samples, diverged)


def percentile_intervals(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Lower and upper percentiles of each column."""
    tail = (1 - level) / 2 * 100
    return (np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0))


def ci_ranks(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``1 + #{j : lower_j > upper_i}`` for every i (vectorized)."""
    return 1 + np.sum(lower[None, :] > upper[:, None], axis=1)
