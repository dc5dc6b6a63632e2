"""Bradley-Terry engine: formulas, parity with choix, recovery, coverage, problem reports."""

import warnings

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import spearmanr

from prefkit.rank import (
    FASTCHAT,
    StyleSettings,
    aggregate_pairwise,
    bootstrap_bt,
    bt_leaderboard,
    ci_ranks,
    fit_bradley_terry,
    fit_bt_style,
    percentile_intervals,
    style_covariates,
    to_elo,
    win_rate_matrices,
)


def simulate(n, n_votes, rng, tie_rate=0.0, strengths=None):
    s = rng.normal(size=n) if strengths is None else strengths
    a = rng.integers(0, n, n_votes)
    b = (a + rng.integers(1, n, n_votes)) % n
    win = rng.random(n_votes) < expit(s[a] - s[b])
    outcome = np.where(rng.random(n_votes) < tie_rate, 2, np.where(win, 0, 1))
    return s, a, b, outcome


def test_aggregation_counts_exactly():
    a = np.array([0, 1, 0, 2, 2, 0])
    b = np.array([1, 0, 1, 0, 1, 2])
    o = np.array([0, 0, 2, 1, 3, 0])  # 0 beats 1; 1 beats 0; tie; 0 beats 2; both bad; 0 beats 2
    c = aggregate_pairwise(a, b, o, 3)
    table = {(int(i), int(j)): (wi, wj, t) for i, j, wi, wj, t in
             zip(c.i, c.j, c.wins_i, c.wins_j, c.ties, strict=True)}
    assert table == {(0, 1): (1, 1, 1), (0, 2): (2, 0, 0), (1, 2): (0, 0, 1)}
    assert list(c.votes_per_item()) == [5, 4, 3]
    with pytest.raises(ValueError, match="itself"):
        aggregate_pairwise([0], [0], [0])


def test_half_tie_likelihood_and_gradient_against_formula():
    rng = np.random.default_rng(1)
    s, a, b, o = simulate(6, 3000, rng, tie_rate=0.2)
    c = aggregate_pairwise(a, b, o, 6)
    fit = fit_bradley_terry(c)
    # independent per-vote log-likelihood with ties as half wins
    d = fit.params[a] - fit.params[b]
    y = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))
    ll = np.sum(y * np.log(expit(d)) + (1 - y) * np.log(expit(-d)))
    assert fit.log_likelihood == pytest.approx(ll, rel=1e-10)
    # at the optimum the per-model score equations hold: expected wins == observed
    p = expit(d)
    for m in range(6):
        obs = np.sum(np.where(a == m, y, 0) + np.where(b == m, 1 - y, 0))
        exp = np.sum(np.where(a == m, p, 0) + np.where(b == m, 1 - p, 0))
        assert obs == pytest.approx(exp, abs=1e-6)


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_parity_with_choix_on_tie_free_data():
    choix = pytest.importorskip("choix")
    rng = np.random.default_rng(2)
    s, a, b, o = simulate(30, 20_000, rng)
    c = aggregate_pairwise(a, b, o, 30)
    data = [(int(x), int(y)) if w == 0 else (int(y), int(x)) for x, y, w in zip(a, b, o,
                                                                                  strict=True)]
    theirs = choix.ilsr_pairwise(30, data, alpha=0.0, tol=1e-12)
    ours = fit_bradley_terry(c).params
    assert np.max(np.abs((theirs - theirs.mean()) - ours)) <= 1e-6
    # choix penalizes alpha * ||theta||^2, prefkit alpha / 2 * ||theta||^2
    with_prior = fit_bradley_terry(c, alpha=1.0).params
    theirs_prior = choix.opt_pairwise(30, data, alpha=0.5, tol=1e-12)
    assert np.max(np.abs(theirs_prior - theirs_prior.mean() - with_prior)) <= 1e-5


@pytest.mark.slow
def test_recovers_true_strengths_from_a_million_votes():
    rng = np.random.default_rng(3)
    s, a, b, o = simulate(100, 1_000_000, rng, tie_rate=0.05)
    fit = fit_bradley_terry(aggregate_pairwise(a, b, o, 100))
    assert spearmanr(fit.params, s).statistic >= 0.99


def test_davidson_recovers_tie_parameter():
    rng = np.random.default_rng(4)
    n, nu = 12, 0.6
    s = rng.normal(size=n)
    a = rng.integers(0, n, 200_000)
    b = (a + rng.integers(1, n, len(a))) % n
    u = 0.5 * (s[a] - s[b])
    z = np.exp(u) + np.exp(-u) + nu
    r = rng.random(len(a)) * z
    o = np.where(r < np.exp(u), 0, np.where(r < np.exp(u) + np.exp(-u), 1, 2))
    fit = fit_bradley_terry(aggregate_pairwise(a, b, o, n), ties="davidson")
    assert fit.converged and fit.tie_param == pytest.approx(nu, rel=0.05)
    assert np.max(np.abs(fit.params - (s - s.mean()))) < 0.05


def test_elo_scale_and_anchor():
    params = np.array([-1.0, 0.0, 1.0])
    r = to_elo(params)
    assert r[2] - r[1] == pytest.approx(400 / np.log(10))
    assert r.mean() == pytest.approx(1000)
    anchored = to_elo(params, anchor=(0, 1114.0))
    assert anchored[0] == pytest.approx(1114.0) and anchored[2] - anchored[0] == pytest.approx(
        800 / np.log(10))


def test_ci_ranks_rule():
    low = np.array([10.0, 8.0, 0.0, -5.0])
    high = np.array([12.0, 11.0, 9.0, -1.0])
    # model 2: models 0 (low 10 > 9) beats its upper bound -> rank 2; model 3: all three -> 4
    assert list(ci_ranks(low, high)) == [1, 1, 2, 4]


@pytest.mark.slow
def test_bootstrap_intervals_cover_truth():
    """95% intervals cover the true strength for >= 90% of models over 100 data sets."""
    rng = np.random.default_rng(5)
    truth = rng.normal(size=20)
    truth -= truth.mean()
    covered, total = 0, 0
    for k in range(100):
        _, a, b, o = simulate(20, 4000, rng, strengths=truth)
        c = aggregate_pairwise(a, b, o, 20)
        boot = bootstrap_bt(c, 100, seed=k)
        low, high = percentile_intervals(boot.samples)
        covered += int(np.sum((low <= truth) & (truth <= high)))
        total += 20
    assert covered / total >= 0.90


def test_disconnected_graph_is_reported_and_ranked_within_components():
    rng = np.random.default_rng(6)
    s, a1, b1, o1 = simulate(4, 2000, rng)
    _, a2, b2, o2 = simulate(3, 2000, rng)
    a = np.concatenate([a1, a2 + 4])
    b = np.concatenate([b1, b2 + 4])
    o = np.concatenate([o1, o2])
    c = aggregate_pairwise(a, b, o, 7)
    names = [f"m{i}" for i in range(7)]
    board = bt_leaderboard(c, names, bootstrap=20)
    [problem] = [p for p in board.problems if p["problem"] == "disconnected"]
    assert sorted(map(sorted, problem["components"])) == [["m0", "m1", "m2", "m3"],
                                                         ["m4", "m5", "m6"]]
    # ranks restart in each component; each component is centred at 1000
    for comp in (names[:4], names[4:]):
        idx = [names.index(m) for m in comp]
        assert 1 in board.rank[idx]
        assert board.rating[idx].mean() == pytest.approx(1000)


def test_undefeated_model_uses_prior_and_warns():
    a = np.array([0, 0, 0, 1, 2, 1, 2])
    b = np.array([1, 2, 1, 2, 1, 2, 1])
    o = np.array([0, 0, 0, 0, 0, 1, 0])  # model 0 never lost
    c = aggregate_pairwise(a, b, o, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = fit_bradley_terry(c)
    assert not raw.converged and any("alpha" in str(w.message) for w in caught)
    board = bt_leaderboard(c, ["champ", "b", "c"], bootstrap=0, min_votes=4)
    [problem] = [p for p in board.problems if p["problem"] == "infinite_mle"]
    assert problem["never_lost"] == ["champ"] and problem["never_won"] == []
    assert np.all(np.isfinite(board.rating)) and board.rank[0] == 1
    few = [p for p in board.problems if p["problem"] == "few_votes"]
    assert few and few[0]["models"] == ["champ"]  # 3 votes; the others have 5 and 6


def test_win_rate_matrices():
    a = np.array([0, 0, 1])
    b = np.array([1, 1, 2])
    o = np.array([0, 2, 1])
    c = aggregate_pairwise(a, b, o, 3)
    observed, predicted = win_rate_matrices(c, np.zeros(3))
    assert observed[0, 1] == pytest.approx(0.75) and observed[1, 0] == pytest.approx(0.25)
    assert np.isnan(observed[0, 2]) and np.allclose(predicted, 0.5)


def test_style_control_recovers_style_effect_and_ratings():
    rng = np.random.default_rng(7)
    n, n_votes = 10, 200_000
    s = rng.normal(size=n)
    a = rng.integers(0, n, n_votes)
    b = (a + rng.integers(1, n, n_votes)) % n
    la = rng.poisson(200, n_votes)
    lb = rng.poisson(200, n_votes)
    x, _, _ = style_covariates(la[:, None], lb[:, None])
    y = (rng.random(n_votes) < expit(s[a] - s[b] + 0.7 * x[:, 0])).astype(float)
    mle = StyleSettings(rating_penalty=0.0, coef_penalty=0.0, likelihood="sum", ratio_offset=1,
                        min_pair_count=None)
    fit = fit_bt_style(n, a, b, y, x, settings=mle)
    assert fit.converged and fit.style_coef[0] == pytest.approx(0.7, abs=0.03)
    assert np.max(np.abs(fit.params - (s - s.mean()))) < 0.05
    # FastChat's penalties barely move an estimate from 200k votes; arena-rank's (1.0 on the
    # coefficients of the MEAN log-likelihood) shrink the style effect ~6x whatever the votes
    fastchat = fit_bt_style(n, a, b, y, x, settings=FASTCHAT)
    assert fastchat.style_coef[0] == pytest.approx(fit.style_coef[0], abs=1e-3)
    assert fit_bt_style(n, a, b, y, x).style_coef[0] < 0.2
