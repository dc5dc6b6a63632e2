"""Sufficient statistics of pairwise votes: per unordered pair of models, how often each side
won and how often they tied. Every pairwise fit in :mod:`prefkit.rank` works on these counts
(a few thousand rows for 100 models) instead of the votes (millions of rows).

Outcome codes (arrays of int8 everywhere in this package): ``A_WINS = 0``, ``B_WINS = 1``,
``TIE = 2``, ``BOTH_BAD = 3`` (both-bad is a tie for every rating model here; it is kept apart
only in the counts that report it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

A_WINS, B_WINS, TIE, BOTH_BAD = 0, 1, 2, 3


@dataclass
class PairCounts:
    """Votes aggregated per unordered pair ``i < j``: ``wins_i`` (i beat j), ``wins_j`` and
    ``ties`` (weighted counts, float). ``n_items`` models in all."""

    n_items: int
    i: np.ndarray
    j: np.ndarray
    wins_i: np.ndarray
    wins_j: np.ndarray
    ties: np.ndarray

    @property
    def totals(self) -> np.ndarray:
        return self.wins_i + self.wins_j + self.ties

    @property
    def n_votes(self) -> float:
        return float(self.totals.sum())

    def outcome_table(self) -> np.ndarray:
        """``[n_pairs, 3]`` counts (i wins, j wins, tie): the categories a bootstrap resamples."""
        return np.stack([self.wins_i, self.wins_j, self.ties], axis=1)

    def with_table(self, table: np.ndarray) -> PairCounts:
        """The same pairs with other counts (e.g. a bootstrap resample of :meth:`outcome_table`)."""
        return PairCounts(self.n_items, self.i, self.j, table[:, 0], table[:, 1], table[:, 2])

    def votes_per_item(self) -> np.ndarray:
        tot = self.totals
        return (np.bincount(self.i, tot, self.n_items) + np.bincount(self.j, tot, self.n_items))

    def wins_per_item(self) -> np.ndarray:
        return (np.bincount(self.i, self.wins_i, self.n_items)
                + np.bincount(self.j, self.wins_j, self.n_items))

    def losses_per_item(self) -> np.ndarray:
        return (np.bincount(self.i, self.wins_j, self.n_items)
                + np.bincount(self.j, self.wins_i, self.n_items))


def aggregate_pairwise(
    a: np.ndarray, b: np.ndarray, outcome: np.ndarray, n_items: int | None = None,
    weights: np.ndarray | None = None,
) -> PairCounts:
    """Aggregate votes ``a[k]`` vs ``b[k]`` with ``outcome[k]`` (codes above) into
    :class:`PairCounts`. Vectorized: one ``bincount`` over ``pair * 3 + outcome``."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    outcome = np.asarray(outcome, dtype=np.int64)
    if not (len(a) == len(b) == len(outcome)):
        raise ValueError("a, b and outcome must have the same length")
    if n_items is None:
        n_items = int(max(a.max(initial=-1), b.max(initial=-1)) + 1)
    if len(a) and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_items):
        raise ValueError(f"model indices must be in 0..{n_items - 1}")
    if np.any(a == b):
        raise ValueError(f"{int(np.sum(a == b))} votes compare a model with itself")
    if np.any((outcome < 0) | (outcome > 3)):
        raise ValueError("outcome codes must be 0 (a wins), 1 (b wins), 2 (tie), 3 (both bad)")
    counts = CountAccumulator(n_items)
    counts.add(a, b, outcome, weights)
    return counts.result()


class CountAccumulator:
    """Streaming aggregation: ``add`` chunks of votes, then ``result()``. Memory is
    ``O(n_items**2)``, whatever the number of votes."""

    def __init__(self, n_items: int):
        self.n_items = n_items
        self._table = np.zeros((n_items * n_items, 3))

    def grow(self, n_items: int) -> None:
        """Make room for more models (indices keep their meaning)."""
        if n_items <= self.n_items:
            return
        old = self._table.reshape(self.n_items, self.n_items, 3)
        table = np.zeros((n_items, n_items, 3))
        table[: self.n_items, : self.n_items] = old
        self.n_items = n_items
        self._table = table.reshape(n_items * n_items, 3)

    def add(self, a, b, outcome, weights=None) -> None:
        dtype = np.int32 if self.n_items * self.n_items * 3 < 2**31 else np.int64
        a = np.asarray(a).astype(dtype, copy=False)
        b = np.asarray(b).astype(dtype, copy=False)
        outcome = np.asarray(outcome).astype(dtype, copy=False)
        swapped = a > b
        lo = np.where(swapped, b, a)
        hi = (a + b) - lo
        # oriented outcome: 0 = lo wins, 1 = hi wins, 2 = tie (both-bad included)
        oriented = np.where(outcome >= TIE, 2, outcome ^ swapped)
        key = (lo * self.n_items + hi) * 3 + oriented
        w = None if weights is None else np.asarray(weights, dtype=float)
        self._table += np.bincount(key, w, minlength=self.n_items * self.n_items * 3).reshape(
            -1, 3)

    def result(self) -> PairCounts:
        n = self.n_items
        nz = np.flatnonzero(self._table.sum(axis=1) > 0)
        table = self._table[nz]
        return PairCounts(n, nz // n, nz % n, table[:, 0], table[:, 1], table[:, 2])
