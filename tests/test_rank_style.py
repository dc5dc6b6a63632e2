"""Style-controlled Bradley-Terry: both peers' conventions reproduced by settings alone
(FastChat's compute_style_control against a formula-level reference, LMArena's arena-rank
against the released package), and the sandwich covariances."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.special import expit

from _arena_peers import (
    STYLE_KEYS,
    arena_rank_bt,
    arena_rank_style,
    battle_records,
    fastchat_style_reference,
    outcomes,
    style_counts,
)
from prefkit.rank import aggregate_pairwise, fit_bradley_terry, to_elo
from prefkit.rank.sandwich import bt_sandwich_covariance, normal_intervals
from prefkit.rank.style import (
    ARENA_RANK,
    FASTCHAT,
    StyleSettings,
    fit_bt_style,
    inverse_pair_weights,
    resolve_features,
    style_covariates,
    style_sandwich_covariance,
)

ELO = 400 / np.log(10)


@pytest.fixture(scope="module")
def data():
    records = battle_records()
    names = sorted({r["model_a"] for r in records} | {r["model_b"] for r in records})
    index = {m: i for i, m in enumerate(names)}
    a = np.array([index[r["model_a"]] for r in records])
    b = np.array([index[r["model_b"]] for r in records])
    return {"records": records, "names": names, "a": a, "b": b, "y": outcomes(records),
            "ca": style_counts(records, "a"), "cb": style_counts(records, "b")}


def _fit(data, settings):
    x, _, _ = style_covariates(data["ca"], data["cb"], offset=settings.ratio_offset)
    fit = fit_bt_style(len(data["names"]), data["a"], data["b"], data["y"], x,
                       settings=settings)
    return fit, x


def test_conventions_state_the_peers_penalties():
    # FastChat: reg 0.5 on log10-unit ratings = 0.5 / ln(10)^2 on natural-log ones
    assert FASTCHAT.rating_penalty == pytest.approx(0.5 / np.log(10) ** 2)
    assert 0.5 / FASTCHAT.rating_penalty == pytest.approx(5.30, abs=0.01)
    assert (FASTCHAT.coef_penalty, FASTCHAT.likelihood) == (0.5, "sum")
    assert (ARENA_RANK.rating_penalty, ARENA_RANK.coef_penalty, ARENA_RANK.likelihood) == (
        0.0, 1.0, "mean")
    with pytest.raises(ValueError, match="likelihood"):
        StyleSettings(0, 1, "average", 0, None)


def test_fastchat_convention_equals_compute_style_control_objective(data):
    fit, _ = _fit(data, FASTCHAT)
    assert fit.converged
    expected_elo, expected_coef = fastchat_style_reference(data["records"], data["names"])
    assert np.max(np.abs(to_elo(fit.params) - expected_elo)) < 0.01
    assert np.allclose(fit.style_coef, expected_coef, atol=1e-5)
    # the old convention (0.5 on natural-log ratings) shrinks the ratings visibly here
    old = StyleSettings(0.5, 0.5, "sum", 1.0, None)
    x, _, _ = style_covariates(data["ca"], data["cb"], offset=1.0)
    shrunk = fit_bt_style(len(data["names"]), data["a"], data["b"], data["y"], x, settings=old)
    assert np.max(np.abs(to_elo(shrunk.params) - expected_elo)) > 1.0


@pytest.mark.slow  # JAX compiles arena-rank's fit and sandwich (~7 s)
def test_arena_rank_convention_equals_contextual_bradley_terry(data):
    pytest.importorskip("arena_rank", reason="arena-rank (the bench extra) is not installed")
    peer, peer_coef = arena_rank_style(data["records"])
    fit, x = _fit(data, ARENA_RANK)
    assert fit.converged
    elo = to_elo(fit.params)
    assert max(abs(elo[i] - peer[m][0]) for i, m in enumerate(data["names"])) < 0.01
    assert np.allclose(fit.style_coef, peer_coef, atol=1e-5)
    # sandwich intervals as arena-rank computes them (its ridge included by the convention)
    cov = style_sandwich_covariance(len(data["names"]), data["a"], data["b"], data["y"], x, fit,
                                    settings=ARENA_RANK)
    low, high = normal_intervals(fit.params, cov)
    for i, m in enumerate(data["names"]):
        assert 1000 + ELO * low[i] == pytest.approx(peer[m][1], abs=1e-4)
        assert 1000 + ELO * high[i] == pytest.approx(peer[m][2], abs=1e-4)
    # ... which differ from the penalized M-estimator's (the penalty belongs in the Hessian)
    penalized = style_sandwich_covariance(len(data["names"]), data["a"], data["b"], data["y"],
                                          x, fit, settings=replace(ARENA_RANK,
                                                                   sandwich="penalized"))
    assert np.all(np.diag(penalized) < np.diag(cov))


def test_plain_sandwich_equals_arena_rank(data):
    pytest.importorskip("arena_rank", reason="arena-rank (the bench extra) is not installed")
    peer = arena_rank_bt(data["records"])
    y = data["y"]
    outcome = np.where(y == 1, 0, np.where(y == 0, 1, 2))
    counts = aggregate_pairwise(data["a"], data["b"], outcome, len(data["names"]))
    fit = fit_bradley_terry(counts)
    for ridge, tol in ((1e-5, 1e-4), (0.0, 0.01)):
        low, high = normal_intervals(fit.params, bt_sandwich_covariance(counts, fit.params,
                                                                       ridge=ridge))
        for i, m in enumerate(data["names"]):
            assert fit.params[i] * ELO + 1000 == pytest.approx(peer[m][0], abs=0.01)
            assert low[i] * ELO + 1000 == pytest.approx(peer[m][1], abs=tol)
            assert high[i] * ELO + 1000 == pytest.approx(peer[m][2], abs=tol)


def _vote_scores(params, a, b, y):
    """Per-vote score vectors of the half-tie BT log-likelihood, ``[N, n]``, from the vote rows."""
    n = len(params)
    e = y - expit(params[a] - params[b])
    scores = np.zeros((len(a), n))
    scores[np.arange(len(a)), a] += e
    scores[np.arange(len(a)), b] -= e
    return scores


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_plain_sandwich_against_vote_level_scores(data, alpha):
    """A^-1 B A^-1 from per-vote score vectors and a finite-difference Hessian."""
    y, n = data["y"], len(data["names"])
    outcome = np.where(y == 1, 0, np.where(y == 0, 1, 2))
    counts = aggregate_pairwise(data["a"], data["b"], outcome, n)
    fit = fit_bradley_terry(counts, alpha=alpha)
    scores = _vote_scores(fit.params, data["a"], data["b"], y) - alpha * fit.params / len(y)
    meat = scores.T @ scores

    def gradient(theta):
        return _vote_scores(theta, data["a"], data["b"], y).sum(0) - alpha * theta

    h = 1e-6
    hess = -np.array([(gradient(fit.params + h * e) - gradient(fit.params - h * e)) / (2 * h)
                      for e in np.eye(n)])
    basis = np.linalg.svd(np.eye(n) - 1 / n)[0][:, : n - 1]  # centred ratings
    bread = basis @ np.linalg.inv(basis.T @ hess @ basis) @ basis.T
    expected = bread @ meat @ bread
    assert np.allclose(bt_sandwich_covariance(counts, fit.params, alpha=alpha), expected,
                       rtol=1e-5, atol=1e-9)


def test_style_sandwich_against_vote_level_scores(data):
    """The penalized M-estimator sandwich (FastChat's convention) from per-vote scores."""
    fit, x = _fit(data, FASTCHAT)
    n, d = len(data["names"]), x.shape[1]
    a, b, y = data["a"], data["b"], data["y"]
    penalty = np.r_[np.full(n, FASTCHAT.rating_penalty), np.full(d, FASTCHAT.coef_penalty)]

    def scores(beta):
        e = y - expit(beta[a] - beta[b] + x @ beta[n:])
        s = np.zeros((len(a), n + d))
        s[np.arange(len(a)), a] += e
        s[np.arange(len(a)), b] -= e
        s[:, n:] = e[:, None] * x
        return s - penalty * beta / len(a)  # per-vote share of the penalty gradient

    beta = np.concatenate([fit.params, fit.style_coef])
    h = 1e-6
    hess = -np.array([(scores(beta + h * e).sum(0) - scores(beta - h * e).sum(0)) / (2 * h)
                      for e in np.eye(n + d)])
    s = scores(beta)
    cov = np.linalg.inv(hess) @ (s.T @ s) @ np.linalg.inv(hess)
    centre = np.eye(n) - 1 / n
    expected = centre @ cov[:n, :n] @ centre
    got = style_sandwich_covariance(n, a, b, y, x, fit, settings=FASTCHAT)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-9)


def test_sandwich_is_the_laplace_covariance_when_the_model_is_right():
    """Tie-free votes drawn from the BT model: A^-1 B A^-1 -> A^-1 as votes grow."""
    rng = np.random.default_rng(3)
    n, n_votes = 5, 200_000
    s = np.linspace(-1, 1, n)
    a = rng.integers(0, n, n_votes)
    b = (a + rng.integers(1, n, n_votes)) % n
    outcome = np.where(rng.random(n_votes) < expit(s[a] - s[b]), 0, 1)
    counts = aggregate_pairwise(a, b, outcome, n)
    fit = fit_bradley_terry(counts)
    sandwich = np.diag(bt_sandwich_covariance(counts, fit.params))
    assert np.allclose(sandwich, np.diag(fit.covariance()), rtol=0.03)


def test_inverse_pair_weights_and_feature_names():
    a = np.array([0, 1, 0, 2] + [1] * 60)
    b = np.array([1, 0, 2, 0] + [2] * 60)
    w = inverse_pair_weights(a, b, 50)
    raw = np.r_[[1 / 50] * 4, [1 / 60] * 60]
    assert np.allclose(w, raw / raw.mean())
    assert resolve_features(None, ["context_tokens", "header_count", "sum_assistant_tokens"]) \
        == ["sum_assistant_tokens", "header_count"]
    assert resolve_features(["length", "bold"], list(STYLE_KEYS)) == [
        "sum_assistant_tokens", "bold_count"]
    with pytest.raises(ValueError, match="unknown style feature.*emoji.*available: a, b"):
        resolve_features(["emoji"], ["a", "b"])
    with pytest.raises(ValueError, match="none of Chatbot Arena"):
        resolve_features(None, ["context_tokens"])
    # relative differences: a zero total counts as 1 (arena-rank) or adds 1 (FastChat)
    ca, cb = np.array([[0.0], [3.0], [1.0]]), np.array([[0.0], [1.0], [0.0]])
    for offset, raw in ((0.0, [0, 0.5, 1.0]), (1.0, [0, 0.4, 0.5])):
        x, mean, std = style_covariates(ca, cb, offset=offset)
        assert np.allclose(x[:, 0] * std + mean, raw)
        assert x.mean() == pytest.approx(0) and x.std() == pytest.approx(1)


@pytest.mark.parametrize("settings", [ARENA_RANK, FASTCHAT], ids=["arena-rank", "fastchat"])
def test_bootstrap_rounds_are_the_fits_of_their_resamples(data, settings):
    """A round steps with the full data's information (not its own Hessian): it must land on
    the same estimate as Newton's method on that resample (the same multinomial draws)."""
    from prefkit.rank.style import bootstrap_bt_style

    fit, x = _fit(data, settings)
    n, rows = len(data["names"]), len(data["a"])
    rounds = bootstrap_bt_style(n, data["a"], data["b"], data["y"], x, rounds=3,
                                settings=settings, seed=7, initial=fit)
    rng = np.random.default_rng(7)
    for r in range(3):
        counts = np.bincount(rng.integers(0, rows, rows), minlength=rows)
        ref = fit_bt_style(n, data["a"], data["b"], data["y"], x, settings=settings,
                           weights=counts, tol=1e-12)
        assert np.max(np.abs(rounds[r] - ref.params)) * ELO < 1e-3
    assert np.ptp(rounds, axis=0).max() > 0  # the rounds differ (resampled, not the fit)


def test_inverse_pair_weights_without_a_count_per_pair():
    """Many models and few votes: the sort-based count gives the same weights."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3000, 500), rng.integers(0, 3000, 500)
    a[:50], b[:50] = 1, 2
    w = inverse_pair_weights(a, b, 1)
    key = np.minimum(a, b) * 3000 + np.maximum(a, b)
    per_vote = np.array([np.sum(key == k) for k in key], dtype=float)
    assert np.allclose(w, (1 / per_vote) / (1 / per_vote).mean())


def test_the_step_rule_stops_early_within_a_hundred_thousandth_of_an_elo_point(data):
    """A fit stops when the step its last Hessian predicts is below STEP_TOL (no Hessian for
    a step that small): the estimate equals a fit run to a 1e-13 gradient."""
    x, _, _ = style_covariates(data["ca"], data["cb"])
    args = (len(data["names"]), data["a"], data["b"], data["y"], x)
    quick, strict = fit_bt_style(*args), fit_bt_style(*args, tol=1e-13)
    assert quick.converged and quick.n_iter <= strict.n_iter
    assert np.max(np.abs(quick.params - strict.params)) * ELO < 1e-5
    assert np.max(np.abs(quick.style_coef - strict.style_coef)) < 1e-7


def test_fit_with_sandwich_equals_the_separate_covariance(data):
    fit, x = _fit(data, ARENA_RANK)
    args = (len(data["names"]), data["a"], data["b"], data["y"], x)
    both = fit_bt_style(*args, sandwich=True)
    assert fit.covariance is None and both.covariance is not None
    assert np.allclose(both.params, fit.params, atol=1e-12)
    assert np.allclose(both.covariance, style_sandwich_covariance(*args, fit), rtol=1e-9,
                       atol=1e-15)
    with pytest.raises(ValueError, match="unweighted"):
        fit_bt_style(*args, sandwich=True, weights=np.ones(len(data["a"])))
