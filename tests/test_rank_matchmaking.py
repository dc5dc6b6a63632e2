"""Matchmaking: random, K-Sort-style UCB, expected information gain."""

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm

from prefkit.rank import PairCounts
from prefkit.rank.bt import fit_bradley_terry
from prefkit.rank.matchmaking import (
    STRATEGIES,
    information_gain_match,
    match_from_counts,
    pairwise_information_gain,
    random_match,
    ucb_match,
)


def _valid(items, n, k):
    items = np.asarray(items)
    return (len(items) == k and len(set(items.tolist())) == k and items.min() >= 0
            and items.max() < n and items.dtype.kind == "i")


@pytest.mark.parametrize("k", [2, 3, 4, 7])
def test_every_strategy_returns_k_distinct_valid_items(k):
    rng = np.random.default_rng(0)
    n = 7
    for _ in range(20):
        mu = rng.normal(size=n)
        a = rng.normal(size=(n, n))
        cov = a @ a.T / n + 0.1 * np.eye(n)
        counts = rng.integers(0, 5, (n, n)).astype(float)
        counts = counts + counts.T
        assert _valid(random_match(n, k, rng), n, k)
        assert _valid(ucb_match(mu, None, counts, k, rng, t=30), n, k)
        assert _valid(ucb_match(mu, np.sqrt(np.diag(cov)), counts, k, rng, t=30), n, k)
        assert _valid(information_gain_match(mu, cov, k, rng), n, k)
        assert _valid(information_gain_match(mu, cov, k, rng, candidates=16), n, k)
    with pytest.raises(ValueError):
        random_match(3, 4, rng)
    with pytest.raises(ValueError):
        information_gain_match(np.zeros(3), np.eye(3), 1, rng)


def test_random_match_is_uniform():
    rng = np.random.default_rng(1)
    hits = np.zeros(5)
    for _ in range(2000):
        hits[random_match(5, 2, rng)] += 1
    assert np.all(np.abs(hits / 4000 - 0.2) < 0.03)


def test_ucb_pivot_is_the_least_compared_item():
    rng = np.random.default_rng(2)
    n = 6
    counts = np.full((n, n), 5.0)
    np.fill_diagonal(counts, 0.0)
    counts[3, :] = counts[:, 3] = 1.0
    counts[3, 3] = 0.0
    mu = np.linspace(0, 10, n)
    for _ in range(10):
        assert ucb_match(mu, None, counts, 3, rng, t=50)[0] == 3
    # ties for the fewest comparisons: the largest sigma wins, then uniform
    counts = np.zeros((n, n))
    sigma = np.array([1.0, 2.0, 5.0, 1.0, 5.0, 1.0])
    pivots = {int(ucb_match(mu, sigma, counts, 2, rng, t=1)[0]) for _ in range(40)}
    assert pivots == {2, 4}
    pivots = {int(ucb_match(mu, None, counts, 2, rng, t=1)[0]) for _ in range(200)}
    assert pivots == set(range(n))


def test_ucb_opponents_follow_the_documented_score():
    rng = np.random.default_rng(3)
    n = 8
    mu = np.array([25.0, 27.0, 20.0, 24.0, 30.0, 25.5, 10.0, 26.0])
    counts = rng.integers(1, 6, (n, n)).astype(float)
    counts = counts + counts.T
    counts[0, :] = counts[:, 0] = 1.0  # item 0 is the pivot
    counts[0, 6] = counts[6, 0] = 0.0
    t, c, scale = 40, 1.5, 2.0
    for pseudo in (1.0, 0.5):
        picked = ucb_match(mu, None, counts, 4, rng, t=t, c=c, scale=scale, pseudo_count=pseudo)
        assert picked[0] == np.argmin(counts.sum(1) - np.diag(counts))
        score = -np.abs(mu - mu[picked[0]]) / scale + c * np.sqrt(
            2 * np.log(t) / (pseudo + counts[picked[0]]))
        score[picked[0]] = -np.inf
        top = np.sort(score)[::-1]
        assert np.allclose(score[picked[1:]], top[:3])  # best first (3 and 7 tie here)
    # K-Sort's default pseudo-count 1e-5: the never-met (but far) item 6 comes first
    assert ucb_match(mu, None, counts, 2, rng, t=t, scale=scale).tolist() == [0, 6]
    assert 6 not in ucb_match(mu, None, counts, 4, rng, t=t, c=0.0, scale=scale)


def test_information_gain_closed_form_three_items():
    mu = np.array([0.3, -0.2, 1.1])
    cov = np.array([[0.50, 0.10, 0.05],
                    [0.10, 0.40, -0.02],
                    [0.05, -0.02, 0.90]])
    g_plain = pairwise_information_gain(mu, cov, order_weight=False)
    g_order = pairwise_information_gain(mu, cov, order_weight=True)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        p = expit(mu[i] - mu[j])
        v = cov[i, i] + cov[j, j] - 2 * cov[i, j]
        expected = 0.5 * np.log(1 + p * (1 - p) * v)
        assert g_plain[i, j] == pytest.approx(expected, rel=1e-12)
        assert g_plain[j, i] == pytest.approx(expected, rel=1e-12)
        wrong = norm.cdf(-abs(mu[i] - mu[j]) / np.sqrt(v))
        assert g_order[i, j] == pytest.approx(expected * wrong, rel=1e-12)
    assert np.all(np.isneginf(np.diag(g_plain)))
    # the gain is the entropy drop of the Laplace posterior after the observation
    i, j = 0, 2
    u = np.zeros(3)
    u[i], u[j] = 1, -1
    p = expit(mu[i] - mu[j])
    post = np.linalg.inv(np.linalg.inv(cov) + p * (1 - p) * np.outer(u, u))
    drop = 0.5 * (np.linalg.slogdet(cov)[1] - np.linalg.slogdet(post)[1])
    assert g_plain[i, j] == pytest.approx(drop, rel=1e-10)
    # the chosen pair is the argmax
    rng = np.random.default_rng(0)
    for weight, g in [(False, g_plain), (True, g_order)]:
        best = np.unravel_index(np.argmax(g), g.shape)
        picked = information_gain_match(mu, cov, 2, rng, order_weight=weight)
        assert set(picked.tolist()) == {int(best[0]), int(best[1])}


def test_information_gain_prefers_uncertain_close_pair():
    # items 0, 1: close and uncertain; items 2, 3: far apart and well known
    mu = np.array([0.0, 0.1, 3.0, -3.0])
    cov = np.diag([1.0, 1.0, 0.01, 0.01])
    rng = np.random.default_rng(0)
    for weight in (False, True):
        assert set(information_gain_match(mu, cov, 2, rng, order_weight=weight).tolist()) == {0, 1}
    # a close but certain pair loses to an uncertain one
    cov = np.diag([0.01, 0.01, 2.0, 2.0])
    mu = np.array([0.0, 0.1, 0.5, 0.8])
    for weight in (False, True):
        assert set(information_gain_match(mu, cov, 2, rng, order_weight=weight).tolist()) == {2, 3}


def test_order_weight_spends_the_vote_where_the_order_is_in_doubt():
    # items 2, 3: uncertain, so one vote tells a lot about them, but their order is nearly
    # settled (a 3-logit gap, 1.2 sd); items 0, 1: better known, and their order a coin flip
    mu = np.array([0.0, 0.05, 4.0, 7.0])
    cov = np.diag([0.3, 0.3, 3.0, 3.0])
    rng = np.random.default_rng(0)
    gain = pairwise_information_gain(mu, cov)
    weighted = pairwise_information_gain(mu, cov, order_weight=True)
    for (a, b), v in (((0, 1), 0.6), ((2, 3), 6.0)):  # the documented formulas, by hand
        p = expit(mu[a] - mu[b])
        assert np.isclose(gain[a, b], 0.5 * np.log1p(p * (1 - p) * v))
        assert np.isclose(weighted[a, b], gain[a, b] * norm.cdf(-abs(mu[a] - mu[b]) / np.sqrt(v)))
    # plain: the pair that most reduces the posterior entropy; weighted (the web app's default
    # strategy ``order``): the near tie
    assert set(information_gain_match(mu, cov, 2, rng).tolist()) == {2, 3}
    assert set(information_gain_match(mu, cov, 2, rng, order_weight=True).tolist()) == {0, 1}


def test_match_from_counts_order_is_weighted_information_gain():
    assert STRATEGIES == ("random", "ucb", "infogain", "order")
    n = 6
    i, j = np.triu_indices(n, 1)
    wins = np.random.default_rng(3).integers(0, 6, (2, len(i))).astype(float)
    counts = PairCounts(n, i, j, wins[0], wins[1], np.zeros(len(i)))
    fit = fit_bradley_terry(counts, alpha=1.0)
    for k in (2, 3):
        for strategy, weight in (("infogain", False), ("order", True)):
            chosen, params, sigma = match_from_counts(counts, strategy, k,
                                                      np.random.default_rng(11))
            expected = information_gain_match(fit.params, fit.covariance(), k,
                                              np.random.default_rng(11), order_weight=weight)
            assert chosen.tolist() == expected.tolist()
            assert np.allclose(params, fit.params)
    with pytest.raises(ValueError, match="order"):
        match_from_counts(counts, "thompson", 2, np.random.default_rng(0))


def test_information_gain_greedy_tuple_and_random_ties():
    rng = np.random.default_rng(5)
    n = 10
    mu = np.zeros(n)
    cov = np.eye(n)
    # all pairs are equally informative: the choice is uniform, not always (0, 1)
    firsts = {tuple(sorted(information_gain_match(mu, cov, 2, rng).tolist())) for _ in range(60)}
    assert len(firsts) > 20
    # greedy: the summed gain with the chosen items decides the next item
    mu = np.array([0.0, 0.05, 0.1, 4.0, -4.0, 5.0])
    cov = np.diag([1.0, 1.0, 1.0, 0.01, 0.01, 0.01])
    picked = information_gain_match(mu, cov, 3, rng)
    assert set(picked.tolist()) == {0, 1, 2}
    g = pairwise_information_gain(mu, cov)
    assert np.array_equal(g, pairwise_information_gain(mu, cov, order_weight=False))
    sampled = information_gain_match(mu, cov, 3, rng, candidates=50)
    a, b = np.triu_indices(3, 1)
    assert g[sampled[a], sampled[b]].sum() >= g[picked[a], picked[b]].sum() - 1e-12
