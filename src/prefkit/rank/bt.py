"""Bradley-Terry maximum likelihood on aggregated pairwise counts (Newton's method).

Model (Bradley & Terry 1952): item i has log-strength theta_i and
``P(i beats j) = sigmoid(theta_i - theta_j)``. Ties, two ways:

- ``ties="half"`` -- a tie counts as half a win for each side (FastChat / Chatbot Arena);
  log-likelihood per pair ``(w_ij + t/2) log s(d) + (w_ji + t/2) log s(-d)``, ``d = theta_i -
  theta_j``;
- ``ties="davidson"`` -- Davidson (1970): with ``nu = exp(lambda)`` fitted too,
  ``P(i) = pi_i / Z``, ``P(j) = pi_j / Z``, ``P(tie) = nu sqrt(pi_i pi_j) / Z``,
  ``Z = pi_i + pi_j + nu sqrt(pi_i pi_j)``. Dividing by ``sqrt(pi_i pi_j)`` with ``u = d / 2``:
  ``P(i) = e^u / Z'``, ``P(tie) = nu / Z'``, ``Z' = e^u + e^-u + nu``.

``alpha`` adds the L2 prior ``-alpha/2 ||theta||^2`` (a Gaussian prior of variance 1/alpha;
choix's ``alpha`` penalizes ``alpha ||theta||^2``, so choix's ``alpha`` is half of ours); it
makes the estimate finite when a model never lost or never won. Without it the MLE exists only
when the directed graph "i beat or tied j" is strongly connected (Ford 1957,
:func:`mle_exists`). Parameters are
returned centred (mean 0). Each Newton step costs ``O(pairs + n^2)`` after aggregation, so a
fit on a million votes among 100 models takes milliseconds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._math import expit
from .aggregate import PairCounts
from .graph import strongly_connected

LN10 = np.log(10.0)


@dataclass
class BTResult:
    params: np.ndarray
    """Centred log-strengths (natural-log units)."""
    n_iter: int
    converged: bool
    log_likelihood: float
    tie_param: float | None = None
    """Davidson's ``nu`` (None for half ties)."""
    hessian: np.ndarray | None = None
    """Negative Hessian of the log-posterior at the optimum (Fisher information), ``[n, n]``
    (``[n+1, n+1]`` with Davidson's ``log nu`` last)."""

    def covariance(self) -> np.ndarray:
        """Laplace covariance of the centred parameters ``P theta`` (``P = I - 1 1^T / n``):
        ``P [I^-1]_theta P`` with ``I`` the information of the log-posterior (the prior
        ``alpha`` included; Davidson's ``log nu`` marginalized out, not held fixed).

        The all-ones direction is an eigenvector of ``I`` (the likelihood depends on rating
        differences only, so ``I 1 = alpha 1``), so adding ``1 1^T / n`` to the rating block
        makes ``I`` invertible without a prior and leaves every centred direction unchanged;
        ``P`` then drops the all-ones direction. Without a prior this is the pseudo-inverse
        of the information; with one, the covariance of the centred parameters under it."""
        if self.hessian is None:
            raise ValueError("no Hessian stored")
        n = len(self.params)
        info = self.hessian.copy()
        info[:n, :n] += 1.0 / n
        centre = np.eye(n) - 1.0 / n
        return centre @ np.linalg.inv(info)[:n, :n] @ centre


def _half_terms(theta: np.ndarray, c: PairCounts):
    """Log-likelihood, gradient and information (negative Hessian) for half ties."""
    n = c.n_items
    half = 0.5 * c.ties
    win_i = c.wins_i + half
    total = c.totals
    d = theta[c.i] - theta[c.j]
    p = expit(d)
    loglik = float(np.sum(win_i * _log_sigmoid(d) + (total - win_i) * _log_sigmoid(-d)))
    g_pair = win_i - total * p
    grad = np.bincount(c.i, g_pair, n) - np.bincount(c.j, g_pair, n)
    h_pair = total * p * (1 - p)
    info = pair_information(n, c.i, c.j, h_pair)
    return loglik, grad, info


def pair_information(n: int, i: np.ndarray, j: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The ``[n, n]`` information matrix of pair comparisons with weights ``h``: every pair
    ``(i, j)`` adds ``h`` to both diagonal entries and ``-h`` to both off-diagonal ones
    (a weighted graph Laplacian; for Bradley-Terry ``h = total * p * (1 - p)``)."""
    info = np.zeros((n, n))
    diag = np.bincount(i, h, n) + np.bincount(j, h, n)
    info[i, j] -= h
    info[j, i] -= h
    info[np.arange(n), np.arange(n)] += diag
    return info


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _davidson_terms(theta: np.ndarray, lam: float, c: PairCounts):
    """Log-likelihood, gradient and information over (theta, lambda = log nu)."""
    n = c.n_items
    u = 0.5 * (theta[c.i] - theta[c.j])
    nu = np.exp(lam)
    # log Z' = log(e^u + e^-u + nu), stably
    m_abs = np.abs(u)
    log_z = m_abs + np.log1p(np.exp(-2 * m_abs) + nu * np.exp(-m_abs))
    total = c.totals
    loglik = float(np.sum(c.wins_i * (u - log_z) + c.wins_j * (-u - log_z)
                          + c.ties * (lam - log_z)))
    e_pos, e_neg = np.exp(u - log_z), np.exp(-u - log_z)
    q = nu * np.exp(-log_z)  # P(tie)
    m = e_pos - e_neg  # d log Z / du
    v = e_pos + e_neg - m * m  # d2 log Z / du2
    g_u = c.wins_i - c.wins_j - total * m
    g_theta = 0.5 * (np.bincount(c.i, g_u, n) - np.bincount(c.j, g_u, n))
    g_lam = float(np.sum(c.ties - total * q))
    info = np.zeros((n + 1, n + 1))
    info[:n, :n] = pair_information(n, c.i, c.j, 0.25 * total * v)
    h_ul = -total * m * q  # d2 log Z / du dlam, times total (information sign)
    cross = 0.5 * (np.bincount(c.i, h_ul, n) - np.bincount(c.j, h_ul, n))
    info[:n, n] = info[n, :n] = cross
    info[n, n] = float(np.sum(total * (q - q * q)))
    return loglik, np.append(g_theta, g_lam), info


def fit_bradley_terry(
    counts: PairCounts,
    *,
    ties: str = "half",
    alpha: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-10,
    initial_params: np.ndarray | None = None,
    initial_tie_param: float | None = None,
) -> BTResult:
    """Bradley-Terry MLE (MAP with ``alpha > 0``) by damped Newton steps; see the module
    docstring. ``tol`` is on the largest absolute gradient entry. Warns (and returns
    ``converged=False``) when the likelihood keeps growing without bound (a model that never
    lost or never won with ``alpha=0``): pass ``alpha > 0``."""
    if ties not in ("half", "davidson"):
        raise ValueError(f"ties must be 'half' or 'davidson', got {ties!r}")
    n = counts.n_items
    theta = np.zeros(n) if initial_params is None else np.array(initial_params, dtype=float)
    davidson = ties == "davidson"
    tie_share = counts.ties.sum() / max(counts.n_votes, 1e-300)
    lam = (np.log(max(tie_share, 1e-6) / max(1 - tie_share, 1e-6) * 2)
           if initial_tie_param is None else np.log(initial_tie_param))

    def objective(th, lm):
        ll, grad, info = (_davidson_terms(th, lm, counts) if davidson
                          else _half_terms(th, counts))
        if alpha:
            ll -= 0.5 * alpha * float(th @ th)
            grad = grad.copy()
            grad[:n] -= alpha * th
            info = info.copy()
            info[np.arange(n), np.arange(n)] += alpha
        return ll, grad, info

    finite = alpha > 0 or mle_exists(counts)
    ll, grad, info = objective(theta, lam)
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        if np.max(np.abs(grad)) < tol:
            converged = True
            n_iter -= 1
            break
        step = _newton_step(info, grad, n, gauge=alpha == 0)
        t = 1.0
        while True:  # backtracking: never accept a step that lowers the likelihood
            new_theta = theta + t * step[:n]
            new_lam = lam + t * step[n] if davidson else lam
            new_ll, new_grad, new_info = objective(new_theta, new_lam)
            if new_ll >= ll - 1e-12 * abs(ll) or t < 1e-8:
                break
            t *= 0.5
        theta, lam, ll, grad, info = new_theta, new_lam, new_ll, new_grad, new_info
    else:
        converged = np.max(np.abs(grad)) < tol
    if not finite:
        converged = False
        warnings.warn("the Bradley-Terry MLE is infinite (a model, or a group of models, never "
                      "lost or never won against the rest); pass alpha > 0 for a finite "
                      "estimate", RuntimeWarning, stacklevel=2)
    theta = theta - theta.mean()
    return BTResult(theta, n_iter, bool(converged), ll, float(np.exp(lam)) if davidson else None,
                    info)


def mle_exists(counts: PairCounts, members: np.ndarray | None = None) -> bool:
    """Ford's (1957) condition: the MLE is finite iff the directed graph with an edge i -> j
    when i beat or tied j is strongly connected (within ``members``, default all models that
    have votes)."""
    n = counts.n_items
    beat = counts.wins_i + counts.ties > 0
    lost = counts.wins_j + counts.ties > 0
    rows = np.concatenate([counts.i[beat], counts.j[lost]])
    cols = np.concatenate([counts.j[beat], counts.i[lost]])
    if members is None:
        members = np.union1d(counts.i[counts.totals > 0], counts.j[counts.totals > 0])
    return strongly_connected(n, rows, cols, members)


def _newton_step(info: np.ndarray, grad: np.ndarray, n: int, gauge: bool) -> np.ndarray:
    """Solve ``info @ step = grad``; without a prior the direction ``1`` is free (adding a
    constant to every theta changes nothing), so it is pinned by ``+ 1 1^T / n``."""
    if gauge:
        info = info.copy()
        info[:n, :n] += 1.0 / n
    try:
        return np.linalg.solve(info, grad)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(info, grad, rcond=None)[0]


def bt_probabilities(params: np.ndarray, tie_param: float | None = None) -> np.ndarray:
    """Predicted win-rate matrix ``P[i, j] = P(i beats j)`` (with Davidson ties, half of the
    tie probability is added to each side, so ``P + P.T = 1``)."""
    d = params[:, None] - params[None, :]
    if tie_param is None:
        return expit(d)
    u = 0.5 * d
    z = np.exp(u) + np.exp(-u) + tie_param
    return (np.exp(u) + 0.5 * tie_param) / z


def to_elo(params: np.ndarray, *, scale: float = 400.0, base: float = 10.0,
           init: float = 1000.0, anchor: tuple[int, float] | None = None) -> np.ndarray:
    """Natural-log strengths -> the Elo scale: ``init + scale / ln(base) * theta`` (400 / ln 10
    points per logit), shifted so that the mean is ``init``, or so that model ``anchor[0]``
    has rating ``anchor[1]``."""
    ratings = init + scale / np.log(base) * (params - np.mean(params))
    if anchor is not None:
        index, value = anchor
        ratings = ratings + (value - ratings[index])
    return ratings
