"""prefkit.evaluate.winrate / policy: hand-computed values and seeded synthetic checks."""

import math

import numpy as np
import pytest
from scipy.special import expit

from prefkit.evaluate.policy import (
    best_of_n_curve,
    best_of_n_kl_bound,
    idealized_ranking_accuracy,
    kl_estimate,
    overoptimization_curve,
    ranking_accuracy,
    ranking_accuracy_interval,
)
from prefkit.evaluate.winrate import length_controlled_win_rate, wilson_interval, win_rate

Z95 = 1.959963984540054

# --------------------------------------------------------------------------- win rate


def test_win_rate_hand_example_normal_ci():
    out = win_rate([1, 1, 0, 0.5])
    assert out["win_rate"] == pytest.approx(0.625)
    assert (out["n"], out["wins"], out["ties"], out["losses"]) == (4, 2, 1, 1)
    # deviations .375, .375, -.625, -.125 -> var(ddof=1) = .6875 / 3
    se = math.sqrt(0.6875 / 3) / 2
    assert out["se"] == pytest.approx(se)
    assert out["ci_low"] == pytest.approx(0.625 - Z95 * se)
    assert out["ci_high"] == 1.0  # 0.625 + 0.469 clipped


def test_win_rate_ties_modes_and_probabilities():
    assert win_rate([1, 1, 0, 0.5], ties="drop")["win_rate"] == pytest.approx(2 / 3)
    assert win_rate([1, 1, 0, 0.5], ties="drop")["n"] == 3
    assert win_rate([1, 1, 0, 0.5], ties="loss")["win_rate"] == pytest.approx(0.5)
    soft = win_rate([0.9, 0.2, 0.7])
    assert soft["win_rate"] == pytest.approx(0.6)
    assert (soft["wins"], soft["ties"], soft["losses"]) == (2, 0, 1)


def test_win_rate_rejects_bad_input():
    with pytest.raises(ValueError, match=r"preferences\[1\] = 1.5"):
        win_rate([1, 1.5])
    with pytest.raises(ValueError, match="not finite"):
        win_rate([1, float("nan")])
    with pytest.raises(ValueError, match="ties"):
        win_rate([1, 0], ties="bogus")
    with pytest.raises(ValueError, match="every item is a tie"):
        win_rate([0.5, 0.5], ties="drop")


def test_bootstrap_ci_degenerate_and_seeded():
    out = win_rate([1, 1, 1], ci="bootstrap")
    assert (out["ci_low"], out["ci_high"]) == (1.0, 1.0)
    a = win_rate([1, 0, 1, 0.5, 1], ci="bootstrap", seed=3)
    b = win_rate([1, 0, 1, 0.5, 1], ci="bootstrap", seed=3)
    assert a == b
    assert a["ci_low"] <= a["win_rate"] <= a["ci_high"]


def test_bootstrap_ci_close_to_normal_for_large_n():
    rng = np.random.default_rng(0)
    p = rng.choice([0.0, 0.5, 1.0], size=5000, p=[0.35, 0.1, 0.55])
    normal = win_rate(p)
    boot = win_rate(p, ci="bootstrap", n_bootstrap=4000, seed=1)
    assert boot["win_rate"] == normal["win_rate"]
    width = normal["ci_high"] - normal["ci_low"]
    assert abs(boot["ci_low"] - normal["ci_low"]) < 0.05 * width
    assert abs(boot["ci_high"] - normal["ci_high"]) < 0.05 * width


# --------------------------------------------------------------------------- LC win rate


def _length_biased(rng, d, quality=0.0, a=2.0):
    """Judge outcomes with P(model wins) = sigmoid(quality + a * tanh(d / sd(d)))."""
    return (rng.random(len(d)) < expit(quality + a * np.tanh(d / d.std()))).astype(float)


def test_lc_soft_labels_recover_the_generating_glm_exactly():
    rng = np.random.default_rng(0)
    ref = rng.uniform(200, 800, 3000)
    d = rng.uniform(0, 400, 3000)
    probs = expit(2.0 * np.tanh(d / d.std()))
    out = length_controlled_win_rate(probs, ref + d, ref)
    assert out["theta"] == pytest.approx(0.0, abs=2e-3)
    assert out["phi"] == pytest.approx(2.0, abs=2e-3)
    assert out["lc_win_rate"] == pytest.approx(0.5, abs=1e-3)
    assert out["win_rate"] > 0.75
    assert out["psi"] is None and not out["difficulty_term"] and out["lc_se"] == 0.0


def test_lc_longer_only_model_against_length_biased_judge():
    rng = np.random.default_rng(1)
    n = 20000
    ref = rng.uniform(200, 800, n)
    d = rng.uniform(0, 400, n)  # always longer, no quality difference
    out = length_controlled_win_rate(_length_biased(rng, d), ref + d, ref)
    assert out["win_rate"] > 0.65
    assert abs(out["lc_win_rate"] - 0.5) < 0.05
    assert out["converged"] and out["length_term"]


def test_lc_constant_short_null_model_is_not_rewarded():
    rng = np.random.default_rng(2)
    n = 20000
    ref = rng.lognormal(np.log(400), 0.6, n)
    null = np.full(n, 20.0)  # the same short answer to every instruction
    worse = length_controlled_win_rate(_length_biased(rng, null - ref, quality=-1.0), null, ref)
    assert worse["win_rate"] < worse["lc_win_rate"] <= 0.5
    equal = length_controlled_win_rate(_length_biased(rng, null - ref), null, ref)
    assert equal["lc_win_rate"] <= 0.5 + 0.05
    assert abs(equal["lc_win_rate"] - 0.5) < 0.05


def test_lc_equals_raw_without_length_effect():
    rng = np.random.default_rng(3)
    n = 5000
    ref = rng.uniform(200, 800, n)
    model = ref + rng.normal(0, 150, n)
    y = (rng.random(n) < expit(0.8)).astype(float)
    out = length_controlled_win_rate(y, model, ref)
    assert abs(out["lc_win_rate"] - out["win_rate"]) < 0.02
    assert abs(out["phi"]) < 0.15


def test_lc_constant_length_difference_drops_length_term():
    out = length_controlled_win_rate([1, 0, 1, 1], [10, 20, 30, 40], [5, 15, 25, 35])
    assert not out["length_term"] and out["phi"] == pytest.approx(0.0, abs=1e-6)
    assert out["lc_win_rate"] == pytest.approx(0.75, abs=0.01)  # sigmoid(theta) ~ raw


def _difficulty_world(seed, n_instructions=2000, n_models=6):
    """A longer-only target (theta 0) and symmetric-length other models, all sharing
    instruction difficulty gamma_x. Returns target, others, reference, true LC."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(200, 800, n_instructions)
    gamma = rng.normal(0, 1, n_instructions)
    d0 = rng.uniform(0, 400, n_instructions)
    target = (rng.random(n_instructions) < expit(2 * np.tanh(d0 / d0.std()) + gamma), ref + d0)
    others = []
    for _ in range(n_models - 1):
        theta, psi, phi = rng.normal(0, 0.7), rng.uniform(0.7, 1.3), rng.uniform(0.5, 1.5)
        d = rng.normal(0, 150, n_instructions)
        p = expit(theta + phi * np.tanh(d / d.std()) + psi * gamma)
        others.append(((rng.random(n_instructions) < p).astype(float), ref + d))
    truth = float(np.mean(expit(gamma)))
    return (target[0].astype(float), target[1]), others, ref, truth


def test_lc_joint_difficulty_fit_with_other_models():
    (y, lengths), others, ref, truth = _difficulty_world(0)
    out = length_controlled_win_rate(y, lengths, ref, other_models=others, n_bootstrap=100)
    assert out["difficulty_term"] and out["n_models"] == 6 and out["psi"] > 0
    assert out["win_rate"] > 0.7
    assert abs(out["lc_win_rate"] - truth) < 0.05
    assert out["lc_se"] > 0
    assert out["ci_low"] < out["lc_win_rate"] < out["ci_high"]
    assert out["ci_high"] - out["ci_low"] < 0.2


def test_lc_instruction_ids_group_rows_and_inputs_are_checked():
    rng = np.random.default_rng(4)
    ids = np.repeat(np.arange(50), 2)
    ref = rng.uniform(100, 300, 100)
    model = ref + rng.normal(0, 50, 100)
    y = rng.integers(0, 2, 100).astype(float)
    other = (rng.integers(0, 2, 100).astype(float), ref + rng.normal(0, 50, 100))
    out = length_controlled_win_rate(y, model, ref, ids, other_models=[other])
    assert (out["n"], out["n_instructions"]) == (100, 50)
    assert 0 < out["lc_win_rate"] < 1
    with pytest.raises(ValueError, match="other_models"):
        length_controlled_win_rate(y, model, ref, other_models=[(y[:10], model[:10])])
    with pytest.raises(ValueError, match="reference_lengths has 99"):
        length_controlled_win_rate(y, model, ref[:99])
    with pytest.raises(ValueError, match=r"preferences\[0\] = 2"):
        length_controlled_win_rate(np.r_[2.0, y[1:]], model, ref)


# --------------------------------------------------------------------------- KL


def test_kl_exact_on_a_categorical_with_proportional_samples():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.3, 0.5])
    kl = float(np.sum(p * np.log(p / q)))  # 0.5 ln 2.5 + 0.2 ln 0.4
    assert kl == pytest.approx(0.5 * math.log(2.5) + 0.2 * math.log(0.4))
    samples = np.repeat([0, 1, 2], [5, 3, 2])  # exactly the policy's proportions
    lp, lq = np.log(p[samples]), np.log(q[samples])
    assert kl_estimate(lp, lq)["kl"] == pytest.approx(kl)
    assert kl_estimate(lp, lq, estimator="k3")["kl"] == pytest.approx(kl)  # E[r - 1] = 0
    # k2 = mean (log r)^2 / 2 with log r = ln .4 (x5), 0 (x3), ln 2.5 (x2)
    k2 = (5 * math.log(0.4) ** 2 + 2 * math.log(2.5) ** 2) / 2 / 10
    assert kl_estimate(lp, lq, estimator="k2")["kl"] == pytest.approx(k2)
    assert kl_estimate(lp, lp, estimator="k3") == {"kl": 0.0, "se": 0.0, "n": 10,
                                                   "estimator": "k3"}


def test_kl_estimators_unbiased_on_sampled_categorical_and_gaussians():
    rng = np.random.default_rng(5)
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.3, 0.5])
    kl = float(np.sum(p * np.log(p / q)))
    s = rng.choice(3, size=50000, p=p)
    for est in ("k1", "k3"):
        out = kl_estimate(np.log(p[s]), np.log(q[s]), estimator=est)
        assert abs(out["kl"] - kl) < 4 * out["se"]
    # Gaussians: KL(N(0, 1) || N(0.5, 1.5^2)) = ln 1.5 + (1 + 0.25) / (2 * 2.25) - 1/2
    kl_g = math.log(1.5) + 1.25 / 4.5 - 0.5
    x = rng.normal(0.0, 1.0, 100000)
    lp = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    lq = -0.5 * ((x - 0.5) / 1.5) ** 2 - math.log(1.5) - 0.5 * math.log(2 * math.pi)
    outs = {est: kl_estimate(lp, lq, estimator=est) for est in ("k1", "k2", "k3")}
    for est in ("k1", "k3"):
        assert abs(outs[est]["kl"] - kl_g) < 4 * outs[est]["se"]
    # Schulman's example: a small shift, KL(N(0, 1) || N(0.1, 1)) = 0.005; k3 has far lower
    # variance than k1 there (not in general: above, the wider reference gives r heavy tails)
    lq_near = -0.5 * (x - 0.1) ** 2 - 0.5 * math.log(2 * math.pi)
    k1, k3 = (kl_estimate(lp, lq_near, estimator=e) for e in ("k1", "k3"))
    assert abs(k3["kl"] - 0.005) < 4 * k3["se"] and abs(k1["kl"] - 0.005) < 4 * k1["se"]
    assert k3["se"] < 0.2 * k1["se"]
    assert outs["k2"]["kl"] > 0 and abs(outs["k2"]["kl"] - kl_g) < 0.1
    with pytest.raises(ValueError, match="estimator"):
        kl_estimate(lp, lq, estimator="k4")


# --------------------------------------------------------------------------- ranking accuracy


def test_ranking_accuracy_hand_example():
    c, r = [-10, -5, -20, -3], [-12, -4, -30, -3]
    assert ranking_accuracy(c, r) == pytest.approx(0.5)  # right, wrong, right, tie
    assert ranking_accuracy(c, r, ties="half") == pytest.approx(0.625)
    # per token: c -> -1, -1, -1, -1; r -> -2, -2, -1, -3
    assert ranking_accuracy(c, r, chosen_lengths=[10, 5, 20, 3],
                            rejected_lengths=[6, 2, 30, 1]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both"):
        ranking_accuracy(c, r, chosen_lengths=[1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"rejected_lengths\[1\] = 0.0"):
        ranking_accuracy(c, r, chosen_lengths=[1, 1, 1, 1], rejected_lengths=[1, 0, 1, 1])


def test_wilson_interval_hand_values_and_scipy():
    from scipy.stats import binomtest

    lo, hi = wilson_interval(8, 10)  # p 0.8, centre 0.7167, half 0.2266 (hand computed)
    assert (lo, hi) == (pytest.approx(0.49016, abs=1e-5), pytest.approx(0.94331, abs=1e-5))
    assert wilson_interval(0, 10) == (0.0, pytest.approx(3.8415 / 13.8415, abs=1e-4))
    assert wilson_interval(10, 10)[0] == pytest.approx(1 - 3.8415 / 13.8415, abs=1e-4)
    for k, n, level in ((178, 204, 0.95), (3, 7, 0.9), (50, 100, 0.99), (1, 1, 0.95)):
        ref = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        assert wilson_interval(k, n, level=level) == (pytest.approx(ref.low, abs=1e-12),
                                                      pytest.approx(ref.high, abs=1e-12))
    for bad in ((11, 10), (-1, 10), (float("nan"), 10), (1, 0)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_ranking_accuracy_interval():
    c, r = [-10, -5, -20, -3], [-12, -4, -30, -3]  # right, wrong, right, tie
    out = ranking_accuracy_interval(c, r)
    assert (out["accuracy"], out["n"], out["correct"]) == (0.5, 4, 2.0)
    assert (out["ci_low"], out["ci_high"]) == wilson_interval(2, 4)
    half = ranking_accuracy_interval(c, r, ties="half", level=0.9)
    assert half["correct"] == 2.5 and (half["ci_low"], half["ci_high"]) == wilson_interval(
        2.5, 4, level=0.9)


def test_idealized_ranking_accuracy_hand_example():
    ref_c, ref_r = [-10, -10, -10], [-8, -8, -12]  # reference log-ratios -2, -2, +2
    gold_c, gold_r = [1.0, 0.5, 0.0], [0.0, 0.0, 1.0]  # gold margins 1, 0.5, -1
    # beta 0.25: margins -2+4, -2+2, 2-4 -> right, tie, wrong
    assert idealized_ranking_accuracy(ref_c, ref_r, gold_c, gold_r, 0.25) == pytest.approx(1 / 3)
    assert idealized_ranking_accuracy(ref_c, ref_r, gold_c, gold_r, 0.25,
                                      ties="half") == pytest.approx(0.5)
    # beta 0.1: -2+10, -2+5, 2-10 -> 2 of 3
    assert idealized_ranking_accuracy(ref_c, ref_r, gold_c, gold_r, 0.1) == pytest.approx(2 / 3)
    # large beta: the reference's own ranking (wrong, wrong, right)
    assert idealized_ranking_accuracy(ref_c, ref_r, gold_c, gold_r, 1e6) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="beta"):
        idealized_ranking_accuracy(ref_c, ref_r, gold_c, gold_r, 0.0)


# --------------------------------------------------------------------------- best-of-n


def test_best_of_n_hand_example():
    curve = best_of_n_curve([[1, 3, 2, 0]], [[0, 1, 5, 2]])
    assert [d["n"] for d in curve] == [1, 2, 4]
    assert [d["proxy_mean"] for d in curve] == [1, 3, 3]
    assert [d["gold_mean"] for d in curve] == [0, 1, 1]
    assert [d["kl_bound"] for d in curve] == pytest.approx(
        [0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    assert best_of_n_kl_bound(1) == 0.0
    with pytest.raises(ValueError, match="outside"):
        best_of_n_curve([[1, 3, 2, 0]], [[0, 1, 5, 2]], ns=[8])


def test_overoptimization_curve_hand_example():
    out = overoptimization_curve([8, 1, 2, 4], [0.5, 0, 2, 1], [3, 0, 1, 2])  # unsorted xs
    assert out["argmax_gold"] == 1 and out["x_at_gold_max"] == 2.0
    assert out["gold_interior"] and out["proxy_monotone"] and out["overoptimized"]
    assert out["gold_drop"] == pytest.approx(1.5)
    assert out["proxy_spearman"] == pytest.approx(1.0)


def test_best_of_n_proxy_equal_to_gold_keeps_rising():
    rng = np.random.default_rng(6)
    gold = rng.normal(size=(2000, 64))
    curve = best_of_n_curve(gold, gold)
    g = [d["gold_mean"] for d in curve]
    assert np.all(np.diff(g) > 0)
    out = overoptimization_curve([d["n"] for d in curve], g, [d["proxy_mean"] for d in curve])
    assert not out["gold_interior"] and not out["overoptimized"]
    assert out["argmax_gold"] == len(curve) - 1 and out["proxy_monotone"]


def test_best_of_n_biased_proxy_overoptimizes():
    # proxy = q + l rewards a feature l that gold = q + l - l^2 penalises past l = 1/2
    rng = np.random.default_rng(7)
    q, feature = rng.normal(size=(2, 2000, 256))
    curve = best_of_n_curve(q + feature, q + feature - feature**2)
    xs = [d["n"] for d in curve]
    out = overoptimization_curve(xs, [d["gold_mean"] for d in curve],
                                 [d["proxy_mean"] for d in curve])
    assert out["proxy_monotone"]
    assert out["gold_interior"] and out["overoptimized"]
    assert 1 < out["x_at_gold_max"] < 256 and out["gold_drop"] > 0.3
