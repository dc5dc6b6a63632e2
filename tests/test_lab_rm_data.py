"""The synthetic reward-model data of the lab: labels follow the gold reward at any temperature."""

import pytest

from prefkit.lab import rm_data
from prefkit.lab.wordworld import gold_reward


@pytest.mark.parametrize("temperature", [1e-3, 1e-6])
def test_noisy_pairs_at_a_tiny_temperature_follow_the_gold_reward(temperature):
    # (r_a - r_b) / T reaches -1000 here: the logistic used to overflow (OverflowError)
    rows, ceiling = rm_data.noisy_pairs(50, temperature=temperature, seed=0)
    assert len(rows) == 50
    gaps = [gold_reward(r["chosen"]) - gold_reward(r["rejected"]) for r in rows]
    assert all(g >= 0 for g in gaps)  # noise-free: the better response always wins
    ties = sum(g == 0 for g in gaps)
    assert ceiling == pytest.approx((50 - ties + 0.5 * ties) / 50)


def test_length_biased_pairs_at_a_tiny_temperature():
    rows = rm_data.length_biased_pairs(50, temperature=1e-4, lam=0.0, seed=0)
    assert all(gold_reward(r["chosen"]) >= gold_reward(r["rejected"]) for r in rows)


def test_noisy_pairs_ceiling_at_a_moderate_temperature_is_a_mean_of_max_p():
    _, ceiling = rm_data.noisy_pairs(400, temperature=0.1, seed=1)
    assert 0.5 < ceiling < 1.0
