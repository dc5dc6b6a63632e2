"""Values of the online-RL maths in prefkit.losses.rl against hand numbers and references."""

from __future__ import annotations

import math

import pytest
import torch

import prefkit.losses
from prefkit.losses import rl

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


def close(a, b, tol=1e-6):
    b = b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=a.dtype)
    torch.testing.assert_close(a, b.to(a.dtype), rtol=0.0, atol=tol)


SCORES = [[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]]


# --------------------------------------------------------------------------- access


def test_module_access_and_registries():
    assert prefkit.losses.rl is rl
    assert rl.get_advantage("grpo") is rl.grpo
    assert rl.get_advantage("rloo") is rl.rloo
    assert rl.get_policy_loss("ppo_clip") is rl.ppo_clip
    assert set(rl.ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "remax", "reinforce", "gae"}
    assert set(rl.POLICY_LOSSES) == {"ppo_clip", "vanilla_pg"}
    for name in rl.__all__:
        assert hasattr(rl, name), name


def test_unknown_names_list_the_options():
    with pytest.raises(ValueError, match=r"available: dr_grpo, gae, grpo, reinforce, remax, rloo"):
        rl.get_advantage("ppo")
    with pytest.raises(ValueError, match=r"available: ppo_clip, vanilla_pg"):
        rl.get_policy_loss("grpo")
    with pytest.raises(ValueError, match=r"k1, k2, k3, abs"):
        rl.kl_penalty(t([0.0]), t([0.0]), kind="k4")
    with pytest.raises(ValueError, match="token_mean"):
        rl.aggregate(t([[1.0]]), t([[1.0]]), "seq_sum")
    with pytest.raises(ValueError, match="mean or none"):
        rl.reinforce(t(SCORES), baseline="median")


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="already registered"):
        rl.register_advantage("grpo")(lambda s: s)
    assert rl.ADVANTAGE_ESTIMATORS["grpo"] is rl.grpo


# --------------------------------------------------------------------------- advantages


def test_grpo_unbiased_std():
    adv = rl.grpo(t(SCORES), eps=0.0)
    s = math.sqrt(14.0 / 3.0)  # unbiased std of (1, 2, 3, 6); population would be sqrt(3.5)
    close(
        adv,
        [
            [-2 / s, -1 / s, 0.0, 3 / s],
            [-0.866025403784, -0.866025403784, 0.866025403784, 0.866025403784],
        ],
        1e-9,
    )
    close(adv[0], [-0.9258201, -0.4629100, 0.0, 1.3887301])
    # default eps only perturbs slightly; an all-equal group gives 0, not nan
    close(rl.grpo(t(SCORES)), adv, 1e-5)
    close(rl.grpo(t([[2.0, 2.0, 2.0]])), [[0.0, 0.0, 0.0]], 0.0)


def test_dr_grpo_mean_only():
    expected = [[-2.0, -1.0, 0.0, 3.0], [-0.5, -0.5, 0.5, 0.5]]
    close(rl.grpo(t(SCORES), scale=False), expected, 1e-12)
    close(rl.get_advantage("dr_grpo")(t(SCORES)), expected, 1e-12)


def test_rloo_leave_one_out():
    close(rl.rloo(t([[1.0, 2.0, 3.0, 6.0]])), [[-2.6666667, -1.3333333, 0.0, 4.0]])
    close(rl.rloo(t(SCORES))[1], [-0.6666667, -0.6666667, 0.6666667, 0.6666667])
    close(rl.rloo(t([[1.0, 5.0]])), [[-4.0, 4.0]], 1e-12)


@pytest.mark.parametrize("fn,name", [(rl.grpo, "GRPO"), (rl.rloo, "RLOO"), (rl.dr_grpo, "GRPO")])
def test_group_size_one_rejected(fn, name):
    with pytest.raises(ValueError, match=rf"{name} needs at least 2 .*group size G=1.*num_gen"):
        fn(t([[1.0], [2.0]]))


def test_group_methods_reject_flat_scores():
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        rl.grpo(t([1.0, 2.0, 3.0]))


def test_remax_subtracts_greedy_reward():
    adv = rl.remax(t(SCORES), baseline_scores=t([2.0, 1.0]))
    close(adv, [[-1.0, 0.0, 1.0, 4.0], [-1.0, -1.0, 0.0, 0.0]], 1e-12)
    with pytest.raises(ValueError, match="baseline_scores"):
        rl.remax(t(SCORES), baseline_scores=t([2.0]))


def test_reinforce_batch_mean_baseline():
    # batch mean over all 8 rewards = 14 / 8 = 1.75
    close(
        rl.reinforce(t(SCORES)),
        [[-0.75, 0.25, 1.25, 4.25], [-1.75, -1.75, -0.75, -0.75]],
        1e-12,
    )
    close(rl.reinforce(t(SCORES), baseline="none"), SCORES, 0.0)


def test_bool_scores_become_float():
    adv = rl.grpo(torch.tensor([[True, False, False, True]]), scale=False)
    assert adv.dtype == torch.get_default_dtype()
    close(adv, [[0.5, -0.5, -0.5, 0.5]], 1e-7)


# --------------------------------------------------------------------------- GAE


def _gae_reference(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = int(mask[b].sum())
        last_a = 0.0
        for i in reversed(range(n)):
            next_v = float(values[b, i + 1]) if i + 1 < n else 0.0
            delta = float(rewards[b, i]) + gamma * next_v - float(values[b, i])
            last_a = delta + gamma * lam * last_a
            adv[b][i] = last_a
            ret[b][i] = last_a + float(values[b, i])
    return torch.tensor(adv, dtype=D), torch.tensor(ret, dtype=D)


def test_gae_gamma_lam_one_is_reverse_cumsum():
    rewards = t([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 0.0]])
    values = t([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    adv, ret = rl.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(ret, [[10.0, 9.0, 7.0, 4.0], [-0.5, -1.0, 0.0, 0.0]], 1e-12)
    close(adv, [[9.9, 8.8, 6.7, 3.6], [-1.5, -3.0, 0.0, 0.0]], 1e-12)


def test_gae_hand_values():
    # T = 2, gamma = 0.5, lam = 0.5: d1 = 1 - 2 = -1; d0 = 0 + 0.5 * 2 - 1 = 0; A0 = 0 - 0.25
    adv, ret = rl.gae(t([[0.0, 1.0]]), t([[1.0, 2.0]]), t([[1.0, 1.0]]), gamma=0.5, lam=0.5)
    close(adv, [[-0.25, -1.0]], 1e-12)
    close(ret, [[0.75, 1.0]], 1e-12)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_matches_double_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 7, 9
    rewards = torch.randn(B, T, generator=g, dtype=D)
    values = torch.randn(B, T, generator=g, dtype=D)
    lengths = torch.tensor([9, 1, 5, 0, 3, 8, 2])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    # garbage in the padding must not leak
    rewards = torch.where(mask, rewards, float("nan"))
    values = torch.where(mask, values, float("inf"))
    adv, ret = rl.gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=0.0, atol=1e-10)
    torch.testing.assert_close(ret, ref_ret, rtol=0.0, atol=1e-10)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)
    assert adv[3].abs().sum() == 0  # empty row


def test_gae_outputs_are_detached():
    values = torch.randn(2, 3, dtype=D, requires_grad=True)
    adv, ret = rl.gae(torch.ones(2, 3, dtype=D), values, torch.ones(2, 3, dtype=torch.bool))
    assert not adv.requires_grad and not ret.requires_grad


# --------------------------------------------------------------------------- rewards helpers


def test_token_rewards_shaping():
    scores = t([1.0, 2.0, 5.0])
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    out = rl.token_rewards(scores, kl, mask, kl_coef=0.5)
    close(out, [[-0.05, 0.9, 0.0], [-0.2, -0.25, 1.7], [0.0, 0.0, 0.0]], 1e-12)
    close(rl.token_rewards(scores, kl, mask, kl_coef=0.0), [[0, 1, 0], [0, 0, 2], [0, 0, 0]], 0.0)


def test_whiten_masked():
    g = torch.Generator().manual_seed(1)
    x = 3.0 + 2.0 * torch.randn(4, 6, generator=g, dtype=D)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 4, 1])[:, None]
    y = rl.whiten(x, mask)
    vals = y[mask]
    close(vals.mean(), 0.0, 1e-10)
    close(vals.var(unbiased=False), 1.0, 1e-6)
    assert torch.all(y[~mask] == 0)
    y2 = rl.whiten(x, mask, shift_mean=False)
    close(y2[mask].mean(), x[mask].mean(), 1e-10)
    close(y2[mask].var(unbiased=False), 1.0, 1e-6)
    assert torch.all(y2[~mask] == 0)
    # whitening only sees the masked entries
    close(vals, rl.whiten(x[mask]), 1e-12)
    z = rl.whiten(x)
    close(z.mean(), 0.0, 1e-10)
    close(z.var(unbiased=False), 1.0, 1e-6)
    close(rl.whiten(t([1.0, 3.0]), eps=0.0), [-1.0, 1.0], 1e-12)


def test_broadcast_to_tokens():
    out = rl.broadcast_to_tokens(t([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    close(out, [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]], 0.0)


def test_length_penalty():
    close(rl.length_penalty(t([1.0, 2.0]), torch.tensor([10, 30]), coef=0.01), [0.9, 1.7], 1e-12)


# --------------------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_estimators_expectations(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(5, generator=g, dtype=D), 0)
    q = torch.softmax(torch.randn(5, generator=g, dtype=D), 0)
    logp, logq = p.log(), q.log()
    exact = torch.distributions.kl_divergence(
        torch.distributions.Categorical(probs=p), torch.distributions.Categorical(probs=q)
    )
    assert exact > 1e-3
    e = {k: (p * rl.kl_penalty(logp, logq, k)).sum() for k in ("k1", "k2", "k3", "abs")}
    close(e["k1"], exact, 1e-10)
    close(e["k3"], exact, 1e-10)
    close(e["k2"], 0.5 * (p * (logp - logq) ** 2).sum(), 1e-10)
    close(e["abs"], (p * (logp - logq).abs()).sum(), 1e-10)
    assert torch.all(rl.kl_penalty(logp, logq, "k3") >= 0)
    assert torch.all(rl.kl_penalty(logp, logq, "k2") >= 0)
    for k in ("k1", "k2", "k3", "abs"):
        assert torch.all(rl.kl_penalty(logp, logp.clone(), k) == 0), k


def test_kl_elementwise_values_and_k3_clamp():
    logps, ref = t([0.0, -1.0, -2.0]), t([-1.0, -1.0, 0.0])
    close(rl.kl_penalty(logps, ref, "k1"), [1.0, 0.0, -2.0], 1e-12)
    close(rl.kl_penalty(logps, ref, "k2"), [0.5, 0.0, 2.0], 1e-12)
    close(rl.kl_penalty(logps, ref, "abs"), [1.0, 0.0, 2.0], 1e-12)
    # k3 = exp(r) - 1 - r with r = ref - logps = (-1, 0, 2)
    close(rl.kl_penalty(logps, ref, "k3"), [math.exp(-1) - 1 + 1, 0.0, math.exp(2) - 3], 1e-12)
    big = rl.kl_penalty(t([0.0, -100.0], torch.float32), t([-100.0, 0.0], torch.float32), "k3")
    assert torch.isfinite(big).all()
    expected = torch.tensor([math.exp(-20) - 1 + 20, math.exp(20) - 1 - 20])
    torch.testing.assert_close(big, expected, rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- policy losses


def _ppo_case():
    ratios = t([[1.1, 1.5, 1.5], [0.5, 0.5, 2.0]])
    adv = t([[2.0, 2.0, -1.0], [-1.0, 1.0, 3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    old = t([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]])
    return old + ratios.log(), old, adv, mask


def test_ppo_clip_hand_values():
    logps, old, adv, mask = _ppo_case()
    loss, m = rl.ppo_clip(logps, old, adv, mask, clip_eps=0.2)
    # (1.1, +2): inside -> -2.2 | (1.5, +2): clipped 1.2*2 -> -2.4 | (1.5, -1): unclipped 1.5
    # (0.5, -1): clipped 0.8 | (0.5, +1): unclipped -0.5 | masked -> 0
    close(loss, [[-2.2, -2.4, 1.5], [0.8, -0.5, 0.0]], 1e-12)
    close(m["clipfrac"], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], 0.0)
    close(m["ratio"], [[1.1, 1.5, 1.5], [0.5, 0.5, 0.0]], 1e-12)
    lr = [[math.log(1.1), math.log(1.5), math.log(1.5)], [math.log(0.5), math.log(0.5), 0.0]]
    close(m["approx_kl"], 0.5 * t(lr) ** 2, 1e-12)


def test_ppo_clip_decoupled_upper_clip():
    logps, old, adv, mask = _ppo_case()
    loss, m = rl.ppo_clip(logps, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    close(loss, [[-2.2, -2.56, 1.5], [0.8, -0.5, 0.0]], 1e-12)
    close(m["clipfrac"], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], 0.0)
    loss0, _ = rl.ppo_clip(logps, old, adv, mask, clip_eps=0.2, clip_eps_high=0.0)
    close(loss0[0, :2], [-2.0, -2.0], 1e-12)  # 0.0 is honoured, not treated as "unset"


def test_ppo_clip_gradient_equals_vanilla_pg_on_policy():
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 5, generator=g, dtype=D) * 3
    adv = torch.randn(3, 5, generator=g, dtype=D)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 4])[:, None]
    lp1 = old.clone().requires_grad_(True)
    lp2 = old.clone().requires_grad_(True)
    loss1, m1 = rl.ppo_clip(lp1, old, adv, mask)
    loss2, m2 = rl.get_policy_loss("vanilla_pg")(lp2, old, adv, mask)
    loss1.sum().backward()
    loss2.sum().backward()
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=0.0, atol=1e-12)
    close(lp1.grad, torch.where(mask, -adv, 0.0), 1e-12)
    assert m1["clipfrac"].sum() == 0
    close(m2["ratio"], mask.to(D), 1e-12)
    close(loss2, torch.where(mask, -adv * old, 0.0), 1e-12)


def test_ppo_clip_padding_garbage_and_float32():
    logps = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.2, float("nan")]])
    adv = torch.tensor([[1.0, float("nan")]])
    mask = torch.tensor([[True, False]])
    loss, m = rl.ppo_clip(logps, old, adv, mask)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logps.grad).all()
    assert logps.grad[0, 1] == 0
    assert all(torch.isfinite(v).all() and not v.requires_grad for v in m.values())


def test_value_loss_clipped_and_unclipped():
    values = t([[1.0, 1.0, 0.6, 5.0]])
    old = t([[0.5, 0.5, 0.5, 0.0]])
    returns = t([[0.0, 2.0, 2.0, 0.0]])
    mask = t([[1.0, 1.0, 1.0, 0.0]])
    loss, m = rl.value_loss(values, old, returns, mask, clip_range=0.2)
    # v_clip = 0.7, 0.7, 0.6: max(1, 0.49) | max(1, 1.69) | 1.96 both (inside the range)
    close(loss, [[0.5, 0.845, 0.98, 0.0]], 1e-12)
    close(m["vf_clipfrac"], [[0.0, 1.0, 0.0, 0.0]], 0.0)
    loss_u, m_u = rl.value_loss(values, old, returns, mask, clip_range=None)
    close(loss_u, [[0.5, 0.5, 0.98, 0.0]], 1e-12)
    close(m_u["vf_clipfrac"], [[0.0, 0.0, 0.0, 0.0]], 0.0)


# --------------------------------------------------------------------------- aggregation


X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
M = [[1, 1, 0], [1, 1, 1], [0, 0, 0]]


def test_aggregate_modes_hand_values():
    x, mask = t(X), torch.tensor(M)
    total, count = rl.aggregate(x, mask, "token_mean")
    close(total, 18.0, 1e-12)
    close(count, 5.0, 0.0)
    assert count.dtype == D
    total, count = rl.aggregate(x, mask, "seq_mean_token_mean")
    close(total, 6.5, 1e-12)  # 1.5 + 5
    close(count, 2.0, 0.0)
    total, count = rl.aggregate(x, mask, "seq_mean_token_sum_norm", max_tokens=4)
    close(total, 4.5, 1e-12)  # 3/4 + 15/4
    close(count, 2.0, 0.0)
    with pytest.raises(ValueError, match="max_tokens"):
        rl.aggregate(x, mask, "seq_mean_token_sum_norm")
    total, count = rl.aggregate(x, mask.bool())
    close(total / count, 3.6, 1e-12)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_micro_batch_invariance(mode):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 6, generator=g, dtype=D)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 1, 3, 0, 5, 2, 6, 4])[:, None]
    kw = {"max_tokens": 6} if mode == "seq_mean_token_sum_norm" else {}
    whole_t, whole_c = rl.aggregate(x, mask, mode, **kw)
    parts = [rl.aggregate(x[s], mask[s], mode, **kw) for s in (slice(0, 3), slice(3, 8))]
    total = sum(p[0] for p in parts)
    count = sum(p[1] for p in parts)
    close(total / count, whole_t / whole_c, 1e-12)
    if mode == "token_mean":
        close(whole_t / whole_c, x[mask].mean(), 1e-12)
    if mode == "seq_mean_token_mean":
        rows = [x[b, mask[b]].mean() for b in range(8) if mask[b].any()]
        close(whole_t / whole_c, torch.stack(rows).mean(), 1e-12)


# --------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_updates_and_clipping():
    c = rl.AdaptiveKLController(init_coef=1.0, target=1.0, horizon=100)
    c.update(1.1, 10)  # err 0.1 -> * 1.01
    assert c.value == pytest.approx(1.01, abs=1e-12)
    c.update(5.0, 10)  # err 4 clipped to 0.2 -> * 1.02
    assert c.value == pytest.approx(1.0302, abs=1e-12)
    c.update(torch.tensor(0.0), 10)  # err -1 clipped to -0.2 -> * 0.98
    assert c.value == pytest.approx(1.009596, abs=1e-12)
    c2 = rl.AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    c2.update(6.6, 256)  # err 0.1 -> 0.1 * (1 + 0.1 * 0.0256)
    assert c2.value == pytest.approx(0.100256, abs=1e-12)
    restored = rl.AdaptiveKLController(init_coef=5.0, target=1.0, horizon=100)
    restored.load_state_dict(c.state_dict())
    assert restored.value == c.value


def test_fixed_kl_controller():
    c = rl.FixedKLController(0.05)
    c.update(100.0, 1000)
    assert c.value == 0.05
    c2 = rl.FixedKLController(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


# --------------------------------------------------------------------------- running moments


def test_running_moments_three_batches():
    g = torch.Generator().manual_seed(5)
    batches = [
        torch.randn(7, generator=g) * 3 + 1,
        torch.randn(2, 5, generator=g) - 4,
        torch.randn(1, generator=g) + 10,
    ]
    rm = rl.RunningMoments()
    assert rm.mean == 0.0 and rm.std == 1.0
    for b in batches:
        rm.update(b)
    rm.update(torch.empty(0))
    allx = torch.cat([b.reshape(-1) for b in batches]).to(D)
    assert rm.count == 18
    assert rm.mean == pytest.approx(float(allx.mean()), abs=1e-10)
    assert rm.var == pytest.approx(float(allx.var(unbiased=False)), abs=1e-10)
    assert rm.std == pytest.approx(float(allx.std(unbiased=False)), abs=1e-10)
    rm2 = rl.RunningMoments()
    rm2.load_state_dict(rm.state_dict())
    assert (rm2.mean, rm2.var, rm2.count) == (rm.mean, rm.var, rm.count)
