"""TrueSkill (Herbrich, Minka & Graepel 2007): Bayesian online skill ratings from K-way
free-for-all matches with draws, each model its own one-member team.

Model. Skill ``s_i ~ N(mu_i, sigma_i^2 + tau^2)`` (the prior widened by the dynamics ``tau``
before every match it plays), performance ``p_i ~ N(s_i, beta^2)``. The players sorted by rank
(0 = best) give adjacent differences ``d_r = p_(r) - p_(r+1)``; the observation is ``d_r >
eps`` (a win) or ``|d_r| <= eps`` (equal ranks: a draw), with the draw margin::

    eps = Phi^{-1}((draw_probability + 1) / 2) * sqrt(2) * beta

(two players per comparison), so that two equal players draw with probability
``draw_probability``.

Inference: expectation propagation on the factor graph (Herbrich et al. 2007, Fig. 1). Each
truncation factor replaces the Gaussian cavity ``N(m, 1/c)`` of ``d_r`` by the moments of
its truncation; with ``t = m sqrt(c)`` and ``e = eps sqrt(c)``::

    win:  v = phi(t - e) / Phi(t - e),       w = v (v + t - e)
    draw: a = e - |t|, b = -e - |t|,
          v = sign(t) (phi(b) - phi(a)) / (Phi(a) - Phi(b)),
          w = v^2 + (a phi(a) - b phi(b)) / (Phi(a) - Phi(b))

    new precision c / (1 - w), new precision-mean (m c + sqrt(c) v) / (1 - w)

With more than two players the chain of differences is loopy in effect (each performance
touches two differences); the messages are swept forward and backward along the chain until
the largest change of a difference marginal (``max(|delta(precision-mean)|,
sqrt(|delta(precision)|))``) is at most ``min_delta``, at most ``max_iter`` sweeps, then sent
back up to the skills. This is exactly the schedule of the ``trueskill`` package
(``TrueSkill.rate``: ``min_delta = 1e-4``, 10 sweeps), so with the same settings the results
agree with it to rounding (~1e-14 relative, measured) when it uses exact normal functions
(``backend="scipy"``); its default backend approximates ``erfc`` (relative error ~1e-7), which
shows as relative differences up to ~1e-6. Smaller ``min_delta`` and more sweeps go to the EP fixed
point. The ``v``/``w`` functions here are evaluated stably (``erfcx``) where the package raises
``FloatingPointError`` (a huge upset).

Defaults are TrueSkill's: ``mu0 = 25``, ``sigma0 = 25/3``, ``beta = 25/6``, ``tau = 25/300``,
``draw_probability = 0.10``. Each update is a few dozen float operations in Python (the
sequential updates cannot be vectorized across matches): ~25 us per 2-player match, ~100 us
per 4-player match (several sweeps) in :func:`rate_many`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, ndtri

__all__ = [
    "BETA",
    "DRAW_PROBABILITY",
    "MU",
    "SIGMA",
    "TAU",
    "SkillState",
    "conservative_score",
    "draw_margin",
    "initial_state",
    "rate",
    "rate_many",
]

MU = 25.0
SIGMA = MU / 3
BETA = SIGMA / 2
TAU = SIGMA / 100
DRAW_PROBABILITY = 0.10

_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_W_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class SkillState:
    """Gaussian skill beliefs ``N(mu_i, sigma_i^2)`` of every model (arrays ``[n_items]``)."""

    mu: np.ndarray
    sigma: np.ndarray


def initial_state(n_items: int, mu0: float = MU, sigma0: float = SIGMA) -> SkillState:
    """Every model at the prior ``N(mu0, sigma0^2)``."""
    return SkillState(np.full(n_items, float(mu0)), np.full(n_items, float(sigma0)))


def conservative_score(state: SkillState, k: float = 3.0) -> np.ndarray:
    """``mu - k sigma`` (TrueSkill's leaderboard score: a lower confidence bound)."""
    return np.asarray(state.mu) - k * np.asarray(state.sigma)


def draw_margin(draw_probability: float, beta: float = BETA) -> float:
    """``eps = Phi^{-1}((p + 1) / 2) sqrt(2) beta`` (two players per comparison)."""
    if not 0.0 <= draw_probability < 1.0:
        raise ValueError("draw_probability must be in [0, 1)")
    return float(ndtri((draw_probability + 1.0) / 2.0)) * _SQRT2 * beta


# --------------------------------------------------------------------------- v, w


def _phi(x: float) -> float:
    return _INV_SQRT2PI * math.exp(-0.5 * x * x)


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / _SQRT2)


def _vw_win(t: float, e: float) -> tuple[float, float]:
    x = t - e
    v = _SQRT_2_OVER_PI / float(erfcx(-x / _SQRT2))  # phi(x) / Phi(x), stably
    w = v * (v + x)
    return v, min(max(w, _W_EPS), 1.0 - _W_EPS)


def _vw_draw(t: float, e: float) -> tuple[float, float]:
    if e <= 0.0:
        raise ValueError("a draw needs draw_probability > 0 (the draw margin is zero)")
    abs_t = abs(t)
    a, b = e - abs_t, -e - abs_t
    if a >= 0.0:
        denom = _cdf(a) - _cdf(b)
        v = (_phi(b) - _phi(a)) / denom
        w_rest = (a * _phi(a) - b * _phi(b)) / denom
    else:  # both tails: scale by exp(a^2 / 2); exp(-(b^2 - a^2) / 2) = exp(-2 e |t|)
        r = math.exp(-2.0 * e * abs_t)
        denom = 0.5 * (float(erfcx(-a / _SQRT2)) - float(erfcx(-b / _SQRT2)) * r)
        v = (r - 1.0) * _INV_SQRT2PI / denom
        w_rest = (a - b * r) * _INV_SQRT2PI / denom
    w = v * v + w_rest
    if t < 0:
        v = -v
    return v, min(max(w, _W_EPS), 1.0 - _W_EPS)


# --------------------------------------------------------------------------- one match


def _mean(pi: float, tau: float) -> float:
    return tau / pi if pi else 0.0


def _sum_message(mu: float, pi_a: float, pi_b: float) -> tuple[float, float]:
    """Natural parameters of a sum factor's message: mean ``mu``, variance ``1/pi_a +
    1/pi_b`` (an improper input gives the improper message)."""
    if pi_a == 0.0 or pi_b == 0.0:
        return 0.0, 0.0
    pi = 1.0 / (1.0 / pi_a + 1.0 / pi_b)
    return pi, pi * mu


def _rate_sorted(mu: list[float], var: list[float], draws: list[bool], beta: float,
                 eps: float, min_delta: float, max_iter: int) -> tuple[list[float], list[float]]:
    """EP on the chain for players already sorted best first; ``var`` includes ``tau^2``.
    Returns the posterior means and variances."""
    m = len(mu)
    n_diff = m - 1
    beta2 = beta * beta
    # team-performance priors (the perf likelihood folded in), natural parameters
    p_pi = [1.0 / (v + beta2) for v in var]
    p_tau = [mu_i * pi for mu_i, pi in zip(mu, p_pi, strict=True)]
    left_pi = [0.0] * n_diff  # diff factor x -> performance x
    left_tau = [0.0] * n_diff
    right_pi = [0.0] * n_diff  # diff factor x -> performance x + 1
    right_tau = [0.0] * n_diff
    dd_pi = [0.0] * n_diff  # diff factor x -> difference x
    dd_tau = [0.0] * n_diff
    tr_pi = [0.0] * n_diff  # truncation factor x -> difference x
    tr_tau = [0.0] * n_diff
    vw = [_vw_draw if d else _vw_win for d in draws]

    def cavity_upper(x: int) -> tuple[float, float]:
        """Performance x without diff factor x's message."""
        if x == 0:
            return p_pi[0], p_tau[0]
        return p_pi[x] + right_pi[x - 1], p_tau[x] + right_tau[x - 1]

    def cavity_lower(x: int) -> tuple[float, float]:
        """Performance x + 1 without diff factor x's message."""
        if x + 1 == n_diff:
            return p_pi[x + 1], p_tau[x + 1]
        return p_pi[x + 1] + left_pi[x + 1], p_tau[x + 1] + left_tau[x + 1]

    def down(x: int) -> None:
        ua, ut = cavity_upper(x)
        la, lt = cavity_lower(x)
        dd_pi[x], dd_tau[x] = _sum_message(_mean(ua, ut) - _mean(la, lt), ua, la)

    def truncate(x: int) -> float:
        c_pi, c_tau = dd_pi[x], dd_tau[x]  # cavity of the difference = the diff message
        old_pi, old_tau = c_pi + tr_pi[x], c_tau + tr_tau[x]
        sqrt_pi = math.sqrt(c_pi)
        v, w = vw[x](c_tau / sqrt_pi, eps * sqrt_pi)
        new_pi = c_pi / (1.0 - w)
        new_tau = (c_tau + sqrt_pi * v) / (1.0 - w)
        tr_pi[x], tr_tau[x] = new_pi - c_pi, new_tau - c_tau
        return max(abs(new_tau - old_tau), math.sqrt(abs(new_pi - old_pi)))

    def up_lower(x: int) -> None:  # to performance x + 1
        ua, ut = cavity_upper(x)
        right_pi[x], right_tau[x] = _sum_message(_mean(ua, ut) - _mean(tr_pi[x], tr_tau[x]),
                                                 ua, tr_pi[x])

    def up_upper(x: int) -> None:  # to performance x
        la, lt = cavity_lower(x)
        left_pi[x], left_tau[x] = _sum_message(_mean(tr_pi[x], tr_tau[x]) + _mean(la, lt),
                                               tr_pi[x], la)

    for _ in range(max_iter):
        if n_diff == 1:
            down(0)
            delta = truncate(0)
        else:
            delta = 0.0
            for x in range(n_diff - 1):
                down(x)
                delta = max(delta, truncate(x))
                up_lower(x)
            for x in range(n_diff - 1, 0, -1):
                down(x)
                delta = max(delta, truncate(x))
                up_upper(x)
        if delta <= min_delta:
            break
    up_upper(0)
    up_lower(n_diff - 1)
    out_mu, out_var = [], []
    for i in range(m):
        c_pi = (left_pi[i] if i < n_diff else 0.0) + (right_pi[i - 1] if i > 0 else 0.0)
        c_tau = (left_tau[i] if i < n_diff else 0.0) + (right_tau[i - 1] if i > 0 else 0.0)
        a = 1.0 / (1.0 + beta2 * c_pi)  # through the performance likelihood N(p; s, beta^2)
        pi = 1.0 / var[i] + a * c_pi
        tau = mu[i] / var[i] + a * c_tau
        out_mu.append(tau / pi)
        out_var.append(1.0 / pi)
    return out_mu, out_var


def rate(
    state: SkillState,
    items: Sequence[int] | np.ndarray,
    ranks: Sequence[int] | np.ndarray,
    *,
    beta: float = BETA,
    tau: float = TAU,
    draw_probability: float = DRAW_PROBABILITY,
    min_delta: float = 1e-4,
    max_iter: int = 10,
) -> SkillState:
    """One free-for-all match: ``items`` (distinct model ids, at least two) finished with
    ``ranks`` (0 = best; equal ranks = a draw between them). Returns a new state; only the
    players' entries change (by the EP update of the module docstring; ``min_delta`` /
    ``max_iter`` are the sweep-stopping rule, the ``trueskill`` package's by default)."""
    mu_out = np.array(state.mu, dtype=float)
    sigma_out = np.array(state.sigma, dtype=float)
    _rate_into(mu_out, sigma_out, items, ranks, beta, tau, draw_probability, min_delta,
               max_iter)
    return SkillState(mu_out, sigma_out)


def _rate_into(mu_all: np.ndarray, sigma_all: np.ndarray, items, ranks, beta: float,
               tau: float, draw_probability: float, min_delta: float, max_iter: int) -> None:
    """:func:`rate` in place on the arrays."""
    items = [int(i) for i in np.asarray(items).ravel()]
    ranks_l = [float(r) for r in np.asarray(ranks).ravel()]
    n = len(mu_all)
    if len(items) != len(ranks_l):
        raise ValueError(f"{len(items)} items but {len(ranks_l)} ranks")
    if len(items) < 2:
        raise ValueError("a match needs at least two models")
    if len(set(items)) != len(items):
        raise ValueError("a model appears twice in the same match")
    if min(items) < 0 or max(items) >= n:
        raise ValueError(f"item ids must be in [0, {n})")
    if min_delta <= 0:
        raise ValueError("min_delta must be > 0")
    order = sorted(range(len(items)), key=ranks_l.__getitem__)  # stable, like trueskill
    ids = [items[o] for o in order]
    sorted_ranks = [ranks_l[o] for o in order]
    draws = [sorted_ranks[x] == sorted_ranks[x + 1] for x in range(len(ids) - 1)]
    eps = draw_margin(draw_probability, beta)
    tau2 = tau * tau
    mu = [float(mu_all[i]) for i in ids]
    var = [float(sigma_all[i]) ** 2 + tau2 for i in ids]
    new_mu, new_var = _rate_sorted(mu, var, draws, beta, eps, min_delta, max_iter)
    for i, m_i, v_i in zip(ids, new_mu, new_var, strict=True):
        mu_all[i] = m_i
        sigma_all[i] = math.sqrt(v_i)


def rate_many(
    state: SkillState,
    matches: Iterable[tuple[Sequence[int], Sequence[int]]],
    *,
    beta: float = BETA,
    tau: float = TAU,
    draw_probability: float = DRAW_PROBABILITY,
    min_delta: float = 1e-4,
    max_iter: int = 10,
) -> SkillState:
    """:func:`rate` over ``(items, ranks)`` matches in order (online: each match updates the
    state the next one starts from)."""
    mu = np.array(state.mu, dtype=float)
    sigma = np.array(state.sigma, dtype=float)
    for items, ranks in matches:
        _rate_into(mu, sigma, items, ranks, beta, tau, draw_probability, min_delta, max_iter)
    return SkillState(mu, sigma)
