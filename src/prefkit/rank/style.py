"""Style-controlled Bradley-Terry (Chatbot Arena's style control, a contextual BT).

``P(a beats b) = sigmoid(theta_a - theta_b + x^T gamma)`` where ``x`` holds per-vote style
covariates. For a style count (length, headers, lists, bold) with values ``c_a`` and ``c_b``,
the covariate is ``(c_a - c_b) / (c_a + c_b + 1)``, z-scored over votes
(:func:`style_covariates`). Ties are soft labels ``y = 0.5`` (as FastChat). The published rating
is ``theta`` alone: the style effects ``gamma`` are "regressed out".

Fitted by Newton's method on the vote rows (covariates are continuous, so votes cannot be
merged); each step is a handful of vectorized passes (``bincount`` scatters for the rating
block, ``X^T diag(h) X`` for the style block). ``alpha`` is an L2 penalty on ratings and style
coefficients alike (FastChat uses 0.5 on both).
The bootstrap reweights the vote rows with multinomial counts and warm-starts every round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit


@dataclass
class StyleResult:
    params: np.ndarray
    """Centred ratings (natural-log units) with the style effects removed."""
    style_coef: np.ndarray
    """``gamma``: effect of one standard deviation of each covariate, in logits."""
    n_iter: int
    converged: bool
    log_likelihood: float


def style_covariates(counts_a: np.ndarray, counts_b: np.ndarray) -> tuple[np.ndarray,
                                                                         np.ndarray,
                                                                         np.ndarray]:
    """``[N, d]`` counts of each side -> z-scored ``(a - b) / (a + b + 1)`` plus the mean and
    standard deviation used (to apply the same scaling elsewhere)."""
    a = np.asarray(counts_a, dtype=float)
    b = np.asarray(counts_b, dtype=float)
    raw = (a - b) / (a + b + 1.0)
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (raw - mean) / std, mean, std


def _loglik(theta, gamma, a, b, x, y, w, alpha):
    z = theta[a] - theta[b] + x @ gamma
    # y log s(z) + (1 - y) log s(-z) = y z - log(1 + e^z)
    loglik = float(np.sum(w * (y * z - np.logaddexp(0.0, z))))
    return loglik - 0.5 * alpha * (float(theta @ theta) + float(gamma @ gamma)), z


def _derivatives(theta, gamma, z, a, b, x, y, w, n, alpha):
    """Gradient and information (negative Hessian) of the penalized log-likelihood."""
    p = expit(z)
    r = w * (y - p)
    g_theta = np.bincount(a, r, n) - np.bincount(b, r, n) - alpha * theta
    g_gamma = x.T @ r - alpha * gamma
    h = w * p * (1 - p)
    pair = np.bincount(a * n + b, h, n * n).reshape(n, n)
    info_tt = -(pair + pair.T)
    info_tt[np.arange(n), np.arange(n)] = pair.sum(axis=1) + pair.sum(axis=0) + alpha
    hx = h[:, None] * x
    d = x.shape[1]
    info_tg = np.empty((n, d))
    for k in range(d):
        info_tg[:, k] = np.bincount(a, hx[:, k], n) - np.bincount(b, hx[:, k], n)
    info_gg = x.T @ hx + alpha * np.eye(d)
    info = np.block([[info_tt, info_tg], [info_tg.T, info_gg]])
    return np.concatenate([g_theta, g_gamma]), info


def fit_bt_style(
    n_items: int, a: np.ndarray, b: np.ndarray, y: np.ndarray, x: np.ndarray, *,
    weights: np.ndarray | None = None, alpha: float = 0.5, max_iter: int = 50,
    tol: float = 1e-8, initial: tuple[np.ndarray, np.ndarray] | None = None,
) -> StyleResult:
    """Contextual BT MLE (see the module docstring). ``y`` is 1 when ``a`` won, 0 when ``b``
    won, 0.5 for a tie; ``x`` is ``[N, d]`` covariates (from :func:`style_covariates`)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float).reshape(len(a), -1)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=float)
    n, d = n_items, x.shape[1]
    theta, gamma = ((np.zeros(n), np.zeros(d)) if initial is None
                    else (np.array(initial[0], float), np.array(initial[1], float)))
    ll, z = _loglik(theta, gamma, a, b, x, y, w, alpha)
    grad, info = _derivatives(theta, gamma, z, a, b, x, y, w, n, alpha)
    converged, n_iter = False, 0
    for n_iter in range(1, max_iter + 1):
        if np.max(np.abs(grad)) < tol * max(1.0, w.sum() / 1e4):
            converged, n_iter = True, n_iter - 1
            break
        if alpha == 0:
            info[:n, :n] += 1.0 / n  # pin the free direction (all ratings + constant)
        step = np.linalg.solve(info, grad)
        t = 1.0
        while True:  # backtracking on the likelihood alone; derivatives only once accepted
            new_ll, new_z = _loglik(theta + t * step[:n], gamma + t * step[n:], a, b, x, y, w,
                                    alpha)
            if new_ll >= ll - 1e-12 * abs(ll) or t < 1e-8:
                break
            t *= 0.5
        theta, gamma, ll = theta + t * step[:n], gamma + t * step[n:], new_ll
        grad, info = _derivatives(theta, gamma, new_z, a, b, x, y, w, n, alpha)
    return StyleResult(theta - theta.mean(), gamma, n_iter, converged, ll)


def bootstrap_bt_style(
    n_items: int, a, b, y, x, *, rounds: int = 100, alpha: float = 0.5, seed: int = 0,
    initial: StyleResult | None = None,
) -> np.ndarray:
    """``[rounds, n_items]`` ratings from multinomially reweighted vote rows."""
    rng = np.random.default_rng(seed)
    if initial is None:
        initial = fit_bt_style(n_items, a, b, y, x, alpha=alpha)
    n_rows = len(a)
    out = np.empty((rounds, n_items))
    start = (initial.params, initial.style_coef)
    for r in range(rounds):
        # multinomial(N, uniform) counts, drawn as a bincount of N uniform row picks
        w = np.bincount(rng.integers(0, n_rows, n_rows), minlength=n_rows).astype(float)
        out[r] = fit_bt_style(n_items, a, b, y, x, weights=w, alpha=alpha, initial=start,
                              max_iter=20, tol=1e-6).params
    return out
