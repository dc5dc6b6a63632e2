"""Values, limits, gradients and metrics of the paired, unpaired and SFT losses.

Expected values are written out with ``math`` from the papers' formulas, independently
of the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefkit import losses

BETA = 0.1

# example 4 has equal log-probs everywhere (h = 0)
C = [-5.0, -8.0, -3.0, -4.0]
R = [-6.0, -7.0, -3.0, -4.0]
RC = [-5.5, -7.5, -4.0, -4.0]
RR = [-5.0, -7.0, -2.0, -4.0]
LC = [2.0, 4.0, 1.0, 3.0]
LR = [3.0, 2.0, 1.0, 3.0]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return math.exp(logsig(x))


def _dpo_h(c, r, rc, rr, beta=BETA):
    return beta * ((c - rc) - (r - rr))


def _fprime(rho: float, divergence: str, a: float = 0.5) -> float:
    u = math.exp(rho)
    return {
        "reverse_kl": math.log(u) + 1.0,
        "forward_kl": -1.0 / u,
        "js": math.log(2.0 * u / (1.0 + u)),
        "alpha": (1.0 - u ** (-a)) / a,
    }[divergence]


def _exo(h, eps=1e-3):
    p = sig(h)
    return p * math.log(p / (1 - eps)) + (1 - p) * math.log((1 - p) / eps)


def _orpo(c, r, lc, lr, beta=BETA):
    mw, ml = c / lc, r / lr

    def lo(m):
        return math.log(math.exp(m) / (1.0 - math.exp(m)))

    return -mw - beta * logsig(lo(mw) - lo(ml))


# name -> (hparams, expected(c, r, rc, rr, lc, lr))
EXPECTED = {
    "dpo": ({}, lambda c, r, rc, rr, lc, lr: -logsig(_dpo_h(c, r, rc, rr))),
    "cdpo": (
        {"label_smoothing": 0.2},
        lambda c, r, rc, rr, lc, lr: (
            0.8 * -logsig(_dpo_h(c, r, rc, rr)) + 0.2 * -logsig(-_dpo_h(c, r, rc, rr))
        ),
    ),
    "rdpo": (
        {"label_smoothing": 0.2},
        lambda c, r, rc, rr, lc, lr: (
            (0.8 * -logsig(_dpo_h(c, r, rc, rr)) - 0.2 * -logsig(-_dpo_h(c, r, rc, rr))) / 0.6
        ),
    ),
    "ipo": ({}, lambda c, r, rc, rr, lc, lr: ((c - rc) - (r - rr) - 1 / (2 * BETA)) ** 2),
    "hinge": ({}, lambda c, r, rc, rr, lc, lr: max(0.0, 1 - _dpo_h(c, r, rc, rr))),
    "rpo": (
        {"alpha": 0.5},
        lambda c, r, rc, rr, lc, lr: -logsig(_dpo_h(c, r, rc, rr)) + 0.5 * (-c / lc),
    ),
    "exo": ({}, lambda c, r, rc, rr, lc, lr: _exo(_dpo_h(c, r, rc, rr))),
    "bco_pair": (
        {"delta": 0.05},
        lambda c, r, rc, rr, lc, lr: (
            -logsig(BETA * (c - rc) - 0.05) - logsig(-(BETA * (r - rr) - 0.05))
        ),
    ),
    "apo_zero": (
        {},
        lambda c, r, rc, rr, lc, lr: (1 - sig(BETA * (c - rc))) + sig(BETA * (r - rr)),
    ),
    "apo_down": (
        {},
        lambda c, r, rc, rr, lc, lr: sig(BETA * (c - rc)) + (1 - sig(_dpo_h(c, r, rc, rr))),
    ),
    "nca_pair": (
        {},
        lambda c, r, rc, rr, lc, lr: (
            -logsig(BETA * (c - rc))
            - 0.5 * logsig(-BETA * (c - rc))
            - 0.5 * logsig(-BETA * (r - rr))
        ),
    ),
    "simpo": ({}, lambda c, r, rc, rr, lc, lr: -logsig(2.0 * c / lc - 2.0 * r / lr - 1.0)),
    "cpo": ({}, lambda c, r, rc, rr, lc, lr: -logsig(BETA * (c - r)) - c / lc),
    "orpo": ({}, lambda c, r, rc, rr, lc, lr: _orpo(c, r, lc, lr)),
}
for _div in ("reverse_kl", "forward_kl", "js", "alpha"):
    EXPECTED[f"fdpo:{_div}"] = (
        {"divergence": _div, "f_alpha": 0.5},
        lambda c, r, rc, rr, lc, lr, d=_div: (
            -logsig(BETA * (_fprime(c - rc, d) - _fprime(r - rr, d)))
        ),
    )

PAIRWISE = sorted(losses.available("pairwise"))


def _loss_name(key: str) -> str:
    return key.split(":")[0]


def _inputs(c=C, r=R, rc=RC, rr=RR, lc=LC, lr=LR, dtype=torch.float32, grad=False):
    t = {
        "chosen_logps": torch.tensor(c, dtype=dtype, requires_grad=grad),
        "rejected_logps": torch.tensor(r, dtype=dtype, requires_grad=grad),
        "ref_chosen_logps": torch.tensor(rc, dtype=dtype),
        "ref_rejected_logps": torch.tensor(rr, dtype=dtype),
        "chosen_lengths": torch.tensor(lc, dtype=dtype),
        "rejected_lengths": torch.tensor(lr, dtype=dtype),
    }
    return t


def test_every_pairwise_loss_has_an_expected_value():
    covered = {_loss_name(k) for k in EXPECTED}
    assert covered == set(PAIRWISE)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_pairwise_values(key):
    hp, expected = EXPECTED[key]
    loss, _ = losses.call_loss(_loss_name(key), _inputs(dtype=torch.float64), **hp)
    want = [expected(*args) for args in zip(C, R, RC, RR, LC, LR, strict=True)]
    assert loss.shape == (4,)
    assert loss.tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_equal_logps_give_log2_for_dpo_and_defaults_for_others():
    inp = _inputs(c=[-4.0], r=[-4.0], rc=[-4.0], rr=[-4.0], lc=[3.0], lr=[3.0])
    assert losses.dpo(*list(inp.values())[:4])[0].item() == pytest.approx(math.log(2))
    ipo_loss = losses.call_loss("ipo", inp)[0].item()
    assert ipo_loss == pytest.approx((1 / (2 * BETA)) ** 2)
    simpo_loss = losses.call_loss("simpo", inp)[0].item()  # gamma = 1.0 by default
    assert simpo_loss == pytest.approx(-logsig(-1.0))


def test_fdpo_reverse_kl_is_dpo():
    inp = _inputs()
    a = losses.call_loss("fdpo", inp, divergence="reverse_kl")[0]
    b = losses.call_loss("dpo", inp)[0]
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- huge margins (|h| ~ 1e4)

BIG = 1e5  # log-ratio gap; beta * BIG = 1e4
_LSE = math.log1p(-math.exp(-1.0))  # log(1 - e^-1)

# name -> (loss when chosen is far better, loss when chosen is far worse); inf = the exact
# loss overflows every dtype (f-DPO forward KL / alpha: beta * e^(a * 1e5)), see
# test_losses_exact.py
LIMITS = {
    "dpo": (0.0, 1e4),
    "cdpo": (0.1 * 1e4, 0.9 * 1e4),
    "rdpo": (-0.1 * 1e4 / 0.8, 0.9 * 1e4 / 0.8),
    "ipo": ((BIG - 5.0) ** 2, (BIG + 5.0) ** 2),
    "hinge": (0.0, 1.0 + 1e4),
    "rpo": (1.0, 1e4 + BIG + 1.0),
    "exo": (-math.log(1 - 1e-3), -math.log(1e-3)),
    "bco_pair": (math.log(2), 1e4 + math.log(2)),
    "apo_zero": (0.5, 1.5),
    "apo_down": (0.5, 1.0),
    "nca_pair": (1.5 * math.log(2), 1e4 + 0.5 * math.log(2)),
    "simpo": (0.0, 2.0 * BIG + 1.0),
    "cpo": (1.0, 1e4 + BIG + 1.0),
    "orpo": (1.0, BIG + 1.0 + 0.1 * (BIG + 1.0 + (-1.0 - _LSE))),
    "fdpo:reverse_kl": (0.0, 1e4),
    "fdpo:js": (0.0, 1e4 - 0.1 * math.log(2)),
    "fdpo:forward_kl": (0.0, math.inf),
    "fdpo:alpha": (0.0, math.inf),
}


def _big_inputs(sign: float, dtype=torch.float32):
    good, bad = [-1.0], [-1.0 - BIG]
    c, r = (good, bad) if sign > 0 else (bad, good)
    return _inputs(c=c, r=r, rc=[-1.0], rr=[-1.0], lc=[1.0], lr=[1.0], dtype=dtype, grad=True)


@pytest.mark.parametrize("key", sorted(LIMITS))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_huge_margins_have_the_exact_limit(key, sign):
    hp = dict(EXPECTED[key][0])
    hp.pop("label_smoothing", None)
    hp.pop("alpha", None)
    hp.pop("delta", None)
    if key in ("cdpo", "rdpo"):
        hp["label_smoothing"] = 0.1
    inp = _big_inputs(sign)
    loss, _ = losses.call_loss(_loss_name(key), inp, **hp)
    loss.sum().backward()
    want = LIMITS[key][0 if sign > 0 else 1]
    if math.isinf(want):
        assert loss.item() == math.inf
        assert inp["chosen_logps"].grad.item() == -math.inf  # pushed up, never NaN
        assert torch.isfinite(inp["rejected_logps"].grad).all()
        return
    assert torch.isfinite(inp["chosen_logps"].grad).all()
    assert torch.isfinite(inp["rejected_logps"].grad).all()
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-4)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo", "orpo"])
def test_gradcheck_float64(name):
    base = _inputs(dtype=torch.float64)

    def f(c, r):
        return losses.call_loss(name, {**base, "chosen_logps": c, "rejected_logps": r})[0]

    c = base["chosen_logps"].clone().requires_grad_(True)
    r = base["rejected_logps"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (c, r))


STEP_KEYS = sorted(PAIRWISE) + ["fdpo:forward_kl", "fdpo:js", "fdpo:alpha"]


@pytest.mark.parametrize("key", STEP_KEYS)
def test_one_gradient_step_lowers_loss_and_widens_margin(key):
    hp = {"divergence": key.split(":")[1]} if ":" in key else {}
    # chosen currently scored below rejected, so every loss is in its active region
    inp = _inputs(
        c=[-10.5, -20.0],
        r=[-10.2, -19.5],
        rc=[-10.0, -20.0],
        rr=[-10.0, -20.0],
        lc=[5.0, 8.0],
        lr=[4.0, 8.0],
        grad=True,
    )
    name = _loss_name(key)
    loss, _ = losses.call_loss(name, inp, **hp)
    loss.sum().backward()
    lr = 0.05
    with torch.no_grad():
        c = inp["chosen_logps"] - lr * inp["chosen_logps"].grad
        r = inp["rejected_logps"] - lr * inp["rejected_logps"].grad
    new, _ = losses.call_loss(name, {**inp, "chosen_logps": c, "rejected_logps": r}, **hp)
    assert (new < loss.detach()).all()
    old_margin = (inp["chosen_logps"] - inp["rejected_logps"]).detach()
    assert ((c - r) > old_margin).all()


# ---------------------------------------------------------------- metrics

TRL_NAMES = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
]


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_metrics_names_detached_shape(name):
    inp = _inputs(grad=True)
    loss, metrics = losses.call_loss(name, inp)
    assert loss.shape == (4,) and loss.requires_grad
    for key in TRL_NAMES:
        assert key in metrics, key
    for key, value in metrics.items():
        assert value.shape == (4,), key
        assert not value.requires_grad, key
    m = metrics["rewards/margins"]
    torch.testing.assert_close(m, metrics["rewards/chosen"] - metrics["rewards/rejected"])
    torch.testing.assert_close(metrics["rewards/accuracies"], (m > 0).float())
    torch.testing.assert_close(metrics["logps/chosen"], torch.tensor(C))


def test_dpo_reward_metrics_values():
    _, m = losses.call_loss("dpo", _inputs(dtype=torch.float64), beta=0.5)
    want_c = [0.5 * (c - rc) for c, rc in zip(C, RC, strict=True)]
    want_r = [0.5 * (r - rr) for r, rr in zip(R, RR, strict=True)]
    assert m["rewards/chosen"].tolist() == pytest.approx(want_c)
    assert m["rewards/rejected"].tolist() == pytest.approx(want_r)
    assert m["rewards/accuracies"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_bad_hyperparameters_raise():
    inp = _inputs()
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.call_loss("rdpo", inp, label_smoothing=0.5)
    with pytest.raises(ValueError, match="divergence"):
        losses.call_loss("fdpo", inp, divergence="hellinger")


# ---------------------------------------------------------------- unpaired: KTO, BCO

LOGPS = [-5.0, -6.0, -7.0, -3.0]
REF = [-5.5, -5.0, -7.0, -4.0]
LABELS = [True, False, True, False]
KL = [-4.0, -6.0, -5.0]
REF_KL = [-4.5, -5.0, -6.0]


def _kto_inputs(dtype=torch.float32, kl=KL, ref_kl=REF_KL, grad=False):
    return {
        "logps": torch.tensor(LOGPS, dtype=dtype, requires_grad=grad),
        "ref_logps": torch.tensor(REF, dtype=dtype),
        "labels": torch.tensor(LABELS),
        "kl_logps": torch.tensor(kl, dtype=dtype),
        "ref_kl_logps": torch.tensor(ref_kl, dtype=dtype),
    }


def _kto_expected(z0, wd=1.0, wu=1.0):
    out = []
    for lp, ref, good in zip(LOGPS, REF, LABELS, strict=True):
        r = BETA * (lp - ref)
        out.append(wd * (1 - sig(r - z0)) if good else wu * (1 - sig(z0 - r)))
    return out


def test_kto_values():
    z0 = max(0.0, sum(BETA * (a - b) for a, b in zip(KL, REF_KL, strict=True)) / 3)
    assert z0 > 0
    loss, m = losses.call_loss("kto", _kto_inputs(torch.float64))
    assert loss.tolist() == pytest.approx(_kto_expected(z0))
    assert m["kl"].tolist() == pytest.approx([z0] * 4)
    loss, _ = losses.call_loss(
        "kto", _kto_inputs(torch.float64), desirable_weight=2.0, undesirable_weight=0.5
    )
    assert loss.tolist() == pytest.approx(_kto_expected(z0, 2.0, 0.5))


def test_kto_kl_is_clamped_at_zero_and_optional():
    inp = _kto_inputs(torch.float64, kl=[-6.0], ref_kl=[-4.0])
    loss, m = losses.call_loss("kto", inp)
    assert loss.tolist() == pytest.approx(_kto_expected(0.0))
    assert m["kl"].tolist() == [0.0] * 4
    no_kl = {k: v for k, v in inp.items() if not k.endswith("kl_logps")}
    torch.testing.assert_close(losses.call_loss("kto", no_kl)[0], loss)


def test_kto_metrics_and_kl_has_no_gradient():
    inp = _kto_inputs(torch.float64, grad=True)
    inp["kl_logps"].requires_grad_(True)
    loss, m = losses.call_loss("kto", inp)
    loss.sum().backward()
    assert inp["kl_logps"].grad is None or (inp["kl_logps"].grad == 0).all()
    r = [BETA * (a - b) for a, b in zip(LOGPS, REF, strict=True)]
    assert m["rewards/chosen"].tolist() == pytest.approx([(r[0] + r[2]) / 2] * 4)
    assert m["rewards/rejected"].tolist() == pytest.approx([(r[1] + r[3]) / 2] * 4)
    assert m["count/chosen"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert m["rewards/chosen_sum"].tolist() == pytest.approx([r[0], 0.0, r[2], 0.0])
    for key, value in m.items():
        assert value.shape == (4,) and not value.requires_grad, key


def test_kto_gradcheck_and_step():
    base = _kto_inputs(torch.float64)

    def f(lp):
        return losses.call_loss("kto", {**base, "logps": lp})[0]

    lp = base["logps"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (lp,))
    loss = f(lp)
    loss.sum().backward()
    new = f(lp.detach() - 0.5 * lp.grad)
    assert (new < loss.detach()).all()
    moved = (lp.detach() - 0.5 * lp.grad) - lp.detach()
    assert (moved[[0, 2]] > 0).all() and (moved[[1, 3]] < 0).all()


def test_kto_huge_rewards_finite():
    inp = _kto_inputs(grad=True)
    inp["logps"] = torch.tensor([-1.0, -1.0, -1e5, -1e5], requires_grad=True)
    inp["ref_logps"] = torch.tensor([-1e5, -1e5, -1.0, -1.0])
    loss, _ = losses.call_loss("kto", inp)
    loss.sum().backward()
    assert torch.isfinite(inp["logps"].grad).all()
    assert loss.tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0], abs=1e-6)


def test_bco_unpaired_values():
    inp = _kto_inputs(torch.float64)
    loss, _ = losses.call_loss("bco", inp, delta=0.02)
    want = []
    for lp, ref, good in zip(LOGPS, REF, LABELS, strict=True):
        z = BETA * (lp - ref) - 0.02
        want.append(-logsig(z) if good else -logsig(-z))
    assert loss.tolist() == pytest.approx(want)


# ---------------------------------------------------------------- SFT


def test_sft_values():
    lp = torch.tensor([-6.0, -3.0], dtype=torch.float64, requires_grad=True)
    n = torch.tensor([3, 2])
    loss, m = losses.call_loss("sft", {"logps": lp, "lengths": n})
    assert loss.tolist() == pytest.approx([2.0, 1.5])
    assert not m["nll"].requires_grad
    summed, _ = losses.call_loss("sft", {"logps": lp, "lengths": n}, per_token_mean=False)
    assert summed.tolist() == pytest.approx([6.0, 3.0])
    loss.sum().backward()
    assert lp.grad.tolist() == pytest.approx([-1 / 3, -1 / 2])
