"""Online Elo: FastChat parity, hand-computed updates, the many-orderings engine, order
sensitivity."""

import numpy as np
import pytest

from prefkit.rank.elo import (
    elo_order_sensitivity,
    online_elo,
    online_elo_many,
    scores_from_outcomes,
)


def fastchat_compute_elo(a, b, score, k=4, scale=400, base=10, init=1000):
    """FastChat's ``compute_elo`` loop (fastchat/serve/monitor/elo_analysis.py), on ids."""
    rating = {}
    for model_a, model_b, sa in zip(a.tolist(), b.tolist(), score.tolist(), strict=True):
        ra = rating.get(model_a, init)
        rb = rating.get(model_b, init)
        ea = 1 / (1 + base ** ((rb - ra) / scale))
        eb = 1 / (1 + base ** ((ra - rb) / scale))
        rating[model_a] = ra + k * (sa - ea)
        rating[model_b] = rb + k * (1 - sa - eb)
    return rating


def votes(n, m, rng):
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    score = rng.choice([0.0, 0.5, 1.0], m)
    return a, b, score


def test_first_updates_by_hand():
    # 1000 vs 1000: E = 1/2, a wins -> +2 / -2
    r = online_elo(3, [0], [1], [1.0])
    assert r == pytest.approx([1002.0, 998.0, 1000.0])
    # then 1 (998) beats 0 (1002): E_1 = 1 / (1 + 10^(4/400))
    e1 = 1 / (1 + 10 ** (4 / 400))
    r = online_elo(3, [0, 1], [1, 0], [1.0, 1.0])
    assert r == pytest.approx([1002 - 4 * (1 - e1), 998 + 4 * (1 - e1), 1000.0], abs=1e-12)
    # a tie between equals changes nothing; other parameters
    assert online_elo(2, [0], [1], [0.5]) == pytest.approx([1000.0, 1000.0])
    r = online_elo(2, [1], [0], [1.0], k=32, init=1500)
    assert r == pytest.approx([1484.0, 1516.0])


def test_matches_fastchat_compute_elo():
    rng = np.random.default_rng(0)
    n = 12
    a, b, s = votes(n, 5000, rng)
    ours = online_elo(n, a, b, s)
    ref = fastchat_compute_elo(a, b, s)
    assert np.allclose(ours, [ref[i] for i in range(n)], atol=1e-9, rtol=0)
    ours = online_elo(n, a, b, s, k=16, scale=200, base=np.e, init=0)
    ref = fastchat_compute_elo(a, b, s, k=16, scale=200, base=np.e, init=0)
    assert np.allclose(ours, [ref[i] for i in range(n)], atol=1e-9, rtol=0)
    # zero-sum: the mean stays at init
    assert ours.sum() == pytest.approx(0.0, abs=1e-8)


def test_unseen_models_keep_init():
    r = online_elo(5, [0, 1], [1, 0], [1.0, 0.0])
    assert list(r[2:]) == [1000.0] * 3


@pytest.mark.parametrize("rows", [3, 12])  # scalar path and vectorized path
def test_many_equals_rowwise(rows):
    rng = np.random.default_rng(1)
    n, m = 7, 600
    a = rng.integers(0, n, (rows, m))
    b = (a + rng.integers(1, n, (rows, m))) % n
    s = rng.choice([0.0, 0.5, 1.0], (rows, m))
    many = online_elo_many(n, a, b, s, k=8.0)
    assert many.shape == (rows, n)
    for p in range(rows):
        assert np.allclose(many[p], online_elo(n, a[p], b[p], s[p], k=8.0), atol=1e-9, rtol=0)


def test_many_longer_than_a_chunk():
    rng = np.random.default_rng(2)
    n, m, rows = 5, 9000, 10
    a, b, s = votes(n, m, rng)
    perms = np.stack([rng.permutation(m) for _ in range(rows)])
    many = online_elo_many(n, a[perms], b[perms], s[perms])
    for p in (0, rows - 1):
        assert np.allclose(many[p], online_elo(n, a[perms[p]], b[perms[p]], s[perms[p]]),
                           atol=1e-8, rtol=0)


def test_order_sensitivity_statistics():
    rng = np.random.default_rng(3)
    n = 6
    a, b, s = votes(n, 3000, rng)
    out = elo_order_sensitivity(n, a, b, s, n_permutations=20, seed=5)
    ratings = out["ratings"]
    assert ratings.shape == (20, n)
    assert np.allclose(ratings.sum(axis=1), 1000.0 * n)
    assert np.allclose(out["original"], online_elo(n, a, b, s))
    assert np.allclose(out["std"], ratings.std(axis=0))
    assert np.allclose(out["spread"], ratings.max(axis=0) - ratings.min(axis=0))
    assert np.all(out["std"] > 0)
    assert out["ranks"].shape == (20, n)
    assert set(np.unique(out["ranks"])) <= set(range(1, n + 1))
    change = np.abs(out["ranks"] - out["original_ranks"]).mean(axis=0)
    assert np.allclose(out["mean_abs_rank_change"], change)
    assert out["mean_rank_change"] == pytest.approx(change.mean())
    # reproducible with the seed, different with another; batching covers the same ground
    again = elo_order_sensitivity(n, a, b, s, n_permutations=20, seed=5)
    assert np.array_equal(again["ratings"], ratings)
    other = elo_order_sensitivity(n, a, b, s, n_permutations=20, seed=6)
    assert not np.array_equal(other["ratings"], ratings)
    batched = elo_order_sensitivity(n, a, b, s, n_permutations=20, seed=5, batch_size=9)
    assert batched["ratings"].shape == (20, n)
    # each permuted row is online Elo of some ordering: same total, plausible spread
    assert np.allclose(batched["ratings"].sum(axis=1), 1000.0 * n)


@pytest.mark.parametrize("rows", [5, 12])  # scalar path and vectorized path
@pytest.mark.parametrize("n", [9, 20_000])  # votes packed into int32 / int64
def test_order_sensitivity_unpacks_votes(rows, n):
    """With a tiny k, Elo is linear in the votes (r_a - init ~ k sum(s - 1/2)) and the same in
    every order: each permuted run must see exactly the original votes, any score values."""
    rng = np.random.default_rng(7)
    a, b, _ = votes(9, 2000, rng)
    a, b = a * (n // 9), b * (n // 9)
    s = rng.random(2000)
    out = elo_order_sensitivity(n, a, b, s, k=1e-3, n_permutations=rows, seed=1)
    first_order = 1e-3 * (np.bincount(a, s - 0.5, n) - np.bincount(b, s - 0.5, n))
    # signal ~1e-2, second-order (order) effects ~5e-6
    assert np.abs(first_order).max() > 5e-3
    assert np.allclose(out["original"] - 1000, first_order, atol=2e-5)
    assert np.allclose(out["ratings"] - 1000, first_order, atol=2e-5)
    used = np.union1d(a, b)
    assert np.all(out["std"][used] > 0)  # but not exactly: the orders do differ
    assert np.all(np.delete(out["std"], used) == 0)


def test_order_sensitivity_zero_for_identical_votes():
    a = np.zeros(50, dtype=int)
    b = np.ones(50, dtype=int)
    s = np.ones(50)
    out = elo_order_sensitivity(3, a, b, s, n_permutations=12, seed=0)
    assert np.allclose(out["std"], 0.0)
    assert out["mean_rank_change"] == 0.0
    assert np.allclose(out["ratings"], out["original"])


def test_scores_from_outcomes_and_validation():
    from prefkit.rank.aggregate import A_WINS, B_WINS, BOTH_BAD, TIE

    assert list(scores_from_outcomes([A_WINS, B_WINS, TIE, BOTH_BAD])) == [1.0, 0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="outcome"):
        scores_from_outcomes([7])
    with pytest.raises(ValueError, match="itself"):
        online_elo(3, [0], [0], [1.0])
    with pytest.raises(ValueError, match="item ids"):
        online_elo(3, [0], [3], [1.0])
    with pytest.raises(ValueError, match="scores"):
        online_elo(3, [0], [1], [2.0])
    with pytest.raises(ValueError, match="shape"):
        online_elo(3, [0, 1], [1], [1.0])
