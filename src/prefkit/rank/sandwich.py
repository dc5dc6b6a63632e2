"""Robust ("sandwich") covariance of Bradley-Terry ratings and normal-approximation intervals.

For an M-estimator ``sum_k s_k(theta) = 0`` (Huber 1967, White 1980) the covariance is
``A^-1 B A^-1`` with ``A`` the negative Hessian of the objective and ``B`` the covariance of the
per-vote scores ``s_k``; unlike the Laplace (Fisher) covariance ``A^-1`` it stays right when the
model is misspecified (e.g. ties that are not half a win each). LMArena's ``arena-rank`` reports
these intervals (``ci_method="sandwich"``), Chatbot Arena's since July 2025.

On aggregated counts, with ties as half wins, pair ``(i, j)``, ``p = sigmoid(theta_i -
theta_j)``: a vote has score ``+-(1 - p)`` (i won), ``+-(-p)`` (j won) or ``+-(1/2 - p)`` (tie)
on ``(theta_i, theta_j)``, so::

    A = L(n_ij p (1 - p)) + alpha I
    B = L(w_i (1 - p)^2 + w_j p^2 + t (1/2 - p)^2) - G G^T / N,   G = alpha theta

where ``L(h)`` is the graph Laplacian with pair weights ``h`` and ``G G^T / N`` centres the
scores under a prior (their mean is ``G / N`` at the optimum; 0 without a prior). The all-ones
direction is free and absent from the scores; the covariance returned is that of the centred
ratings. arena-rank adds ``hessian_reg = 1e-5`` times the number of votes to ``A``'s diagonal
for numerical stability: ``ridge=1e-5`` reproduces its intervals bit for bit; with the default
0 the free direction is projected out exactly (the ridge narrows the intervals of models with
few votes).
"""

from __future__ import annotations

import numpy as np

from ._math import expit, normal_quantile
from .aggregate import PairCounts
from .bt import pair_information


def bt_sandwich_covariance(counts: PairCounts, params: np.ndarray, *, alpha: float = 0.0,
                           ridge: float = 0.0) -> np.ndarray:
    """``[n, n]`` sandwich covariance of the centred half-tie BT ratings ``params`` (natural-log
    units) fitted with prior ``alpha`` (see the module docstring)."""
    n = counts.n_items
    p = expit(params[counts.i] - params[counts.j])
    hess = pair_information(n, counts.i, counts.j, counts.totals * p * (1 - p))
    meat = pair_information(n, counts.i, counts.j, counts.wins_i * (1 - p) ** 2
                             + counts.wins_j * p**2 + counts.ties * (0.5 - p) ** 2)
    n_votes = max(counts.n_votes, 1.0)
    g = alpha * params
    meat -= np.outer(g, g) / n_votes
    hess[np.diag_indices(n)] += alpha + ridge * n_votes
    hess += 1.0 / n  # the all-ones direction: free, and absent from the scores
    bread = np.linalg.inv(hess)
    centre = np.eye(n) - 1.0 / n
    return centre @ bread @ meat @ bread @ centre


def normal_intervals(params: np.ndarray, covariance: np.ndarray, level: float = 0.95, *,
                     anchor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``params -+ z sd`` with ``z`` the normal quantile of ``(1 + level) / 2`` (1.96 for
    95%) and ``sd`` the square roots of the covariance's diagonal; with ``anchor``, ``sd`` is
    that of ``params_i - params_anchor`` (ratings reported relative to an anchored model)."""
    if anchor is not None:
        shift = np.eye(len(params))
        shift[:, anchor] -= 1.0
        covariance = shift @ covariance @ shift.T
    z = normal_quantile(0.5 + level / 2)
    sd = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return params - z * sd, params + z * sd
