"""Values, limits, gradients and metrics of the reward-model losses (kind "reward").

Expected values are written out with ``math`` from the papers' formulas, independently
of the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefkit import losses
from prefkit.losses import registry

# the third pair has d = 0
RW = [1.0, -0.5, 2.0, 3.0]
RL = [0.0, 1.5, 2.0, -1.0]
MARGINS = [1.0, 0.0, 2.0, 3.0]

REWARD_LOSSES = {"bt", "bt_ties", "pl_rm", "regression", "reward_centering", "gpm", "odin"}


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return math.exp(logsig(x))


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


# ---------------------------------------------------------------- registry


def test_registered_reward_losses():
    assert "reward" in losses.KINDS
    assert set(losses.available("reward")) == REWARD_LOSSES
    for name in REWARD_LOSSES:
        s = losses.spec(name)
        assert s.kind == "reward"
        assert s.needs_reference is False
        assert "Formula" in (s.fn.__doc__ or "")
    assert losses.spec("bt").inputs == ("chosen_rewards", "rejected_rewards")
    assert losses.spec("bt").optional_inputs == ("margins", "soft_labels")
    assert losses.spec("bt").hyperparameters == {"margin_scale": 1.0, "label_smoothing": 0.0}
    assert losses.spec("bt_ties").hyperparameters == {"theta": 1.5}
    assert losses.spec("reward_centering").hyperparameters == {"coefficient": 1.0}
    assert losses.spec("pl_rm").optional_inputs == ("scores", "mask")
    assert losses.spec("regression").optional_inputs == ("target_mask",)


def test_kind_inference_for_reward_inputs(scratch_registry):
    @losses.register("toy_rm")
    def toy_rm(chosen_rewards, rejected_rewards):
        """Toy."""
        return chosen_rewards - rejected_rewards, {}

    @losses.register("toy_list_rm")
    def toy_list_rm(rewards, scores, mask=None):
        """Toy."""
        return rewards.sum(-1), {}

    @losses.register("toy_reg")
    def toy_reg(predictions, targets):
        """Toy."""
        return predictions.sum(-1), {}

    for name in ("toy_rm", "toy_list_rm", "toy_reg"):
        assert losses.spec(name).kind == "reward"
        assert losses.spec(name).needs_reference is False


def test_combine_bt_and_reward_centering_by_hand():
    inp = {"chosen_rewards": t64(RW), "rejected_rewards": t64(RL)}
    fn = losses.combine([("bt", 1.0), ("reward_centering", 0.01)])
    loss, m = losses.call_loss(fn, inp)
    want = [-logsig(w - rl) + 0.01 * (w + rl) ** 2 for w, rl in zip(RW, RL, strict=True)]
    assert loss.tolist() == pytest.approx(want)
    assert losses.spec(fn).kind == "reward"
    assert losses.spec(fn).needs_reference is False
    assert m["reward_centering/loss"].tolist() == pytest.approx(
        [(w + rl) ** 2 for w, rl in zip(RW, RL, strict=True)]
    )
    assert m["bt/loss"].tolist() == pytest.approx(
        [-logsig(w - rl) for w, rl in zip(RW, RL, strict=True)]
    )
    assert "accuracy" in m and "reward_centering/rewards/sum" in m
    # the same through the CLI spec string
    loss2, _ = losses.call_loss("bt+0.01*reward_centering", inp)
    torch.testing.assert_close(loss2, loss)


def test_combine_reward_kind_rules():
    with pytest.raises(losses.LossSpecError, match="different kinds"):
        losses.combine([("bt", 1.0), ("dpo", 1.0)])
    with pytest.raises(losses.LossSpecError, match="sft"):
        losses.build_loss("bt+0.1*sft")
    fn = losses.build_loss("bt(label_smoothing=0.1)+bt_ties")
    assert losses.spec(fn).kind == "reward"


# ---------------------------------------------------------------- bt


def test_bt_values_and_metrics():
    loss, m = losses.get("bt")(t64(RW), t64(RL))
    assert loss.tolist() == pytest.approx([-logsig(w - rl) for w, rl in zip(RW, RL, strict=True)])
    assert loss[2].item() == pytest.approx(math.log(2.0))  # d = 0
    assert m["accuracy"].tolist() == [1.0, 0.0, 0.5, 1.0]
    assert m["margin"].tolist() == pytest.approx([1.0, -2.0, 0.0, 4.0])
    assert m["rewards/chosen"].tolist() == RW and m["rewards/rejected"].tolist() == RL
    assert all(v.shape == (4,) and not v.requires_grad for v in m.values())


def test_bt_margin_shifts_the_logit():
    loss, m = losses.get("bt")(t64(RW), t64(RL), t64(MARGINS), margin_scale=0.5)
    want = [-logsig(w - rl - 0.5 * mg) for w, rl, mg in zip(RW, RL, MARGINS, strict=True)]
    assert loss.tolist() == pytest.approx(want)
    assert m["margin"].tolist() == pytest.approx([1.0, -2.0, 0.0, 4.0])  # reward gap only


def test_bt_label_smoothing_and_soft_labels():
    eps = 0.2
    loss, _ = losses.get("bt")(t64(RW), t64(RL), label_smoothing=eps)
    want = [
        -(1 - eps) * logsig(w - rl) - eps * logsig(rl - w) for w, rl in zip(RW, RL, strict=True)
    ]
    assert loss.tolist() == pytest.approx(want)

    p = [0.9, 0.3, 0.5, 1.0]
    loss, _ = losses.get("bt")(t64(RW), t64(RL), soft_labels=t64(p), label_smoothing=eps)
    want = [
        -(q * logsig(w - rl) + (1 - q) * logsig(rl - w)) for w, rl, q in zip(RW, RL, p, strict=True)
    ]
    assert loss.tolist() == pytest.approx(want)  # soft labels override the smoothing

    plain, _ = losses.get("bt")(t64(RW), t64(RL))
    ones, _ = losses.get("bt")(t64(RW), t64(RL), soft_labels=torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(ones, plain)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.get("bt")(t64(RW), t64(RL), label_smoothing=0.7)


# ---------------------------------------------------------------- bt_ties


def _rao_kupper(d: float, theta: float) -> tuple[float, float]:
    nu = math.log(theta)
    win = sig(d - nu)
    tie = 1.0 - sig(d - nu) - sig(-d - nu)
    return win, tie


def test_bt_ties_values():
    theta = 1.5
    ties = [False, True, True, False]
    loss, m = losses.get("bt_ties")(t64(RW), t64(RL), torch.tensor(ties), theta=theta)
    want = []
    for w, rl, tie in zip(RW, RL, ties, strict=True):
        p_win, p_tie = _rao_kupper(w - rl, theta)
        want.append(-math.log(p_tie if tie else p_win))
    assert loss.tolist() == pytest.approx(want)
    assert m["prob/tie"].tolist() == pytest.approx(
        [_rao_kupper(w - rl, theta)[1] for w, rl in zip(RW, RL, strict=True)]
    )
    # Rao-Kupper closed form of P(tie) at d = 0: (theta^2 - 1) / (1 + theta)^2
    assert m["prob/tie"][2].item() == pytest.approx((theta**2 - 1) / (1 + theta) ** 2)
    assert m["accuracy"].tolist() == [1.0, 0.0, 0.5, 1.0]


def test_bt_ties_with_theta_one_and_no_ties_is_bt():
    bt_loss, _ = losses.get("bt")(t64(RW), t64(RL))
    for ties in (None, torch.zeros(4, dtype=torch.bool)):
        loss, m = losses.get("bt_ties")(t64(RW), t64(RL), ties, theta=1.0)
        torch.testing.assert_close(loss, bt_loss)
        assert m["prob/tie"].tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="theta"):
        losses.get("bt_ties")(t64(RW), t64(RL), theta=0.9)


def test_bt_ties_learnable_theta_gradient():
    theta = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    ties = torch.tensor([True, False, True, False])
    assert torch.autograd.gradcheck(
        lambda th: losses.get("bt_ties")(t64(RW), t64(RL), ties, theta=th)[0], (theta,)
    )


# ---------------------------------------------------------------- pl_rm


def _pl_nll(rewards: list[float], order: list[int]) -> float:
    total = 0.0
    for k in range(len(order)):
        rest = [rewards[j] for j in order[k:]]
        total -= rewards[order[k]] - math.log(sum(math.exp(r) for r in rest))
    return total


def test_pl_rm_with_two_responses_is_bt():
    rewards = torch.stack([t64(RW), t64(RL)], dim=-1)
    loss, m = losses.get("pl_rm")(rewards, t64([[1.0, 0.0]] * 4))
    bt_loss, bt_m = losses.get("bt")(t64(RW), t64(RL))
    torch.testing.assert_close(loss, bt_loss)
    for key in ("accuracy", "margin", "rewards/chosen", "rewards/rejected"):
        torch.testing.assert_close(m[key], bt_m[key])


def test_pl_rm_values_ties_and_mask():
    r = [[0.5, 2.0, -1.0, 0.0], [1.0, 1.0, 3.0, float("nan")], [0.0, 0.0, 0.0, 0.0]]
    s = [[3.0, 1.0, 2.0, 0.0], [0.0, 2.0, 0.0, 9.0], [1.0, 1.0, 0.0, 0.0]]
    mask = [[True] * 4, [True, True, True, False], [True, True, True, True]]
    loss, m = losses.get("pl_rm")(t64(r), t64(s), torch.tensor(mask))
    # orders by score, best first, ties in given order, absent last and ignored
    want = [
        _pl_nll(r[0], [0, 2, 1, 3]),
        _pl_nll(r[1], [1, 0, 2]),
        _pl_nll(r[2], [0, 1, 2, 3]),
    ]
    assert loss.tolist() == pytest.approx(want)
    # row 0: pairs (0>2 ok, 0>1 wrong, 0>3 ok, 2>1 wrong, 2>3 wrong, 1>3 ok) -> 3/6
    # row 1: 1>0 (equal rewards: 1/2), 1>2 wrong -> 0.5/2; row 2: all rewards equal -> 1/2
    assert m["accuracy"].tolist() == pytest.approx([0.5, 0.25, 0.5])
    assert m["rewards/chosen"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert m["rewards/rejected"].tolist() == pytest.approx([1.0 / 3.0, 2.0, 0.0])
    assert m["margin"].tolist() == pytest.approx([0.5 - 1.0 / 3.0, -1.0, 0.0])
    # scores=None means the given order is best first
    loss_default, _ = losses.get("pl_rm")(t64(r[:1]))
    assert loss_default.item() == pytest.approx(_pl_nll(r[0], [0, 1, 2, 3]))


# ---------------------------------------------------------------- regression


def test_regression_values_with_missing_attributes():
    pred = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    targ = [[1.5, float("nan"), 1.0], [1.0, 2.0, 3.0]]
    mask = [[True, False, True], [True, True, True]]
    pt = t64(pred).requires_grad_(True)
    loss, m = losses.get("regression")(pt, t64(targ), torch.tensor(mask))
    assert loss.tolist() == pytest.approx([(0.25 + 4.0) / 2, (1.0 + 4.0 + 9.0) / 3])
    assert m["mse"].tolist() == pytest.approx(loss.tolist())
    assert m["mse/0"].tolist() == pytest.approx([0.25, 1.0])
    assert m["mse/1"].tolist() == pytest.approx([0.0, 4.0])
    assert m["mse/2"].tolist() == pytest.approx([4.0, 9.0])
    loss.sum().backward()
    torch.testing.assert_close(pt.grad, t64([[-0.5, 0.0, 2.0], [-2.0 / 3, -4.0 / 3, -2.0]]))
    # no mask: plain mean over attributes
    loss, _ = losses.get("regression")(t64(pred[1:]), t64(targ[1:]))
    assert loss.item() == pytest.approx(14.0 / 3)


# ---------------------------------------------------------------- reward_centering


def test_reward_centering_value():
    loss, m = losses.get("reward_centering")(t64(RW), t64(RL), coefficient=0.5)
    assert loss.tolist() == pytest.approx(
        [0.5 * (w + rl) ** 2 for w, rl in zip(RW, RL, strict=True)]
    )
    assert m["rewards/sum"].tolist() == pytest.approx(
        [w + rl for w, rl in zip(RW, RL, strict=True)]
    )


# ---------------------------------------------------------------- GPM


def test_gpm_logit_formula_and_antisymmetry():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 6, generator=g, dtype=torch.float64)
    b = torch.randn(5, 6, generator=g, dtype=torch.float64)
    got = losses.gpm_logit(a, b)
    al, bl = a.tolist(), b.tolist()
    want = [
        sum(x[2 * k] * y[2 * k + 1] - x[2 * k + 1] * y[2 * k] for k in range(3))
        for x, y in zip(al, bl, strict=True)
    ]
    assert got.tolist() == pytest.approx(want)
    torch.testing.assert_close(losses.gpm_logit(b, a), -got)
    torch.testing.assert_close(losses.gpm_logit(a, a), torch.zeros(5, dtype=torch.float64))
    lam = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    scaled = losses.gpm_logit(a, b, lam.expand(5, 3))
    want_scaled = [
        sum(lam[k].item() * (x[2 * k] * y[2 * k + 1] - x[2 * k + 1] * y[2 * k]) for k in range(3))
        for x, y in zip(al, bl, strict=True)
    ]
    assert scaled.tolist() == pytest.approx(want_scaled)
    row_scale = torch.arange(1.0, 6.0, dtype=torch.float64)
    torch.testing.assert_close(losses.gpm_logit(a, b, row_scale), row_scale * got)
    torch.testing.assert_close(losses.gpm_logit(a, b, 0.5), 0.5 * got)
    torch.testing.assert_close(losses.gpm_logit(a, b, t64(0.5)), 0.5 * got)
    with pytest.raises(ValueError, match="even"):
        losses.gpm_logit(torch.ones(2, 3), torch.ones(2, 3))


def test_gpm_rock_paper_scissors_is_cyclic():
    def unit(deg: float) -> list[float]:
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    rock, paper, scissors = t64(unit(0.0)), t64(unit(240.0)), t64(unit(120.0))
    r_s = losses.gpm_logit(rock, scissors).item()
    s_p = losses.gpm_logit(scissors, paper).item()
    p_r = losses.gpm_logit(paper, rock).item()
    # each beats the next with the same strength sin(120 deg)
    for v in (r_s, s_p, p_r):
        assert v == pytest.approx(math.sin(math.radians(120.0)))
    # a scalar reward would need u(r) > u(s) > u(p) > u(r): impossible
    assert r_s > 0 and s_p > 0 and p_r > 0
    ew = torch.stack([rock, scissors, paper])
    el = torch.stack([scissors, paper, rock])
    _, m = losses.get("gpm")(ew, el)
    assert m["accuracy"].tolist() == [1.0, 1.0, 1.0]


def test_gpm_loss_values():
    ew = t64([[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, -1.0, 0.0]])
    el = t64([[0.0, 1.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 0.5, 2.0]])
    h = [1.0, 0.0, (2 * 3 - 1 * 1) + (-1 * 2 - 0 * 0.5)]
    loss, m = losses.get("gpm")(ew, el, beta=2.0)
    assert loss.tolist() == pytest.approx([-logsig(2 * x) for x in h])
    assert m["margin"].tolist() == pytest.approx([2 * x for x in h])
    assert m["accuracy"].tolist() == [1.0, 0.5, 1.0]
    p = [1.0, 1.0, 1.0]
    soft, _ = losses.get("gpm")(ew, el, soft_labels=t64(p), beta=2.0)
    torch.testing.assert_close(soft, loss)
    sm, _ = losses.get("gpm")(ew, el, label_smoothing=0.1)
    assert sm.tolist() == pytest.approx([-0.9 * logsig(x) - 0.1 * logsig(-x) for x in h])
    scale = t64([0.5, 1.0, 2.0])
    sc, _ = losses.get("gpm")(ew, el, scale)
    assert sc.tolist() == pytest.approx(
        [-logsig(s * x) for s, x in zip([0.5, 1.0, 2.0], h, strict=True)]
    )
    nrm, _ = losses.get("gpm")(ew[:1], el[:1], normalize=True)
    assert nrm.item() == pytest.approx(-logsig(1.0 / math.sqrt(1.5)))


# ---------------------------------------------------------------- ODIN


def _odin_inputs(q_w, q_l, s_w, s_l, len_w, len_l, **extra):
    d = {
        "chosen_rewards": t64(q_w),
        "rejected_rewards": t64(q_l),
        "chosen_length_rewards": t64(s_w),
        "rejected_length_rewards": t64(s_l),
        "chosen_lengths": t64(len_w),
        "rejected_lengths": t64(len_l),
    }
    d.update(extra)
    return d


def test_odin_decorrelation_term_equals_coef_when_quality_is_proportional():
    len_w, len_l = [10.0, 20.0, 5.0], [30.0, 15.0, 25.0]
    q_w, q_l = [0.1 * x for x in len_w], [0.1 * x for x in len_l]
    s = [0.7, 0.7, 0.7]  # constant length head: correlation 0
    inp = _odin_inputs(q_w, q_l, s, s, len_w, len_l)
    loss, m = losses.call_loss("odin", inp, decorr_coef=0.3, length_coef=2.0)
    bt_part = [-logsig(w - rl) for w, rl in zip(q_w, q_l, strict=True)]
    assert (loss - t64(bt_part)).tolist() == pytest.approx([0.3] * 3)
    assert m["corr/quality_length"].tolist() == pytest.approx([1.0] * 3)
    assert m["corr/length_length"].tolist() == pytest.approx([0.0] * 3)
    # anti-proportional quality: |corr| = 1 too
    inp = _odin_inputs([-x for x in q_w], [-x for x in q_l], s, s, len_w, len_l)
    loss, m = losses.call_loss("odin", inp, decorr_coef=0.3)
    bt_part = [-logsig(-(w - rl)) for w, rl in zip(q_w, q_l, strict=True)]
    assert (loss - t64(bt_part)).tolist() == pytest.approx([0.3] * 3)
    assert m["corr/quality_length"].tolist() == pytest.approx([-1.0] * 3)


def test_odin_full_value_by_hand():
    q_w, q_l = [1.0, 0.2, -0.5], [0.0, 0.4, 0.3]
    s_w, s_l = [0.3, 0.9, 0.1], [0.5, 0.2, 0.6]
    len_w, len_l = [12.0, 40.0, 7.0], [20.0, 18.0, 33.0]
    qw, lw = t64([1.0, 2.0, 0.0]), t64([0.5, -1.0, 3.0])
    inp = _odin_inputs(q_w, q_l, s_w, s_l, len_w, len_l, quality_weight=qw, length_weight=lw)
    loss, m = losses.call_loss("odin", inp, length_coef=0.5, decorr_coef=2.0, ortho_coef=0.1)
    lens = len_w + len_l
    rho_q = pearson(q_w + q_l, lens)
    rho_s = pearson(s_w + s_l, lens)
    cos = (0.5 - 2.0 + 0.0) / (math.sqrt(5.0) * math.sqrt(0.25 + 1.0 + 9.0))
    batch = -0.5 * rho_s + 2.0 * abs(rho_q) + 0.1 * abs(cos)
    want = [
        -logsig((a + c) - (b + e)) + batch for a, b, c, e in zip(q_w, q_l, s_w, s_l, strict=True)
    ]
    assert loss.tolist() == pytest.approx(want)
    assert m["corr/quality_length"].tolist() == pytest.approx([rho_q] * 3)
    assert m["corr/length_length"].tolist() == pytest.approx([rho_s] * 3)
    assert m["cos/heads"].tolist() == pytest.approx([cos] * 3)
    assert m["accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert m["total/accuracy"].tolist() == [1.0, 1.0, 0.0]
    assert all(v.shape == (3,) and not v.requires_grad for v in m.values())


def test_odin_constant_batch_has_finite_gradients():
    q = t64([1.0, 1.0]).requires_grad_(True)
    s = t64([0.0, 0.0]).requires_grad_(True)
    inp = _odin_inputs([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0])
    inp["chosen_rewards"], inp["chosen_length_rewards"] = q, s
    loss, m = losses.call_loss("odin", inp)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(q.grad).all()
    assert torch.isfinite(s.grad).all()
    assert m["corr/quality_length"].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- limits and gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_are_finite(dtype):
    w = torch.tensor([0.0, 1e4, -1e4], dtype=dtype)  # d = 0, +1e4, -1e4
    lo = torch.zeros(3, dtype=dtype)
    cases = {
        "bt": lambda x: losses.get("bt")(x, lo, torch.ones(3, dtype=dtype), label_smoothing=0.1),
        "bt_soft": lambda x: losses.get("bt")(x, lo, soft_labels=torch.full((3,), 0.7)),
        "bt_ties": lambda x: losses.get("bt_ties")(x, lo, torch.tensor([True, True, False])),
        "bt_ties_win": lambda x: losses.get("bt_ties")(x, lo, torch.tensor([False] * 3)),
        "pl_rm": lambda x: losses.get("pl_rm")(torch.stack([x, lo, -x], -1)),
        "gpm": lambda x: losses.get("gpm")(
            torch.stack([x, torch.ones_like(x)], -1), torch.stack([lo, torch.ones_like(x)], -1)
        ),
        "odin": lambda x: losses.get("odin")(
            x, lo, lo, lo, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])
        ),
        "reward_centering": lambda x: losses.get("reward_centering")(x, lo),
        "regression": lambda x: losses.get("regression")(x.unsqueeze(-1), lo.unsqueeze(-1)),
    }
    for name, fn in cases.items():
        x = w.clone().requires_grad_(True)
        loss, _ = fn(x)
        loss.sum().backward()
        assert torch.isfinite(loss).all(), name
        assert torch.isfinite(x.grad).all(), name
    # the limits themselves: loss -> 0 for a huge positive margin, -> |d| for a negative one
    loss, _ = losses.get("bt")(w, lo)
    assert loss.tolist() == pytest.approx([math.log(2.0), 0.0, 1e4])
    loss, _ = losses.get("bt_ties")(w, lo, torch.tensor([False, True, True]), theta=1.5)
    nu = math.log(1.5)
    assert loss[1].item() == pytest.approx(1e4 - math.log(1.5**2 - 1) + nu, rel=1e-6)
    assert loss[2].item() == pytest.approx(1e4 - math.log(1.5**2 - 1) + nu, rel=1e-6)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    margins, soft = t64([0.5, 1.0, 0.0]), t64([0.8, 0.3, 1.0])
    assert torch.autograd.gradcheck(
        lambda a, b: losses.get("bt")(a, b, margins, label_smoothing=0.1)[0], (rnd(3), rnd(3))
    )
    assert torch.autograd.gradcheck(
        lambda a, b: losses.get("bt")(a, b, margins, soft)[0], (rnd(3), rnd(3))
    )
    ties = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(
        lambda a, b: losses.get("bt_ties")(a, b, ties, theta=1.7)[0], (rnd(3), rnd(3))
    )
    scores = t64([[2.0, 1.0, 1.0, 0.0], [0.0, 3.0, 1.0, 2.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    assert torch.autograd.gradcheck(lambda r: losses.get("pl_rm")(r, scores, mask)[0], (rnd(2, 4),))
    assert torch.autograd.gradcheck(
        lambda a, b, s: losses.get("gpm")(a, b, s, beta=0.7, label_smoothing=0.05)[0],
        (rnd(3, 4), rnd(3, 4), rnd(3, 2)),
    )
    assert torch.autograd.gradcheck(
        lambda a, b: losses.get("gpm")(a, b, normalize=True)[0], (rnd(3, 4), rnd(3, 4))
    )
    log_scale = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, ls: losses.get("gpm")(a, b, ls.exp())[0], (rnd(3, 4), rnd(3, 4), log_scale)
    )
