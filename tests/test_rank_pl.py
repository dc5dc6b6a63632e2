"""Plackett-Luce: hand-computed likelihood with ties and partial rankings, parity with choix,
K = 2 equals Bradley-Terry, recovery, weights, both solvers, non-identifiable data."""

import functools
import math
import warnings

import choix
import numpy as np
import pytest
from scipy.stats import spearmanr

from prefkit.rank.plackett_luce import (
    PLResult,
    fit_plackett_luce,
    generate_rankings,
    pl_log_likelihood,
)


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_log_likelihood_by_hand_with_ties_and_partial_rankings():
    t = np.array([0.3, -0.2, 0.5, 0.0])
    rankings = [
        [[0], [1, 2], [3]],  # 0 first, 1 and 2 tied, then 3
        [2, 0],  # partial: only 2 > 0 (bare ints are single-item tiers)
        [[1, 3]],  # a two-way tie, nothing else
        [[3], [0, 1]],  # a tie at the bottom
        [[2]],  # one item: no information
    ]
    expected = [
        t[0] - lse(*t) + t[1] + t[2] - 2 * lse(t[1], t[2], t[3]),
        t[2] - lse(t[2], t[0]),
        t[1] + t[3] - 2 * lse(t[1], t[3]),
        t[3] - lse(t[3], t[0], t[1]) + t[0] + t[1] - 2 * lse(t[0], t[1]),
        0.0,
    ]
    assert pl_log_likelihood(t, rankings) == pytest.approx(sum(expected), rel=1e-12)
    w = [1.0, 2.0, 0.5, 0.0, 3.0]
    assert pl_log_likelihood(t, rankings, w) == pytest.approx(
        sum(wi * e for wi, e in zip(w, expected, strict=True)), rel=1e-12)
    fit = fit_plackett_luce(4, rankings, alpha=0.5)
    assert fit.log_likelihood == pytest.approx(pl_log_likelihood(fit.params, rankings), rel=1e-12)


def test_input_formats_agree():
    rng = np.random.default_rng(0)
    arr = generate_rankings(rng.normal(size=6), 200, 3, rng)
    as_ints = arr.tolist()
    as_tiers = [[[x] for x in r] for r in as_ints]
    ragged = [[r[0], [r[1]], r[2]] for r in as_ints]
    fits = [fit_plackett_luce(6, data).params for data in (arr, as_ints, as_tiers, ragged)]
    fits.append(fit_plackett_luce(6, iter(as_tiers)).params)
    for p in fits[1:]:
        assert np.allclose(p, fits[0], atol=1e-12)


@functools.cache
def choix_reference(alpha):
    rng = np.random.default_rng(1)
    n = 6
    data = generate_rankings(rng.normal(size=n), 150, 4, rng)
    # choix penalizes alpha_c ||theta||^2; we penalize alpha/2 ||theta||^2
    ref = choix.opt_rankings(n, data.tolist(), alpha=alpha / 2, method="Newton-CG", tol=1e-10)
    return data, ref - ref.mean()


@pytest.mark.parametrize("alpha", [0.0, 0.02])
@pytest.mark.parametrize("method", ["newton", "mm"])
def test_parity_with_choix_opt_rankings(alpha, method):
    data, ref = choix_reference(alpha)
    fit = fit_plackett_luce(len(ref), data, alpha=alpha, method=method, tol=1e-10)
    assert isinstance(fit, PLResult)
    assert fit.converged
    assert abs(fit.params.mean()) < 1e-12
    assert np.max(np.abs(fit.params - ref)) < 1e-6


def test_solvers_agree_and_information_is_the_hessian():
    rng = np.random.default_rng(2)
    n = 6
    data = generate_rankings(rng.normal(size=n), 150, 3, rng)
    ties = [[[int(r[0]), int(r[1])], int(r[2])] for r in data[:40]]
    rankings = [[[int(x)] for x in r] for r in data] + ties
    for alpha in (0.0, 0.3):
        newton = fit_plackett_luce(n, rankings, alpha=alpha)
        mm = fit_plackett_luce(n, rankings, alpha=alpha, method="mm", tol=1e-12)
        assert newton.converged and mm.converged
        assert np.max(np.abs(newton.params - mm.params)) < 1e-8
        assert newton.log_likelihood == pytest.approx(mm.log_likelihood, abs=1e-8)
    # the stored information is minus the Hessian of log-likelihood - alpha/2 ||theta||^2
    alpha = 0.3
    fit = fit_plackett_luce(n, rankings, alpha=alpha)

    def post(th):
        return pl_log_likelihood(th, rankings) - 0.5 * alpha * th @ th

    h = 1e-4
    num = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ei, ej = np.eye(n)[i] * h, np.eye(n)[j] * h
            th = fit.params
            num[i, j] = -(post(th + ei + ej) - post(th + ei - ej) - post(th - ei + ej)
                          + post(th - ei - ej)) / (4 * h * h)
    assert np.allclose(fit.hessian, num, atol=1e-4)


def test_pairs_are_bradley_terry():
    rng = np.random.default_rng(3)
    n = 7
    data = generate_rankings(rng.normal(size=n), 400, 2, rng)
    alpha = 0.1
    ref = choix.opt_pairwise(n, data.tolist(), alpha=alpha / 2, method="Newton-CG", tol=1e-10)
    fit = fit_plackett_luce(n, data, alpha=alpha)
    assert np.max(np.abs(fit.params - (ref - ref.mean()))) < 1e-6


def test_weights_equal_repetition():
    rng = np.random.default_rng(4)
    n = 5
    base = [[[int(r[0])], [int(r[1]), int(r[2])], [int(r[3])]]
            for r in generate_rankings(rng.normal(size=n), 60, 4, rng)]
    reps = rng.integers(0, 4, len(base))
    repeated = [r for r, k in zip(base, reps, strict=True) for _ in range(k)]
    for method in ("newton", "mm"):
        a = fit_plackett_luce(n, base, weights=reps.astype(float), alpha=0.1, method=method,
                              tol=1e-11)
        b = fit_plackett_luce(n, repeated, alpha=0.1, method=method, tol=1e-11)
        assert np.allclose(a.params, b.params, atol=1e-8)
        assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-10)


def test_recovers_true_parameters():
    rng = np.random.default_rng(5)
    n = 20
    truth = rng.normal(size=n)
    data = generate_rankings(truth, 20_000, 4, rng)
    fit = fit_plackett_luce(n, data)
    assert fit.converged
    assert spearmanr(fit.params, truth).statistic >= 0.98
    assert np.max(np.abs(fit.params - (truth - truth.mean()))) < 0.15


def test_non_identifiable_warns_and_alpha_fixes_it():
    # model 3 is always last: its MLE is -infinity
    rankings = [[0, 1, 3], [1, 0, 3], [2, 0, 3], [1, 2], [2, 1, 3], [0, 2]]
    with pytest.warns(RuntimeWarning, match="infinite"):
        fit = fit_plackett_luce(4, rankings, max_iter=30)
    assert not fit.converged
    assert fit.params[3] < fit.params[:3].min() - 5
    with pytest.warns(RuntimeWarning, match="infinite"):
        fit = fit_plackett_luce(4, rankings, method="mm", max_iter=200)
    assert not fit.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("newton", "mm"):
            fit = fit_plackett_luce(4, rankings, alpha=0.5, method=method)
            assert fit.converged and np.all(np.isfinite(fit.params))
            assert np.argmin(fit.params) == 3


def test_absent_items_and_empty_input():
    fit = fit_plackett_luce(5, [[0, 1], [1, 0], [0, 1]])
    assert fit.converged
    assert list(fit.params[2:]) == [0.0, 0.0, 0.0]
    assert fit.params[0] - fit.params[1] == pytest.approx(math.log(2), abs=1e-9)
    empty = fit_plackett_luce(3, [])
    assert empty.converged and list(empty.params) == [0.0, 0.0, 0.0]


def test_invalid_input():
    with pytest.raises(ValueError, match="twice"):
        fit_plackett_luce(3, [[[0], [1, 0]]])
    with pytest.raises(ValueError, match="item ids"):
        fit_plackett_luce(3, [[0, 3]])
    with pytest.raises(ValueError, match="weights"):
        fit_plackett_luce(3, [[0, 1]], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="method"):
        fit_plackett_luce(3, [[0, 1]], method="lsr")
    with pytest.raises(TypeError):
        fit_plackett_luce(3, [[0.5, 1]])


def test_generate_rankings_follows_plackett_luce():
    rng = np.random.default_rng(6)
    params = np.array([1.0, 0.0, -1.0])
    r = generate_rankings(params, 40_000, 3, rng)
    assert r.shape == (40_000, 3)
    assert np.all(np.sort(r, axis=1) == np.arange(3))
    p = np.exp(params) / np.exp(params).sum()
    first = np.bincount(r[:, 0], minlength=3) / len(r)
    assert np.allclose(first, p, atol=0.01)
    # second place given 0 first: e^0 / (e^0 + e^-1)
    second = np.mean(r[r[:, 0] == 0, 1] == 1)
    assert second == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)
    # subsets are uniform; noise = 1 gives uniformly random orders
    sub = generate_rankings(np.zeros(10), 20_000, 2, rng)
    assert np.all(sub[:, 0] != sub[:, 1])
    assert np.allclose(np.bincount(sub.ravel(), minlength=10) / sub.size, 0.1, atol=0.01)
    noisy = generate_rankings(np.array([5.0, 0.0, -5.0]), 20_000, 3, rng, noise=1.0)
    assert np.mean(noisy[:, 0] == 0) == pytest.approx(1 / 3, abs=0.015)
