"""``prefkit.evaluate``: the public names, each the function of its module, and the two
interval functions the README's lab report uses (Wilson 1927)."""

import math

import pytest

import prefkit.evaluate as evaluate
from prefkit.evaluate import policy, winrate


def test_every_public_name_is_exported():
    assert {"wilson_interval", "ranking_accuracy_interval"} <= set(evaluate.__all__)
    assert evaluate.wilson_interval is winrate.wilson_interval
    assert evaluate.ranking_accuracy_interval is policy.ranking_accuracy_interval
    assert all(hasattr(evaluate, name) for name in evaluate.__all__)


def test_wilson_interval_values():
    z = 1.959963984540054  # Phi^-1(0.975)
    p, n = 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert evaluate.wilson_interval(8, 10) == pytest.approx((centre - half, centre + half),
                                                            abs=1e-12)
    assert evaluate.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)


def test_ranking_accuracy_interval_counts_pairs():
    out = evaluate.ranking_accuracy_interval([-1.0, -2.0, -3.0, -1.0], [-2.0, -1.0, -4.0, -5.0])
    assert (out["accuracy"], out["n"], out["correct"], out["level"]) == (0.75, 4, 3.0, 0.95)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(evaluate.wilson_interval(3, 4))
