"""Values, K=2 reductions, masks, limits and gradients of the listwise losses.

Expected values are recomputed with plain ``math`` from the papers' formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefkit import losses

BETA = 0.1
LISTWISE = sorted(losses.available("listwise"))

LOGPS = [[-4.0, -6.0, -5.0], [-3.0, -3.0, -3.0]]  # row 2: equal log-probs
REF = [[-4.5, -5.0, -5.0], [-3.0, -3.0, -3.0]]
LENS = [[2.0, 3.0, 5.0], [1.0, 2.0, 3.0]]
SCORES = [[2.0, 0.0, 1.0], [2.0, 1.0, 0.0]]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def softmax(xs: list[float]) -> list[float]:
    z = lse(xs)
    return [math.exp(x - z) for x in xs]


def order_best_first(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable


def pl_nll(values: list[float], scores: list[float]) -> float:
    seq = [values[i] for i in order_best_first(scores)]
    return -sum(seq[k] - lse(seq[k:]) for k in range(len(seq)))


def lipo_expected(s: list[float], psi: list[float]) -> float:
    ranked = order_best_first(s)
    tau = {i: pos + 1 for pos, i in enumerate(ranked)}
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if psi[i] > psi[j]:
                dg = abs((2 ** psi[i] - 1) - (2 ** psi[j] - 1))
                dd = abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                total -= dg * dd * logsig(s[i] - s[j])
    return total


def implicit(lp_row, ref_row, beta=BETA):
    return [beta * (a - b) for a, b in zip(lp_row, ref_row, strict=True)]


def infonca_expected(r, scores, alpha):
    t = softmax([s / alpha for s in scores])
    z = lse(r)
    return -sum(ti * (ri - z) for ti, ri in zip(t, r, strict=True))


def nca_expected(r, scores, alpha):
    t = softmax([s / alpha for s in scores])
    pos = sum(ti * logsig(ri) for ti, ri in zip(t, r, strict=True))
    return -pos - sum(logsig(-ri) for ri in r) / len(r)


def _inputs(lp=LOGPS, ref=REF, lens=LENS, scores=SCORES, mask=None, dtype=torch.float64):
    d = {
        "logps": torch.tensor(lp, dtype=dtype),
        "ref_logps": torch.tensor(ref, dtype=dtype),
        "lengths": torch.tensor(lens, dtype=dtype),
        "scores": torch.tensor(scores, dtype=dtype),
    }
    if mask is not None:
        d["mask"] = torch.tensor(mask)
    return d


def expected_row(name: str, lp, ref, lens, scores, **hp) -> float:
    beta = hp.get("beta", 1.0 if name == "pro" else BETA)
    if name == "listwise_dpo":
        return pl_nll(implicit(lp, ref, beta), scores)
    if name == "lipo":
        return lipo_expected(implicit(lp, ref, beta), scores)
    if name == "pro":
        s = [beta * a / n for a, n in zip(lp, lens, strict=True)]
        best = order_best_first(scores)[0]
        return pl_nll(s, scores) - hp.get("sft_weight", 0.0) * lp[best] / lens[best]
    if name == "infonca":
        return infonca_expected(implicit(lp, ref, beta), scores, hp.get("alpha", 1.0))
    if name == "nca":
        return nca_expected(implicit(lp, ref, beta), scores, hp.get("alpha", 1.0))
    raise AssertionError(name)


CASES = [
    ("listwise_dpo", {}),
    ("listwise_dpo", {"beta": 0.5}),
    ("lipo", {}),
    ("lipo", {"beta": 1.0}),
    ("pro", {}),
    ("pro", {"beta": 2.0, "sft_weight": 0.3}),
    ("infonca", {}),
    ("infonca", {"alpha": 0.5, "beta": 0.3}),
    ("nca", {}),
    ("nca", {"alpha": 0.5, "beta": 0.3}),
]


def test_every_listwise_loss_is_covered():
    assert {n for n, _ in CASES} == set(LISTWISE)


@pytest.mark.parametrize("name,hp", CASES)
def test_listwise_values(name, hp):
    loss, _ = losses.call_loss(name, _inputs(), **hp)
    want = [expected_row(name, *row, **hp) for row in zip(LOGPS, REF, LENS, SCORES, strict=True)]
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_equal_logps_values_by_hand():
    inp = _inputs()
    assert losses.call_loss("listwise_dpo", inp)[0][1].item() == pytest.approx(math.log(6))
    t = softmax([2.0, 1.0, 0.0])
    assert losses.call_loss("infonca", inp)[0][1].item() == pytest.approx(math.log(3))
    nca_want = -sum(ti * math.log(0.5) for ti in t) - math.log(0.5)
    assert losses.call_loss("nca", inp)[0][1].item() == pytest.approx(nca_want)


# ---------------------------------------------------------------- K = 2 reductions

CW = [-5.0, -9.0, -2.0, -7.0]
CL = [-6.0, -8.0, -2.5, -7.0]
RW = [-5.5, -8.0, -3.0, -7.0]
RL = [-5.0, -8.5, -2.0, -7.0]


def _pair_as_list(scores=(1.0, 0.0)):
    t = torch.tensor
    return {
        "logps": torch.stack([t(CW), t(CL)], -1).double(),
        "ref_logps": torch.stack([t(RW), t(RL)], -1).double(),
        "scores": t([list(scores)] * len(CW)).double(),
    }


def _dpo(beta=BETA, swap=False):
    t = torch.tensor
    args = [t(CW), t(CL), t(RW), t(RL)]
    if swap:
        args = [args[1], args[0], args[3], args[2]]
    return losses.dpo(*(a.double() for a in args), beta=beta)[0]


def test_listwise_dpo_with_two_items_is_dpo():
    torch.testing.assert_close(losses.call_loss("listwise_dpo", _pair_as_list())[0], _dpo())
    torch.testing.assert_close(
        losses.call_loss("listwise_dpo", _pair_as_list((0.0, 1.0)))[0], _dpo(swap=True)
    )
    no_scores = {k: v for k, v in _pair_as_list().items() if k != "scores"}
    torch.testing.assert_close(losses.call_loss("listwise_dpo", no_scores)[0], _dpo())


def test_lipo_with_two_items_is_scaled_dpo():
    const = 1.0 - 1.0 / math.log2(3.0)  # |G_1 - G_0| = 1, |1/D(1) - 1/D(2)|
    loss = losses.call_loss("lipo", _pair_as_list())[0]
    torch.testing.assert_close(loss, const * _dpo())
    loss = losses.call_loss("lipo", _pair_as_list((3.0, 1.0)))[0]
    torch.testing.assert_close(loss, (8.0 - 2.0) * const * _dpo())


def test_infonca_with_two_items_and_tiny_alpha_is_dpo():
    loss = losses.call_loss("infonca", _pair_as_list(), alpha=1e-6)[0]
    torch.testing.assert_close(loss, _dpo())


def test_nca_with_two_items_and_tiny_alpha_is_nca_pair():
    t = torch.tensor
    pair = losses.nca_pair(*(t(x).double() for x in (CW, CL, RW, RL)))[0]
    torch.testing.assert_close(losses.call_loss("nca", _pair_as_list(), alpha=1e-6)[0], pair)


def test_pro_with_two_items_is_length_normalised_logistic():
    lens = [[2.0, 3.0], [4.0, 1.0], [1.0, 1.0], [5.0, 5.0]]
    inp = {**_pair_as_list(), "lengths": torch.tensor(lens, dtype=torch.float64)}
    want = [-logsig(w / lw - l_ / ll) for w, l_, (lw, ll) in zip(CW, CL, lens, strict=True)]
    assert losses.call_loss("pro", inp)[0].tolist() == pytest.approx(want)


# ---------------------------------------------------------------- masks and ties


def test_masked_responses_are_ignored():
    nan = float("nan")
    lp = [[-4.0, nan, -6.0, -5.0], [-3.0, -2.0, nan, nan]]
    ref = [[-4.5, nan, -5.0, -5.0], [-3.5, -2.5, nan, nan]]
    lens = [[2.0, 0.0, 3.0, 5.0], [1.0, 2.0, 0.0, 0.0]]
    scores = [[2.0, nan, 0.0, 1.0], [0.0, 1.0, nan, nan]]
    mask = [[True, False, True, True], [True, True, False, False]]
    for name in LISTWISE:
        inp = _inputs(lp, ref, lens, scores, mask)
        inp["logps"].requires_grad_(True)
        loss, metrics = losses.call_loss(name, inp)
        loss.sum().backward()
        grad = inp["logps"].grad
        assert torch.isfinite(loss).all(), name
        assert torch.isfinite(grad).all(), name
        assert grad[0, 1] == 0 and (grad[1, 2:] == 0).all(), name
        for key, value in metrics.items():
            assert torch.isfinite(value).all(), (name, key)
        for b, keep in enumerate(mask):
            idx = [i for i, m in enumerate(keep) if m]
            row = [[x[b][i] for i in idx] for x in (lp, ref, lens, scores)]
            assert loss[b].item() == pytest.approx(expected_row(name, *row)), name


def test_ties_keep_given_order_in_plackett_luce_and_are_skipped_in_lipo():
    inp = _inputs(scores=[[1.0, 1.0, 0.0], [3.0, 3.0, 3.0]])
    r0 = implicit(LOGPS[0], REF[0])
    loss = losses.call_loss("listwise_dpo", inp)[0]
    assert loss[0].item() == pytest.approx(pl_nll(r0, [2.0, 1.0, 0.0]))
    assert loss[1].item() == pytest.approx(math.log(6))
    lipo_loss = losses.call_loss("lipo", inp)[0]
    assert lipo_loss[1].item() == 0.0
    only_pairs = lipo_expected(r0, [1.0, 1.0, 0.0])
    assert lipo_loss[0].item() == pytest.approx(only_pairs)


# ---------------------------------------------------------------- huge margins


@pytest.mark.parametrize("name", LISTWISE)
@pytest.mark.parametrize("good_order", [True, False])
def test_huge_margins_finite_with_correct_limit(name, good_order):
    lp = [[-1.0, -1.0 - 1e5, -1.0 - 2e5]]
    ref = [[-1.0, -1.0, -1.0]]
    lens = [[1.0, 1.0, 1.0]]
    scores = [[2.0, 1.0, 0.0]] if good_order else [[0.0, 1.0, 2.0]]
    hp = {"alpha": 1e-6} if name in ("infonca", "nca") else {}
    inp = _inputs(lp, ref, lens, scores, dtype=torch.float32)
    inp["logps"].requires_grad_(True)
    loss, _ = losses.call_loss(name, inp, **hp)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(inp["logps"].grad).all()
    want = expected_row(name, lp[0], ref[0], lens[0], scores[0], **hp)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    if good_order and name != "nca":
        assert want == pytest.approx(0.0, abs=1e-6)
    if not good_order:
        assert want > 1e4


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", LISTWISE)
def test_gradcheck_float64(name):
    base = _inputs(mask=[[True, True, True], [True, False, True]])

    def f(lp):
        return losses.call_loss(name, {**base, "logps": lp})[0]

    lp = base["logps"].clone().requires_grad_(True)
    lp.data[1] = torch.tensor([-3.0, -2.0, -4.0], dtype=torch.float64)  # no ties in s
    assert torch.autograd.gradcheck(f, (lp,))


@pytest.mark.parametrize("name", LISTWISE)
def test_one_gradient_step_lowers_loss_and_widens_best_margin(name):
    # best response (score 2) currently has the lowest log-prob
    inp = _inputs(
        lp=[[-7.0, -5.0, -6.0]],
        ref=[[-6.0, -6.0, -6.0]],
        lens=[[3.0, 3.0, 3.0]],
        scores=[[2.0, 0.0, 1.0]],
    )
    lp = inp["logps"].clone().requires_grad_(True)
    loss, m = losses.call_loss(name, {**inp, "logps": lp})
    loss.sum().backward()
    new_lp = lp.detach() - 0.5 * lp.grad
    new, m2 = losses.call_loss(name, {**inp, "logps": new_lp})
    assert (new < loss.detach()).all()
    assert (m2["rewards/margins"] > m["rewards/margins"]).all()
    old_gap = lp[0, 0] - lp[0, 1:].mean()
    assert (new_lp[0, 0] - new_lp[0, 1:].mean()) > old_gap


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("name", LISTWISE)
def test_listwise_metrics(name):
    lp = [[-4.0, -6.0, -5.0], [-4.0, -3.0, -5.0]]
    ref = [[-4.5, -5.0, -5.0], [-4.5, -4.0, -5.0]]
    inp = _inputs(lp, ref, [[1.0, 1.0, 1.0]] * 2, SCORES)
    inp["logps"].requires_grad_(True)
    loss, m = losses.call_loss(name, inp)
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert key in m, key
    for key, value in m.items():
        assert value.shape == (2,) and not value.requires_grad, key
    beta = 1.0 if name == "pro" else BETA
    r = [[beta * (a - b) for a, b in zip(x, y, strict=True)] for x, y in zip(lp, ref, strict=True)]
    if name == "pro":
        r = [[beta * a for a in x] for x in lp]
    # row 0: best index 0, rewards ordered as the scores -> 3/3 pairs right
    # row 1: scores (2, 1, 0): index 1 beats index 0 by reward -> 2/3 pairs right
    assert m["rewards/accuracies"].tolist() == pytest.approx([1.0, 2.0 / 3.0])
    assert m["rewards/chosen"].tolist() == pytest.approx([r[0][0], r[1][0]])
    assert m["rewards/rejected"].tolist() == pytest.approx(
        [(r[0][1] + r[0][2]) / 2, (r[1][1] + r[1][2]) / 2]
    )
    torch.testing.assert_close(m["rewards/margins"], m["rewards/chosen"] - m["rewards/rejected"])
    assert m["logps/chosen"].tolist() == [-4.0, -4.0]
    assert m["logps/rejected"].tolist() == pytest.approx([-5.5, -4.0])
