"""Plackett-Luce maximum likelihood (MAP with ``alpha > 0``) for full or partial rankings with
ties.

Model (Luce 1959; Plackett 1975): item ``i`` has log-strength ``theta_i``. A ranking is built
best first; at each stage the next item is chosen from the items not yet placed with
probability ``exp(theta_j) / sum_{l in S} exp(theta_l)``. A ranking of items ``x_1 > ... >
x_K`` thus has log-likelihood::

    sum_{r=1}^{K-1} [ theta_{x_r} - log sum_{l >= r} exp(theta_{x_l}) ]

Data format. A ranking is a list of tiers, best first; a tier is a list of item ids (or a bare
int for a single item); several ids in one tier are tied. Items a ranking does not list are
simply not in it (a *partial* ranking = a ranking of a subset; there is no "the rest are worse"
top-k semantics). Example: ``[[3], [0, 5], [2]]`` -- 3 first, 0 and 5 tied second, 2 last.
A 2-D int array ``[N, K]`` (each row a tie-free ranking, best first; what
:func:`generate_rankings` returns) and a regular 3-D array ``[N, tiers, tier size]`` are
accepted too, and parsed without a Python loop.

Ties (Breslow 1974, as for tied event times in the Cox model): each member of a tied tier is
chosen against the same set -- the tier itself plus every tier below it. With tiers ``T_1 >
... > T_m`` and ``R_t = T_t u ... u T_m``::

    log L = sum_t [ sum_{j in T_t} theta_j - |T_t| log sum_{l in R_t} exp(theta_l) ]

so a two-item tie ``[[i, j]]`` contributes ``log s(d) + log s(-d)`` (``d = theta_i -
theta_j``, ``s`` the logistic function): one win each, twice the weight of the "half a win
each" of :func:`prefkit.rank.fit_bradley_terry` (``ties="half"``). A stage whose choice set
has one item (the last item of a ranking) has probability one and is dropped. Without ties and
with ``K = 2`` the model is Bradley-Terry. ``weights`` multiply each ranking's log-likelihood
(a weight of 2 is the same as listing the ranking twice).

Prior. ``alpha`` adds ``-alpha/2 ||theta||^2`` (a Gaussian prior of variance ``1/alpha``) for
both solvers -- the convention of :func:`prefkit.rank.fit_bradley_terry`. choix's
``opt_rankings(alpha=a)`` penalizes ``a ||theta||^2``, so its ``a`` is ``alpha / 2`` here.
(choix's ``mm_rankings`` / ``ilsr_rankings`` use other priors; no parity there for
``alpha > 0``.) The maximizer of the penalized likelihood has mean zero, so the returned
(centred) parameters are exactly the MAP.

Solvers:

- ``"newton"`` (default): damped Newton on ``theta`` with the dense ``n x n`` Hessian (``n`` is
  the number of models, small); the Hessian is accumulated as a sparse product ``P^T P`` over
  choice sets, so an iteration costs ``O(sum_s |S_s|^2 + n^3)``. Identical choice sets are
  merged first (pairs, or equal sets of K), so repeated match-ups cost nothing extra.
- ``"mm"``: Hunter's (2004) minorization-maximization. The likelihood is minorized by the
  separable surrogate ``sum_i W_i theta_i - D_i exp(theta_i)`` (``W_i`` = weighted number of
  times ``i`` was chosen, ``D_i = sum_{s: i in S_s} a_s / sum_{l in S_s} exp(theta_l)``, ``a_s``
  the weighted number of choices made from set ``s``); with ``alpha = 0`` the update is
  ``exp(theta_i) = W_i / D_i`` (then re-centred), with ``alpha > 0`` each coordinate solves
  ``W_i - D_i exp(theta_i) - alpha theta_i = 0`` (a few vectorized Newton steps, started right
  of the root so they converge monotonically), so both solvers maximize the same objective and
  every MM step increases it. Linear convergence; ``tol`` bounds the change per iteration, not
  the error.

Existence (Hunter 2004, Assumption 1, after Ford 1957): with ``alpha = 0`` the MLE is finite
iff the directed graph "``i`` was ranked above or tied with ``j`` in some ranking" is strongly
connected over the items that appear. Otherwise a warning is issued and the fit returns
``converged=False`` (parameters drifting towards infinity); pass ``alpha > 0``. Items that
appear in no choice set keep ``theta = 0`` (before centring). :func:`fit_plackett_luce` raises
``ValueError`` only if the iteration produces non-finite values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["PLResult", "fit_plackett_luce", "generate_rankings", "pl_log_likelihood"]


@dataclass
class PLResult:
    params: np.ndarray
    """Centred log-strengths (natural-log units, mean 0)."""
    n_iter: int
    converged: bool
    log_likelihood: float
    """Weighted log-likelihood of the rankings at ``params`` (without the prior term)."""
    hessian: np.ndarray | None = None
    """Negative Hessian of the log-posterior at ``params`` (observed information plus
    ``alpha I``), ``[n, n]``."""


@dataclass
class _Data:
    """Rankings flattened into choice sets: ``wins[i]`` = weighted number of stages that chose
    ``i``; ``groups`` = one ``(sets [m, k], a [m])`` per choice-set size ``k`` (each row a
    distinct set of items, ``a`` = weighted number of choices made from it)."""

    n_items: int
    wins: np.ndarray
    groups: list[tuple[np.ndarray, np.ndarray]]
    present: np.ndarray
    edges: tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------- parsing


def _flatten_input(rankings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (items in reading order, tier sizes, number of tiers per ranking)."""
    arr = None
    if not isinstance(rankings, (np.ndarray, Sequence)):
        rankings = list(rankings)
    if isinstance(rankings, np.ndarray):
        arr = rankings
    elif len(rankings) and not isinstance(rankings[0], (int, np.integer)):
        try:
            arr = np.asarray(rankings)
        except (ValueError, TypeError):
            arr = None
    if arr is not None and arr.ndim in (2, 3) and arr.dtype.kind in "iu" and arr.size:
        if arr.ndim == 2:
            arr = arr[:, :, None]
        n_rank, n_tier, size = arr.shape
        return (arr.reshape(-1).astype(np.int64), np.full(n_rank * n_tier, size, np.int64),
                np.full(n_rank, n_tier, np.int64))
    items: list = []
    tier_len: list[int] = []
    n_tiers: list[int] = []
    integer = (int, np.integer)
    for ranking in rankings:
        t = 0
        if isinstance(ranking, integer):
            raise TypeError("each ranking must be a sequence of tiers (lists of item ids)")
        for tier in ranking:
            if isinstance(tier, integer):
                items.append(tier)
                tier_len.append(1)
                t += 1
            else:
                m = len(tier)
                if m:
                    items.extend(tier)
                    tier_len.append(m)
                    t += 1
        n_tiers.append(t)
    flat = np.asarray(items) if items else np.zeros(0, np.int64)
    if flat.size and flat.dtype.kind not in "iu":
        raise TypeError("item ids must be integers")
    return (flat.astype(np.int64), np.asarray(tier_len, np.int64),
            np.asarray(n_tiers, np.int64))


def _dedupe(sets: np.ndarray, a: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge identical choice sets (rows, as sets), summing their weights."""
    m, k = sets.shape
    if m < 2:
        return sets, a
    rows = np.sort(sets, axis=1)
    if k * math.log2(max(n, 2)) < 62:
        key = np.zeros(m, np.int64)
        for col in range(k):
            key = key * n + rows[:, col]
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        out = rows[first]
    else:
        out, inverse = np.unique(rows, axis=0, return_inverse=True)
        uniq = out
    if len(uniq) == m:
        return sets, a
    return out, np.bincount(inverse.ravel(), a, len(uniq))


def _prepare(n_items: int, rankings, weights) -> _Data:
    flat, tier_len, n_tiers = _flatten_input(rankings)
    n_rank = len(n_tiers)
    if weights is None:
        w = np.ones(n_rank)
    else:
        w = np.asarray(weights, dtype=float).ravel()
        if len(w) != n_rank:
            raise ValueError(f"got {len(w)} weights for {n_rank} rankings")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite and non-negative")
    if flat.size and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"item ids must be in [0, {n_items}), got [{flat.min()}, {flat.max()}]")
    rank_len = np.bincount(np.repeat(np.arange(n_rank), n_tiers), tier_len, n_rank)
    rank_len = rank_len.astype(np.int64)
    entry_rank = np.repeat(np.arange(n_rank), rank_len)
    key = np.sort(entry_rank * n_items + flat)
    if np.any(key[1:] == key[:-1]):
        raise ValueError("an item is listed twice in the same ranking")
    tier_start = np.concatenate([[0], np.cumsum(tier_len)[:-1]]).astype(np.int64)
    tier_rank = np.repeat(np.arange(n_rank), n_tiers)
    rank_end = np.cumsum(rank_len)
    set_size = rank_end[tier_rank] - tier_start
    keep = (set_size >= 2) & (w[tier_rank] > 0)
    # wins: every member of a kept tier is chosen once (weighted)
    entry_tier = np.repeat(np.arange(len(tier_len)), tier_len)
    entry_keep = keep[entry_tier]
    wins = np.bincount(flat[entry_keep], w[entry_rank[entry_keep]], n_items)
    groups = []
    a_all = w[tier_rank] * tier_len
    for k in np.flatnonzero(np.bincount(set_size[keep])):
        sel = keep & (set_size == k)
        sets = flat[tier_start[sel][:, None] + np.arange(k)]
        groups.append(_dedupe(sets, a_all[sel], n_items))
    present = np.zeros(n_items, dtype=bool)
    for sets, _ in groups:
        present[sets.ravel()] = True
    # "ranked above or tied with" graph: consecutive entries of a ranking (tier order reaches
    # everything below), plus a cycle inside each tied tier
    pos_rank = w[entry_rank] > 0
    nxt = (entry_rank[:-1] == entry_rank[1:]) & pos_rank[:-1]
    src = [flat[:-1][nxt]]
    dst = [flat[1:][nxt]]
    tied = (tier_len >= 2) & (w[tier_rank] > 0)
    src.append(flat[(tier_start + tier_len - 1)[tied]])
    dst.append(flat[tier_start[tied]])
    return _Data(n_items, wins, groups, present, (np.concatenate(src), np.concatenate(dst)))


def _mle_exists(data: _Data) -> bool:
    members = np.flatnonzero(data.present)
    if len(members) < 2:
        return True
    n = data.n_items
    src, dst = data.edges
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)).tocsr()
    sub = graph[members][:, members]
    return connected_components(sub, directed=True, connection="strong")[0] == 1


# --------------------------------------------------------------------------- likelihood


def _set_probs(theta: np.ndarray, sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of ``theta`` within each set ``[m, k]`` and the log normalizers ``[m]``."""
    z = theta[sets]
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    tot = e.sum(axis=1, keepdims=True)
    return e / tot, zmax[:, 0] + np.log(tot[:, 0])


def _loglik(theta: np.ndarray, data: _Data) -> float:
    ll = float(data.wins @ theta)
    for sets, a in data.groups:
        ll -= float(a @ _set_probs(theta, sets)[1])
    return ll


def _derivatives(theta: np.ndarray, data: _Data) -> tuple[float, np.ndarray, np.ndarray]:
    """Log-likelihood, gradient and observed information (negative Hessian, dense)."""
    n = data.n_items
    ll = float(data.wins @ theta)
    grad = data.wins.astype(float)
    info = np.zeros((n, n))
    for sets, a in data.groups:
        p, lse = _set_probs(theta, sets)
        ll -= float(a @ lse)
        ap = a[:, None] * p
        col_mass = np.bincount(sets.ravel(), ap.ravel(), n)
        grad -= col_mass
        info[np.arange(n), np.arange(n)] += col_mass
        m, k = sets.shape
        q = csr_matrix(((np.sqrt(a)[:, None] * p).ravel(), sets.ravel(),
                        np.arange(0, m * k + 1, k)), shape=(m, n))
        info -= (q.T @ q).toarray()
    return ll, grad, info


# --------------------------------------------------------------------------- solvers


def _newton(data: _Data, theta: np.ndarray, alpha: float, max_iter: int, tol: float):
    act = np.flatnonzero(data.present)
    n_act = len(act)

    def objective(th):
        return _loglik(th, data) - 0.5 * alpha * float(th @ th)

    def derivs(th):
        ll, grad, info = _derivatives(th, data)
        if alpha:
            grad = grad - alpha * th
            info[np.arange(len(th)), np.arange(len(th))] += alpha
        return ll, ll - 0.5 * alpha * float(th @ th), grad, info

    ll, f, grad, info = derivs(theta)
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        h = info[np.ix_(act, act)]
        if alpha == 0:
            h = h + 1.0 / n_act
        g = grad[act]
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(h, g, rcond=None)[0]
        n_iter += 1
        small = np.max(np.abs(step)) < tol
        new = theta.copy()
        new[act] += step
        ll_new, new_f, new_grad, new_info = derivs(new)
        t = 1.0
        while not (small or new_f >= f - 1e-12 * abs(f) or t < 1e-8):
            # backtracking: never accept a step that lowers the objective
            t *= 0.5
            new = theta.copy()
            new[act] += t * step
            new_f = objective(new)
            if new_f >= f - 1e-12 * abs(f) or t < 1e-8:
                ll_new, new_f, new_grad, new_info = derivs(new)
                break
        if not np.all(np.isfinite(new)) or not math.isfinite(new_f):
            raise ValueError("Plackett-Luce Newton iteration diverged (non-finite values); "
                             "pass alpha > 0")
        theta, ll, f, grad, info = new, ll_new, new_f, new_grad, new_info
        if small:
            converged = True
            break
    return theta, n_iter, converged, ll, info


def _mm(data: _Data, theta: np.ndarray, alpha: float, max_iter: int, tol: float):
    n = data.n_items
    act = data.present
    wins = data.wins
    converged = False
    n_iter = 0
    theta = theta.copy()
    if alpha == 0:
        theta[act] -= theta[act].mean()
    while n_iter < max_iter:
        gamma = np.exp(theta - theta[act].max())  # scale-free for the ratios below
        shift = theta[act].max()
        denom = np.zeros(n)
        for sets, a in data.groups:
            per_set = a / gamma[sets].sum(axis=1)
            denom += np.bincount(sets.ravel(), np.repeat(per_set, sets.shape[1]), n)
        # surrogate in theta: W_i theta_i - D_i exp(theta_i) with D_i = denom_i / exp(shift)
        d = denom * np.exp(-shift)
        new = theta.copy()
        if alpha == 0:
            new[act] = np.log(np.maximum(wins[act], 1e-300)) - np.log(d[act])
        else:
            new[act] = _solve_coordinates(wins[act], d[act], alpha)
        # the exact maximizer along theta + c 1 (the likelihood is flat there, the prior is
        # maximal at mean 0): without it MM crawls along that direction when alpha > 0
        new[act] -= new[act].mean()
        n_iter += 1
        if not np.all(np.isfinite(new)):
            raise ValueError("Plackett-Luce MM iteration diverged (non-finite values); "
                             "pass alpha > 0")
        change = np.max(np.abs((new - new.mean()) - (theta - theta.mean())))
        theta = new
        if change < tol:
            converged = True
            break
    return theta, n_iter, converged, None, None


def _solve_coordinates(w: np.ndarray, d: np.ndarray, alpha: float) -> np.ndarray:
    """Root of ``g(x) = w - d exp(x) - alpha x`` per coordinate (``d > 0``). ``g`` is concave
    and decreasing, so Newton started right of the root decreases monotonically to it; ``x0 =
    max(0, min(w / alpha, log(w / d)))`` is right of the root."""
    with np.errstate(divide="ignore"):
        x = np.maximum(0.0, np.minimum(w / alpha, np.log(w) - np.log(d)))
    for _ in range(100):
        ex = np.exp(x)
        step = (w - d * ex - alpha * x) / (d * ex + alpha)
        x = x + step
        if np.max(np.abs(step)) < 1e-13 * max(1.0, float(np.max(np.abs(x)))):
            break
    return x


def fit_plackett_luce(
    n_items: int,
    rankings: Sequence[Sequence[Sequence[int] | int]] | np.ndarray,
    *,
    weights: Sequence[float] | np.ndarray | None = None,
    alpha: float = 0.0,
    method: str = "newton",
    max_iter: int | None = None,
    tol: float = 1e-8,
    initial_params: np.ndarray | None = None,
) -> PLResult:
    """Plackett-Luce MLE (MAP with ``alpha > 0``) of ``n_items`` log-strengths from rankings
    (lists of tiers, best first; see the module docstring for the format, the tie model, the
    prior and the solvers).

    ``method``: ``"newton"`` (default, ``max_iter`` 100) or ``"mm"`` (Hunter 2004,
    ``max_iter`` 10000). ``tol``: on the largest absolute change of a parameter per iteration
    (Newton: the full Newton step). Warns and returns ``converged=False`` when the MLE is
    infinite (``alpha = 0`` and the "ranked above" graph not strongly connected) or the
    iteration limit is hit. Returns centred parameters (mean 0).
    """
    if method not in ("newton", "mm"):
        raise ValueError(f"method must be 'newton' or 'mm', got {method!r}")
    if alpha < 0:
        raise ValueError("alpha must be >= 0")
    if max_iter is None:
        max_iter = 100 if method == "newton" else 10000
    data = _prepare(n_items, rankings, weights)
    theta = (np.zeros(n_items) if initial_params is None
             else np.array(initial_params, dtype=float).ravel())
    if theta.shape != (n_items,):
        raise ValueError(f"initial_params must have length {n_items}")
    theta[~data.present] = 0.0
    if not data.present.any():
        return PLResult(np.zeros(n_items), 0, True, 0.0, alpha * np.eye(n_items))
    finite = alpha > 0 or _mle_exists(data)
    if not finite:
        warnings.warn("the Plackett-Luce MLE is infinite (a model, or a group of models, was "
                      "never ranked above, or never below, the rest); pass alpha > 0 for a "
                      "finite estimate", RuntimeWarning, stacklevel=2)
    solver = _newton if method == "newton" else _mm
    with np.errstate(over="ignore", under="ignore"):
        theta, n_iter, converged, ll, info = solver(data, theta, alpha, max_iter, tol)
    if finite and not converged:
        warnings.warn(f"Plackett-Luce {method} did not converge in {max_iter} iterations",
                      RuntimeWarning, stacklevel=2)
    act = data.present
    shift = theta[act].mean()
    theta[act] -= shift
    theta[~act] = 0.0
    if info is None or alpha and abs(shift) > 1e-9:
        # (the Newton information already includes alpha I and is shift-invariant otherwise)
        ll, _, info = _derivatives(theta, data)
        if alpha:
            info[np.arange(n_items), np.arange(n_items)] += alpha
    return PLResult(theta, int(n_iter), bool(converged and finite), ll, info)


def pl_log_likelihood(
    params: np.ndarray,
    rankings: Sequence[Sequence[Sequence[int] | int]] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Weighted Plackett-Luce log-likelihood (Breslow ties) of ``rankings`` at ``params``."""
    params = np.asarray(params, dtype=float).ravel()
    return _loglik(params, _prepare(len(params), rankings, weights))


def generate_rankings(
    params: np.ndarray,
    n_rankings: int,
    k: int,
    rng: np.random.Generator | int | None = None,
    noise: float = 0.0,
) -> np.ndarray:
    """Simulate ``n_rankings`` Plackett-Luce rankings of ``k`` items: each ranking draws ``k``
    distinct items uniformly and orders them by Gumbel-max (sorting ``params_i + G_i``, ``G_i``
    standard Gumbel, is an exact PL sample); with probability ``noise`` a ranking's order is
    replaced by a uniformly random one. Returns ``[n_rankings, k]`` int64, best first (a valid
    ``rankings`` argument of :func:`fit_plackett_luce`)."""
    params = np.asarray(params, dtype=float).ravel()
    n = len(params)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    rng = np.random.default_rng(rng)
    out = np.empty((n_rankings, k), dtype=np.int64)
    chunk = max(1, (1 << 22) // n)
    for start in range(0, n_rankings, chunk):
        m = min(chunk, n_rankings - start)
        keys = rng.random((m, n))
        items = (np.argpartition(keys, k - 1, axis=1)[:, :k] if k < n
                 else np.argsort(keys, axis=1))
        perf = params[items] + rng.gumbel(size=(m, k))
        order = np.argsort(-perf, axis=1)
        ranked = np.take_along_axis(items, order, axis=1)
        if noise > 0:
            shuffle = rng.random(m) < noise
            if shuffle.any():
                ranked[shuffle] = rng.permuted(ranked[shuffle], axis=1)
        out[start:start + m] = ranked
    return out
