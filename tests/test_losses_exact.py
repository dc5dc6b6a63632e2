"""f-DPO (forward KL, alpha) and ORPO against 80-digit references on extreme inputs.

The references are written from the papers' formulas in mpmath, independently of the
log-space forms in :mod:`prefkit.losses.stable`. Inputs are the grid values rounded to the
tested dtype (the reference sees exactly the numbers the loss sees).

Tolerance, for a value or a gradient q: |got - q| <= 8 ulp(dtype) * (1 + kappa) * |q|,
kappa = sum_i |x_i d log|q| / d x_i| being q's relative condition number in the inputs
(from 80-digit central differences), with an absolute floor of the dtype's smallest normal
number; where |q| exceeds the dtype's range the result must be +-inf of the right sign.
"""

from __future__ import annotations

import functools
import math

import mpmath as mp
import pytest
import torch

from prefkit import losses
from prefkit.losses.stable import log1mexp

mp.mp.dps = 80
BETA = 0.1
ULPS = 8.0


def _sig(z):
    return 1 / (1 + mp.exp(-z))


def _kappa(f, xs) -> float:
    """Relative condition number of f at xs: sum_i |x_i * d log|f| / dx_i|."""
    total = mp.mpf(0)
    for i, x in enumerate(xs):
        if x == 0:
            continue
        step = abs(x) * mp.mpf(10) ** -30
        up = [*xs]
        dn = [*xs]
        up[i] += step
        dn[i] -= step
        d = (mp.log(abs(f(*up))) - mp.log(abs(f(*dn)))) / (2 * step)
        total += abs(x * d)
    return float(total)


def _check(got: float, want, kappa_of, dtype: torch.dtype, what: str) -> None:
    fi = torch.finfo(dtype)
    if abs(want) > fi.max:
        assert math.isinf(got) and (got > 0) == (want > 0), f"{what}: {got} vs {want}"
        return
    assert math.isfinite(got), f"{what}: {got} vs {want}"
    if abs(want) < fi.smallest_normal:
        assert abs(got) <= 2 * fi.smallest_normal, f"{what}: {got} vs {want}"
        return
    tol = ULPS * fi.eps * (1.0 + kappa_of()) * float(abs(want)) + fi.smallest_normal
    assert abs(got - float(want)) <= tol, f"{what}: {got} vs {float(want)} (tol {tol:.3g})"


def _check_grid(pairs, results, refs, dtype, label) -> None:
    """results: (loss, d/dchosen, d/drejected) lists; refs: matching mpmath functions."""
    names = ("loss", "d/dchosen", "d/drejected")
    for i, (w, lo) in enumerate(pairs):
        point = [mp.mpf(w), mp.mpf(lo)]
        for got, fn, name in zip((r[i] for r in results), refs, names, strict=True):

            def kappa(fn=fn, point=point):
                return _kappa(fn, point)

            _check(got, fn(*point), kappa, dtype, f"{label} {name} at ({w}, {lo})")


def _rounded(values, dtype):
    return sorted({float(torch.tensor(v, dtype=dtype)) for v in values})


# ---------------------------------------------------------------- f-DPO


def _with_alpha(fn, a, cw, cl):
    return fn(cw, cl, a)


def _fdpo_h(cw, cl, a):
    """h = beta * (f'(u_w) - f'(u_l)), f'(u) = (1 - u^-a) / a (a = 1: -1/u + const)."""
    return BETA / a * (mp.exp(-a * cl) - mp.exp(-a * cw))


def _fdpo_loss(cw, cl, a):
    return mp.log1p(mp.exp(-_fdpo_h(cw, cl, a)))


def _fdpo_grad_w(cw, cl, a):
    return -_sig(-_fdpo_h(cw, cl, a)) * BETA * mp.exp(-a * cw)


def _fdpo_grad_l(cw, cl, a):
    return _sig(-_fdpo_h(cw, cl, a)) * BETA * mp.exp(-a * cl)


RATIOS = [-1000, -750, -100, -88, -60, -50.5, -30, -5, -1, -1e-6, 0, 1e-6, 1, 5, 30, 60, 1000]
FDPO_CASES = [("forward_kl", 1.0), ("alpha", 0.5), ("alpha", 0.1)]


def _fdpo_torch(cw, cl, divergence, f_alpha, dtype):
    c = torch.tensor(cw, dtype=dtype, requires_grad=True)
    r = torch.tensor(cl, dtype=dtype, requires_grad=True)
    zero = torch.zeros_like(c)
    loss, _ = losses.fdpo(c, r, zero, zero, beta=BETA, divergence=divergence, f_alpha=f_alpha)
    loss.sum().backward()
    return loss.tolist(), c.grad.tolist(), r.grad.tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("divergence", "a"), FDPO_CASES)
def test_fdpo_matches_80_digit_reference_on_extreme_grid(divergence, a, dtype):
    grid = _rounded(RATIOS, dtype)
    pairs = [(w, lo) for w in grid for lo in grid]
    results = _fdpo_torch([p[0] for p in pairs], [p[1] for p in pairs], divergence, a, dtype)
    a_mp = mp.mpf(a)
    refs = [
        functools.partial(_with_alpha, fn, a_mp) for fn in (_fdpo_loss, _fdpo_grad_w, _fdpo_grad_l)
    ]
    _check_grid(pairs, results, refs, dtype, f"{divergence} a={a}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("divergence", ["forward_kl", "alpha"])
def test_fdpo_below_minus_50_still_knows_who_won(divergence, dtype):
    # both log-ratios below -50: the loss was log 2 with zero gradient either way
    loss, gw, gl = _fdpo_torch([-60.0, -70.0], [-70.0, -60.0], divergence, 0.5, dtype)
    a = 1.0 if divergence == "forward_kl" else 0.5
    want = [
        float(_fdpo_loss(mp.mpf(w), mp.mpf(lo), mp.mpf(a))) for w, lo in ((-60, -70), (-70, -60))
    ]
    assert loss[0] < 1e-10 and loss[1] > 1e9
    assert loss == pytest.approx(want, rel=1e-4, abs=1e-30)
    assert gw[1] < -1e9 and gl[1] > 1e9  # the losing pair is pushed apart


def test_fdpo_overflow_is_inf_not_nan():
    # exact loss e^1000 / 10 overflows every dtype: +inf, and the gradients are +-inf
    loss, gw, gl = _fdpo_torch([-1000.0, 0.0], [0.0, -1000.0], "forward_kl", 0.5, torch.float64)
    assert loss[0] == math.inf and loss[1] == 0.0
    # sig(-h) = 1, so d/dcl = beta * e^0
    assert gw[0] == -math.inf and gl[0] == pytest.approx(0.1, rel=1e-15)
    assert gw[1] == 0.0 and gl[1] == 0.0


# ---------------------------------------------------------------- ORPO


def _lo(m):
    return m - mp.log(-mp.expm1(m))


def _orpo_loss(mw, ml):
    z = _lo(mw) - _lo(ml)
    return -mw + BETA * mp.log1p(mp.exp(-z))


def _orpo_grad_w(mw, ml):
    z = _lo(mw) - _lo(ml)
    return -1 - BETA * _sig(-z) / -mp.expm1(mw)


def _orpo_grad_l(mw, ml):
    z = _lo(mw) - _lo(ml)
    return BETA * _sig(-z) / -mp.expm1(ml)


MEANS = [-1000, -50, -5, -1, -0.5, -1e-2, -1e-6, -5e-7, -1e-8, -1e-12, -1e-20, -1e-30, -1e-300]


def _orpo_torch(mw, ml, dtype, lengths=None):
    c = torch.tensor(mw, dtype=dtype, requires_grad=True)
    r = torch.tensor(ml, dtype=dtype, requires_grad=True)
    n = torch.ones_like(c) if lengths is None else torch.tensor(lengths, dtype=dtype)
    loss, metrics = losses.orpo(c, r, n, n, beta=BETA)
    loss.sum().backward()
    return loss.tolist(), c.grad.tolist(), r.grad.tolist(), metrics


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_orpo_matches_80_digit_reference_on_extreme_grid(dtype):
    grid = [m for m in _rounded(MEANS, dtype) if m < 0]
    pairs = [(w, lo) for w in grid for lo in grid]
    results = _orpo_torch([p[0] for p in pairs], [p[1] for p in pairs], dtype)[:3]
    _check_grid(pairs, results, (_orpo_loss, _orpo_grad_w, _orpo_grad_l), dtype, "orpo")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_orpo_near_zero_log_probs_issue_example(dtype):
    # chosen -5e-7 vs rejected -1e-8: the -1e-6 clamp gave 0.069; the exact loss is 0.393
    loss, _, _, _ = _orpo_torch([-5e-7], [-1e-8], dtype)
    want = float(
        _orpo_loss(
            mp.mpf(float(torch.tensor(-5e-7, dtype=dtype))),
            mp.mpf(float(torch.tensor(-1e-8, dtype=dtype))),
        )
    )
    assert want == pytest.approx(0.393, abs=1e-3)
    assert loss[0] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_orpo_at_probability_one(dtype):
    e = math.exp(-1.0)
    odds = e / (1 - e)
    loss, gw, gl, m = _orpo_torch([0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], dtype)
    # p_w = 1: odds ratio +inf, term 0; d/dmw of the term is the limit p_l / q_l
    assert loss[0] == 0.0
    assert gw[0] == pytest.approx(-1.0 - BETA * odds, rel=1e-6) and gl[0] == 0.0
    # p_l = 1: odds ratio 0, loss +inf; d/dmw = -1 - beta / q_w, d/dml = +inf
    assert loss[1] == math.inf
    assert gw[1] == pytest.approx(-1.0 - BETA / (1 - e), rel=1e-6) and gl[1] == math.inf
    # both 1: 0/0, the limit along p_w = p_l (log 2, no odds-ratio gradient)
    assert loss[2] == pytest.approx(BETA * math.log(2), rel=1e-6)
    assert gw[2] == -1.0 and gl[2] == 0.0
    assert not any(math.isnan(v) for v in m["log_odds_chosen"].tolist())
    assert not any(math.isnan(v) for v in m["log_odds_ratio"].tolist())


def test_orpo_positive_mean_log_prob_is_nan_not_clamped():
    loss, gw, gl, _ = _orpo_torch([1e-3, -1.0], [-1.0, 1e-3], torch.float64)
    assert all(math.isnan(v) for v in loss)


def test_orpo_with_lengths_divides_first():
    loss, _, _, _ = _orpo_torch([-1e-6], [-3e-8], torch.float64, lengths=[4.0])
    want = float(_orpo_loss(mp.mpf(-1e-6) / 4, mp.mpf(-3e-8) / 4))
    assert loss[0] == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log1mexp_matches_reference_and_has_no_clamp(dtype):
    xs = _rounded([-1000, -50, -1, -0.6931, -0.5, -1e-3, -1e-8, -1e-20, -1e-40], dtype)
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    y = log1mexp(x)
    y.sum().backward()
    for i, v in enumerate(xs):
        xv = mp.mpf(v)
        _check(
            y[i].item(),
            mp.log(-mp.expm1(xv)),
            lambda xv=xv: _kappa(lambda u: mp.log(-mp.expm1(u)), [xv]),
            dtype,
            f"log1mexp({v})",
        )
        want_g = -1 / mp.expm1(-xv)  # d/dx log(1 - e^x) = -e^x / (1 - e^x)
        _check(
            x.grad[i].item(),
            want_g,
            lambda xv=xv: _kappa(lambda u: -1 / mp.expm1(-u), [xv]),
            dtype,
            f"log1mexp'({v})",
        )
    assert log1mexp(torch.tensor(0.0, dtype=dtype)).item() == -math.inf


def _partials_agree(loss, grad_w, grad_l, w, lo, digits) -> None:
    xw, xl = mp.mpf(w), mp.mpf(lo)
    assert mp.almosteq(mp.diff(lambda u: loss(u, xl), xw), grad_w(xw, xl), 10.0**-digits)
    assert mp.almosteq(mp.diff(lambda v: loss(xw, v), xl), grad_l(xw, xl), 10.0**-digits)


def test_references_agree_with_numerical_derivatives():
    # the closed-form reference gradients are checked against mp.diff of the reference values
    fdpo_refs = [
        functools.partial(_with_alpha, fn, mp.mpf(0.5))
        for fn in (_fdpo_loss, _fdpo_grad_w, _fdpo_grad_l)
    ]
    for w, lo in ((-3, -1), (2, -4), (-0.5, 0.25)):
        _partials_agree(*fdpo_refs, w, lo, 40)
    for w, lo in ((-0.3, -2), (-1e-3, -1e-6)):
        _partials_agree(_orpo_loss, _orpo_grad_w, _orpo_grad_l, w, lo, 30)


@pytest.mark.parametrize(
    ("name", "hp"),
    [("fdpo", {"divergence": "forward_kl"}), ("fdpo", {"divergence": "alpha"}), ("orpo", {})],
)
def test_custom_backwards_pass_gradcheck(name, hp):
    base = {
        "chosen_logps": torch.tensor([-5.0, -8.0, -0.3, -4.0], dtype=torch.float64),
        "rejected_logps": torch.tensor([-6.0, -7.0, -0.2, -4.0], dtype=torch.float64),
        "ref_chosen_logps": torch.tensor([-5.5, -7.5, -1.0, -4.0], dtype=torch.float64),
        "ref_rejected_logps": torch.tensor([-5.0, -7.0, -0.1, -4.0], dtype=torch.float64),
        "chosen_lengths": torch.tensor([2.0, 4.0, 1.0, 3.0], dtype=torch.float64),
        "rejected_lengths": torch.tensor([3.0, 2.0, 1.0, 3.0], dtype=torch.float64),
    }

    def f(c, r):
        return losses.call_loss(name, {**base, "chosen_logps": c, "rejected_logps": r}, **hp)[0]

    c = base["chosen_logps"].clone().requires_grad_(True)
    r = base["rejected_logps"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (c, r))


# ---------------------------------------------------------------- softplus cut-off

# torch's F.softplus returns x itself above x = 20 (its default threshold): 2e-9 off in the
# value and in the gradient, 1e5 ulp in float64. The pairwise losses use log sig instead.


def _mp_softplus(x):
    return mp.log1p(mp.exp(x))


SOFTPLUS_CASES = {
    # name -> (hyper-parameters, loss of h = beta * (rho_w - rho_l), r_w, r_l)
    "cdpo": (
        {"label_smoothing": 0.1},
        lambda h, rw, rl: 0.9 * _mp_softplus(-h) + 0.1 * _mp_softplus(h),
    ),
    "rdpo": (
        {"label_smoothing": 0.1},
        lambda h, rw, rl: (0.9 * _mp_softplus(-h) - 0.1 * _mp_softplus(h)) / mp.mpf(0.8),
    ),
    "nca_pair": (
        {},
        lambda h, rw, rl: _mp_softplus(-rw) + _mp_softplus(rw) / 2 + _mp_softplus(rl) / 2,
    ),
}


@pytest.mark.parametrize("name", sorted(SOFTPLUS_CASES))
def test_losses_past_the_softplus_threshold_are_exact(name):
    hp, ref = SOFTPLUS_CASES[name]
    beta = 1.0
    rho_w = [25.0, -25.0, 21.0, 40.0]
    rho_l = [0.0, 0.0, -21.0, 3.0]
    c = torch.tensor(rho_w, dtype=torch.float64, requires_grad=True)
    r = torch.tensor(rho_l, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros_like(c)
    loss, _ = losses.call_loss(
        name,
        {
            "chosen_logps": c,
            "rejected_logps": r,
            "ref_chosen_logps": zero,
            "ref_rejected_logps": zero,
        },
        beta=beta,
        **hp,
    )
    loss.sum().backward()
    for i, (w, lo) in enumerate(zip(rho_w, rho_l, strict=True)):
        xw, xl = mp.mpf(w), mp.mpf(lo)
        want = ref(xw - xl, xw, xl)
        assert loss[i].item() == pytest.approx(float(want), rel=1e-14), (w, lo)
        gw = mp.diff(lambda u, xl=xl: ref(u - xl, u, xl), xw)
        gl = mp.diff(lambda v, xw=xw: ref(xw - v, xw, v), xl)
        assert c.grad[i].item() == pytest.approx(float(gw), rel=1e-12, abs=1e-300), (w, lo)
        assert r.grad[i].item() == pytest.approx(float(gl), rel=1e-12, abs=1e-300), (w, lo)
