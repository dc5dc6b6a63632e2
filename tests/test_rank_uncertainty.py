"""Uncertainty of Bradley-Terry ratings: the Laplace covariance of the centred parameters (with and
without a prior), checked against an independent finite-difference Hessian of the vote-level
log-posterior."""

import numpy as np
import pytest
from scipy.special import expit, log_expit

from prefkit.rank import aggregate_pairwise, fit_bradley_terry


def _votes(n=5, n_votes=400, seed=0, tie_rate=0.15):
    rng = np.random.default_rng(seed)
    s = np.linspace(-1, 1, n)
    a = rng.integers(0, n, n_votes)
    b = (a + rng.integers(1, n, n_votes)) % n
    win = rng.random(n_votes) < expit(s[a] - s[b])
    o = np.where(rng.random(n_votes) < tie_rate, 2, np.where(win, 0, 1))
    return a, b, o


def _neg_log_posterior(a, b, o, alpha, ties):
    """Vote by vote, written from the model's definition (not from prefkit's code)."""
    n = int(max(a.max(), b.max())) + 1

    def f(v):
        theta = v[:n]
        if ties == "half":
            y = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))
            d = theta[a] - theta[b]
            ll = np.sum(y * log_expit(d) + (1 - y) * log_expit(-d))
        else:  # Davidson: P(a) = e^u / Z, P(b) = e^-u / Z, P(tie) = nu / Z, u = d / 2
            u, nu = 0.5 * (theta[a] - theta[b]), np.exp(v[n])
            log_z = np.log(np.exp(u) + np.exp(-u) + nu)
            ll = np.sum(np.where(o == 0, u, np.where(o == 1, -u, np.log(nu))) - log_z)
        return -ll + 0.5 * alpha * theta @ theta

    return f


def _fd_hessian(f, x, h=1e-4):
    k = len(x)
    hess = np.empty((k, k))
    eye = np.eye(k) * h
    for i in range(k):
        for j in range(k):
            hess[i, j] = (f(x + eye[i] + eye[j]) - f(x + eye[i] - eye[j])
                          - f(x - eye[i] + eye[j]) + f(x - eye[i] - eye[j])) / (4 * h * h)
    return hess


def _reference_covariance(hess, n):
    """Covariance of the centred ratings: invert the Hessian on the subspace where the
    posterior is proper (ratings orthogonal to the all-ones direction when there is no
    prior), then project onto centred ratings."""
    k = hess.shape[0]
    centre = np.eye(n) - 1.0 / n
    # orthonormal basis of {sum(theta) = 0} (x the tie parameter, if any)
    basis_theta = np.linalg.svd(centre)[0][:, : n - 1]
    basis = np.zeros((k, k - 1))
    basis[:n, : n - 1] = basis_theta
    if k > n:
        basis[n:, n - 1:] = np.eye(k - n)
    cov = basis @ np.linalg.inv(basis.T @ hess @ basis) @ basis.T
    return cov[:n, :n]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("ties", ["half", "davidson"])
def test_covariance_is_the_centred_laplace_covariance(alpha, ties):
    a, b, o = _votes()
    n = 5
    fit = fit_bradley_terry(aggregate_pairwise(a, b, o, n), ties=ties, alpha=alpha)
    point = fit.params if ties == "half" else np.append(fit.params, np.log(fit.tie_param))
    f = _neg_log_posterior(a, b, o, alpha, ties)
    hess = _fd_hessian(f, point)
    if alpha > 0:  # the posterior is proper in every direction: invert, then centre
        centre = np.eye(n) - 1.0 / n
        expected = centre @ np.linalg.inv(hess)[:n, :n] @ centre
        assert np.allclose(expected, _reference_covariance(hess, n), atol=1e-6)
    else:
        expected = _reference_covariance(hess, n)
    cov = fit.covariance()
    assert np.allclose(cov, expected, rtol=1e-4, atol=1e-7)
    eigenvalues = np.linalg.eigvalsh(cov)
    assert eigenvalues[0] == pytest.approx(0.0, abs=1e-10)  # the all-ones direction
    assert np.all(eigenvalues[1:] > 0)
    assert np.allclose(cov @ np.ones(n), 0.0, atol=1e-10)
