"""Online Elo ratings (Elo 1978) as computed by FastChat / Chatbot Arena (``compute_elo``).

Votes are processed in order; for a vote between ``a`` and ``b`` with score ``s`` (the score of
``a``: 1 win, 0.5 tie, 0 loss)::

    E   = 1 / (1 + base ** ((r_b - r_a) / scale))
    r_a += k * (s - E)
    r_b -= k * (s - E)

with FastChat's defaults ``k = 4``, ``scale = 400``, ``base = 10``, ratings starting at
``init = 1000``. (FastChat computes ``r_b += k * (1 - s - E_b)`` with ``E_b = 1 - E``
evaluated separately; the two agree to rounding, ~1e-13.)

The result depends on the order of the votes -- the reason Chatbot Arena moved to
Bradley-Terry (:mod:`prefkit.rank.bt`). :func:`elo_order_sensitivity` measures that dependence
by rating many random orderings at once.

Cost. The update is sequential, so some Python loop over votes is unavoidable without a
compiler (this module uses numpy only):

- :func:`online_elo` (one ordering) runs a plain Python loop over the votes with Python
  floats, about 0.2-0.3 us per vote (0.2-0.3 s per million votes);
- :func:`online_elo_many` (``P`` orderings) advances all orderings together: one vectorized
  step (nine small numpy calls on arrays of length ``P``) per vote index, about 5-7 us per
  step for ``P = 100`` (~6 s per million votes for 100 orderings, against ~20-40 s for 100
  scalar loops; the step cost grows slowly with ``P``); for ``P <= 8`` it runs the scalar
  loop per ordering instead;
- :func:`elo_order_sensitivity` adds the shuffles (numpy's Fisher-Yates, ~3 s for 100
  permutations of a million votes) and unpacking (~0.7 s): ~10-12 s in all for a million
  votes and 100 permutations (measured on a shared 2-core machine), ~0.5 GB of memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import rankdata

from .aggregate import A_WINS, B_WINS, BOTH_BAD, TIE

__all__ = [
    "elo_order_sensitivity",
    "online_elo",
    "online_elo_many",
    "scores_from_outcomes",
]

_SCALAR_MAX_ROWS = 8
_CHUNK = 4096


def scores_from_outcomes(outcome: np.ndarray) -> np.ndarray:
    """Outcome codes of :mod:`prefkit.rank.aggregate` -> Elo scores of ``a``: ``A_WINS`` 1,
    ``B_WINS`` 0, ``TIE`` and ``BOTH_BAD`` 0.5 (FastChat's ``tie`` / ``tie (bothbad)``)."""
    outcome = np.asarray(outcome)
    table = np.full(max(A_WINS, B_WINS, TIE, BOTH_BAD) + 1, np.nan)
    table[A_WINS], table[B_WINS], table[TIE], table[BOTH_BAD] = 1.0, 0.0, 0.5, 0.5
    if outcome.size and (outcome.min() < 0 or outcome.max() >= len(table)):
        raise ValueError("unknown outcome code")
    return table[outcome.astype(np.intp)]


def _check_votes(n_items: int, a: np.ndarray, b: np.ndarray, score: np.ndarray) -> None:
    if not (a.shape == b.shape == score.shape):
        raise ValueError(f"a, b and score must have the same shape, got {a.shape}, {b.shape}, "
                         f"{score.shape}")
    if a.size:
        lo = min(int(a.min()), int(b.min()))
        hi = max(int(a.max()), int(b.max()))
        if lo < 0 or hi >= n_items:
            raise ValueError(f"item ids must be in [0, {n_items}), got [{lo}, {hi}]")
        if np.any(a == b):
            raise ValueError("a vote compares a model with itself (a == b)")
        if not (np.all(score >= 0.0) and np.all(score <= 1.0)):
            raise ValueError("scores must be in [0, 1] (1 = a wins, 0.5 = tie, 0 = b wins)")


def _elo_scalar(n_items: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, k: float,
                scale: float, base: float, init: float) -> np.ndarray:
    """The sequential loop on Python floats (the fastest pure-Python form)."""
    r = [float(init)] * n_items
    c = math.log(base) / scale
    exp = math.exp
    for ai, bi, si in zip(a.tolist(), b.tolist(), score.tolist(), strict=False):
        ra = r[ai]
        rb = r[bi]
        d = k * (si - 1.0 / (1.0 + exp(c * (rb - ra))))
        r[ai] = ra + d
        r[bi] = rb - d
    return np.array(r, dtype=float)


def online_elo(
    n_items: int,
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    *,
    k: float = 4.0,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
) -> np.ndarray:
    """Online Elo over the votes in the given order (see the module docstring); returns the
    final ratings ``[n_items]``. ``a``, ``b``: int arrays of model ids; ``score``: the score of
    ``a`` (1, 0.5 or 0; any value in ``[0, 1]`` is accepted). Models without votes keep
    ``init``."""
    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    score = np.asarray(score, dtype=float).ravel()
    _check_votes(n_items, a, b, score)
    return _elo_scalar(n_items, a, b, score, k, scale, base, init)


def _many_steps(R: np.ndarray, idx: np.ndarray, ks: np.ndarray, kappa: float) -> None:
    """Advance the flat rating array ``R`` (natural-log units, ``[P * n]``) by
    ``len(idx)`` vote steps. ``idx[t]``: flat positions ``[2P]`` (``a`` of every ordering,
    then ``b``); ``ks[t]``: ``kappa * score`` ``[P]``."""
    p = ks.shape[1]
    exp, divide, subtract, add = np.exp, np.divide, np.subtract, np.add
    x = np.empty(p)
    for it, kst in zip(idx, ks, strict=True):
        r = R[it]
        ra, rb = r[:p], r[p:]
        subtract(rb, ra, out=x)
        exp(x, out=x)
        x += 1.0
        divide(kappa, x, out=x)  # kappa * E
        subtract(kst, x, out=x)  # kappa * (s - E)
        add(ra, x, out=ra)
        subtract(rb, x, out=rb)
        R[it] = r


def _elo_vectorized(n_items: int, fill: Any, n_rows: int, n_votes: int, k: float, scale: float,
                    base: float, init: float) -> np.ndarray:
    """``fill(t0, t1, ia, ib, s)`` writes the model ids of ``a`` and ``b`` and the scores of
    votes ``t0:t1`` of every ordering into the vote-major buffers ``[t1 - t0, n_rows]``
    (preallocated once: fresh multi-megabyte arrays per chunk cost page faults)."""
    c = math.log(base) / scale
    kappa = k * c
    R = np.full(n_rows * n_items, init * c)
    offset = np.arange(n_rows, dtype=np.intp) * n_items
    idx_buf = np.empty((_CHUNK, 2 * n_rows), dtype=np.intp)
    ks_buf = np.empty((_CHUNK, n_rows))
    for t0 in range(0, n_votes, _CHUNK):
        t1 = min(t0 + _CHUNK, n_votes)
        idx, ks = idx_buf[: t1 - t0], ks_buf[: t1 - t0]
        fill(t0, t1, idx[:, :n_rows], idx[:, n_rows:], ks)
        idx[:, :n_rows] += offset
        idx[:, n_rows:] += offset
        ks *= kappa
        _many_steps(R, idx, ks, kappa)
    return R.reshape(n_rows, n_items) / c


def online_elo_many(
    n_items: int,
    a_matrix: np.ndarray,
    b_matrix: np.ndarray,
    score_matrix: np.ndarray,
    *,
    k: float = 4.0,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
) -> np.ndarray:
    """Online Elo for several vote sequences at once: row ``p`` of the ``[P, V]`` matrices is
    one ordering (e.g. a permutation of the same votes, or a bootstrap resample); returns the
    final ratings ``[P, n_items]``, row ``p`` equal to ``online_elo`` on row ``p`` (to
    rounding, ~1e-12). All rows advance together, one vectorized step per vote index (see the
    module docstring for the cost)."""
    a_matrix = np.atleast_2d(np.asarray(a_matrix, dtype=np.intp))
    b_matrix = np.atleast_2d(np.asarray(b_matrix, dtype=np.intp))
    score_matrix = np.atleast_2d(np.asarray(score_matrix, dtype=float))
    _check_votes(n_items, a_matrix, b_matrix, score_matrix)
    n_rows, n_votes = a_matrix.shape
    if n_rows <= _SCALAR_MAX_ROWS:
        return np.stack([_elo_scalar(n_items, a_matrix[p], b_matrix[p], score_matrix[p], k,
                                     scale, base, init) for p in range(n_rows)]
                        ) if n_rows else np.empty((0, n_items))

    def fill(t0: int, t1: int, ia: np.ndarray, ib: np.ndarray, sc: np.ndarray) -> None:
        np.copyto(ia, a_matrix[:, t0:t1].T)
        np.copyto(ib, b_matrix[:, t0:t1].T)
        np.copyto(sc, score_matrix[:, t0:t1].T)

    return _elo_vectorized(n_items, fill, n_rows, n_votes, k, scale, base, init)


def _ranks(ratings: np.ndarray) -> np.ndarray:
    """Competition ranks, 1 = best (equal ratings share the best rank)."""
    return rankdata(-ratings, method="min", axis=-1).astype(np.int64)


def elo_order_sensitivity(
    n_items: int,
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    *,
    k: float = 4.0,
    n_permutations: int = 100,
    seed: int | np.random.Generator | None = 0,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """How much online Elo depends on the vote order: the votes are rated in
    ``n_permutations`` uniformly random orders (all advanced together by
    :func:`online_elo_many`'s engine) and in the given order.

    Returns a dict of numpy arrays:

    - ``ratings`` ``[P, n]`` -- final ratings per permutation; ``original`` ``[n]`` -- in the
      given order;
    - ``mean``, ``median``, ``std`` (ddof 0), ``spread`` (max - min over permutations) ``[n]``;
    - ``ranks`` ``[P, n]`` and ``original_ranks`` ``[n]`` -- competition ranks (1 = best);
    - ``mean_abs_rank_change`` ``[n]`` -- mean over permutations of ``|rank - original rank|``,
      ``max_abs_rank_change`` ``[n]``, ``rank_min`` / ``rank_max`` ``[n]``;
    - ``mean_rank_change`` -- ``mean_abs_rank_change`` averaged over the models (float).

    Memory: each vote is packed into one integer (``score index | a | b`` bit fields) and the
    packed votes themselves are shuffled, so no gather is needed afterwards; a batch of
    permutations takes ``4 * batch * V`` bytes (int32; 8 bytes if the fields need more than 31
    bits: over 16384 models or many distinct scores). ``batch_size`` default: all permutations
    while that is at most 512 MB (e.g. 100 permutations of a million votes in one pass; each
    further batch costs another pass over the votes).
    """
    a = np.asarray(a, dtype=np.intp).ravel()
    b = np.asarray(b, dtype=np.intp).ravel()
    score = np.asarray(score, dtype=float).ravel()
    _check_votes(n_items, a, b, score)
    if n_permutations < 1:
        raise ValueError("n_permutations must be >= 1")
    rng = np.random.default_rng(seed)
    n_votes = len(a)
    levels, level_of = np.unique(score, return_inverse=True)
    bits = max(1, (n_items - 1).bit_length())
    total_bits = 2 * bits + max(1, (len(levels) - 1).bit_length())
    if total_bits > 63:
        raise ValueError("too many models / distinct scores to pack a vote into 64 bits")
    dtype = np.int32 if total_bits <= 31 else np.int64
    mask = (1 << bits) - 1
    packed = ((level_of.astype(np.int64) << (2 * bits)) | (a << bits) | b).astype(dtype)
    if batch_size is None:
        itemsize = np.dtype(dtype).itemsize
        batch_size = max(1, min(n_permutations, (1 << 29) // (itemsize * max(n_votes, 1))))
    original = _elo_scalar(n_items, a, b, score, k, scale, base, init)
    parts = []
    for start in range(0, n_permutations, batch_size):
        rows = min(batch_size, n_permutations - start)
        perms = np.tile(packed, (rows, 1))
        rng.permuted(perms, axis=1, out=perms)
        if rows <= _SCALAR_MAX_ROWS:
            parts.append(np.stack([
                _elo_scalar(n_items, (p >> bits) & mask, p & mask, levels[p >> (2 * bits)], k,
                            scale, base, init) for p in perms.astype(np.intp)]))
            continue

        block_buf = np.empty((_CHUNK, rows), dtype=dtype)
        work = np.empty((_CHUNK, rows), dtype=dtype)

        def fill(t0: int, t1: int, ia: np.ndarray, ib: np.ndarray, sc: np.ndarray,
                 perms: np.ndarray = perms, block_buf: np.ndarray = block_buf,
                 work: np.ndarray = work) -> None:
            block, tmp = block_buf[: t1 - t0], work[: t1 - t0]
            np.copyto(block, perms[:, t0:t1].T)  # vote-major
            np.bitwise_and(block, mask, out=ib)
            np.right_shift(block, bits, out=tmp)
            np.bitwise_and(tmp, mask, out=ia)
            np.right_shift(block, 2 * bits, out=tmp)
            np.take(levels, tmp, out=sc, mode="clip")  # valid indices; "clip" skips a copy

        parts.append(_elo_vectorized(n_items, fill, rows, n_votes, k, scale, base, init))
    ratings = np.concatenate(parts, axis=0)
    ranks = _ranks(ratings)
    original_ranks = _ranks(original)
    change = np.abs(ranks - original_ranks[None, :])
    return {
        "ratings": ratings,
        "original": original,
        "mean": ratings.mean(axis=0),
        "median": np.median(ratings, axis=0),
        "std": ratings.std(axis=0),
        "spread": ratings.max(axis=0) - ratings.min(axis=0),
        "ranks": ranks,
        "original_ranks": original_ranks,
        "rank_min": ranks.min(axis=0),
        "rank_max": ranks.max(axis=0),
        "mean_abs_rank_change": change.mean(axis=0),
        "max_abs_rank_change": change.max(axis=0),
        "mean_rank_change": float(change.mean()),
    }
