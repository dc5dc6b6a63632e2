"""TrueSkill free-for-all: parity with the ``trueskill`` package (2-, 3-, 4-player matches,
with and without draws, single matches and sequences), properties, convergence."""

import numpy as np
import pytest
import trueskill
from scipy.stats import kendalltau

from prefkit.rank.skill import (
    BETA,
    MU,
    SIGMA,
    TAU,
    SkillState,
    conservative_score,
    draw_margin,
    initial_state,
    rate,
    rate_many,
)


def package_rate(env, mu, sigma, ranks):
    groups = [(env.create_rating(m, s),) for m, s in zip(mu, sigma, strict=True)]
    out = env.rate(groups, ranks=list(ranks))
    return np.array([g[0].mu for g in out]), np.array([g[0].sigma for g in out])


def random_matches(rng, n_matches, draws):
    for _ in range(n_matches):
        m = int(rng.integers(2, 5))
        mu = rng.normal(25, 5, m)
        sigma = rng.uniform(1.0, 8.5, m)
        ranks = rng.integers(0, m, m) if draws else rng.permutation(m)
        yield mu, sigma, ranks


@pytest.mark.parametrize("draws", [False, True])
def test_single_matches_match_trueskill_exactly(draws):
    """Same schedule and stopping rule as the package; with exact normal functions
    (backend="scipy") the results agree to rounding."""
    env = trueskill.TrueSkill(backend="scipy")
    rng = np.random.default_rng(0 if draws else 1)
    sizes = set()
    for mu, sigma, ranks in random_matches(rng, 150, draws):
        try:
            ref_mu, ref_sigma = package_rate(env, mu, sigma, ranks)
        except FloatingPointError:  # the package gives up on huge upsets
            continue
        sizes.add(len(mu))
        state = rate(SkillState(mu.copy(), sigma.copy()), np.arange(len(mu)), ranks)
        assert np.allclose(state.mu, ref_mu, rtol=1e-10, atol=0)
        assert np.allclose(state.sigma, ref_sigma, rtol=1e-10, atol=0)
    assert sizes == {2, 3, 4}


def test_default_backend_within_its_erfc_approximation():
    env = trueskill.TrueSkill()  # approximate erfc (relative error ~1e-7)
    rng = np.random.default_rng(2)
    for mu, sigma, ranks in random_matches(rng, 100, draws=True):
        try:
            ref_mu, ref_sigma = package_rate(env, mu, sigma, ranks)
        except FloatingPointError:
            continue
        state = rate(SkillState(mu.copy(), sigma.copy()), np.arange(len(mu)), ranks)
        assert np.allclose(state.mu, ref_mu, rtol=5e-6, atol=0)
        assert np.allclose(state.sigma, ref_sigma, rtol=5e-6, atol=0)


def test_sequence_matches_trueskill():
    env = trueskill.TrueSkill(backend="scipy", draw_probability=0.2)
    rng = np.random.default_rng(3)
    n = 6
    ratings = [env.create_rating() for _ in range(n)]
    matches = []
    for _ in range(150):
        k = int(rng.integers(2, 5))
        items = rng.choice(n, k, replace=False)
        ranks = rng.integers(0, k, k)
        matches.append((items, ranks))
        out = env.rate([(ratings[i],) for i in items], ranks=list(ranks))
        for i, (r,) in zip(items, out, strict=True):
            ratings[i] = r
    state = rate_many(initial_state(n), matches, draw_probability=0.2)
    assert np.allclose(state.mu, [r.mu for r in ratings], rtol=1e-9, atol=0)
    assert np.allclose(state.sigma, [r.sigma for r in ratings], rtol=1e-9, atol=0)


def test_defaults_draw_margin_and_conservative_score():
    assert np.allclose([MU, SIGMA, BETA, TAU], [25.0, 25 / 3, 25 / 6, 25 / 300])
    env = trueskill.TrueSkill(backend="scipy")
    assert draw_margin(0.1) == pytest.approx(trueskill.calc_draw_margin(0.1, 2, env), rel=1e-12)
    state = initial_state(3)
    assert np.allclose(conservative_score(state), 0.0)
    assert np.allclose(conservative_score(state, k=1.0), 25 - 25 / 3)


def test_functional_and_local():
    state = initial_state(5)
    new = rate(state, [3, 1], [0, 1])
    assert np.all(state.mu == 25.0) and np.all(state.sigma == 25 / 3)  # input untouched
    assert new.mu[3] > 25 > new.mu[1]
    assert new.mu[3] - 25 == pytest.approx(25 - new.mu[1])
    assert new.sigma[3] < 25 / 3 and new.sigma[1] < 25 / 3
    assert list(new.mu[[0, 2, 4]]) == [25.0] * 3 and list(new.sigma[[0, 2, 4]]) == [25 / 3] * 3
    # ranks are relative: any order of the arguments, any rank values
    again = rate(state, [1, 3], [7, -2])
    assert np.allclose(again.mu, new.mu) and np.allclose(again.sigma, new.sigma)
    # a draw between equals moves nobody's mean and shrinks both sigmas
    drawn = rate(state, [0, 2], [0, 0])
    assert drawn.mu[0] == pytest.approx(25.0) and drawn.mu[2] == pytest.approx(25.0)
    assert drawn.sigma[0] < 25 / 3


def test_huge_upset_stays_finite():
    state = SkillState(np.array([300.0, 0.0]), np.array([0.5, 0.5]))
    with pytest.raises(FloatingPointError):  # where the package gives up
        trueskill.TrueSkill().rate([(trueskill.Rating(300, 0.5),), (trueskill.Rating(0, 0.5),)],
                                   ranks=[1, 0])
    new = rate(state, [0, 1], [1, 0])
    assert np.all(np.isfinite(new.mu)) and np.all(np.isfinite(new.sigma))
    assert 0.0 < new.mu[1] < 10.0 and 290.0 < new.mu[0] < 300.0
    assert np.all(new.sigma > 0) and np.all(new.sigma <= 0.51)
    drawn = rate(state, [0, 1], [0, 0])
    assert np.all(np.isfinite(drawn.mu)) and np.all(np.isfinite(drawn.sigma))
    assert drawn.mu[1] > 0.0 and drawn.mu[0] < 300.0


def test_invalid_matches():
    state = initial_state(4)
    with pytest.raises(ValueError, match="draw"):
        rate(state, [0, 1], [0, 0], draw_probability=0.0)
    rate(state, [0, 1], [0, 1], draw_probability=0.0)  # wins are fine without draws
    with pytest.raises(ValueError, match="twice"):
        rate(state, [0, 0], [0, 1])
    with pytest.raises(ValueError, match="at least two"):
        rate(state, [0], [0])
    with pytest.raises(ValueError, match="ranks"):
        rate(state, [0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="item ids"):
        rate(state, [0, 4], [0, 1])


def test_tighter_sweeps_reach_the_ep_fixed_point():
    state = SkillState(np.array([20.0, 30.0, 25.0, 27.0]), np.array([3.0, 6.0, 8.0, 2.0]))
    ranks = [0, 1, 1, 2]
    loose = rate(state, range(4), ranks)
    tight = rate(state, range(4), ranks, min_delta=1e-14, max_iter=500)
    tighter = rate(state, range(4), ranks, min_delta=1e-15, max_iter=1000)
    assert np.allclose(tight.mu, tighter.mu, atol=1e-12)
    assert np.allclose(loose.mu, tight.mu, atol=1e-2)


def test_converges_to_the_true_order():
    rng = np.random.default_rng(4)
    n = 12
    skill = np.linspace(15, 35, n)
    rng.shuffle(skill)
    matches = []
    for _ in range(1500):
        items = rng.choice(n, 4, replace=False)
        perf = skill[items] + rng.normal(0, BETA, 4)
        ranks = np.argsort(np.argsort(-perf))
        matches.append((items, ranks))
    state = rate_many(initial_state(n), matches, draw_probability=0.0)
    assert kendalltau(state.mu, skill).statistic > 0.9
    assert np.all(state.sigma < 2.0)
