"""Exact elementwise pieces of the losses, in log space, with no clamps.

Each function is exact (to a few ulps times the problem's own condition number) over its
whole domain, in float32 and float64 alike: a value or gradient that exceeds the dtype's
range comes out as ``+-inf`` (never NaN), one that is below it as 0. Two of them carry a
hand-written backward, because autograd through their log-space forms would multiply an
infinity by a zero exactly where the true gradient is finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG2 = math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate over the whole range; -inf at ``x = 0``.

    Reference: Maechler 2012, "Accurately Computing log(1 - exp(-|a|))" (CRAN Rmpfr
    vignette). Formula: log(-expm1(x)) for -log 2 < x <= 0, log1p(-exp(x)) for x <= -log 2.
    Positive x (no real value) gives NaN. Each branch is evaluated on inputs restricted to
    its own side so that neither leaks a NaN gradient into the other.
    """
    cut = -_LOG2
    near = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near, far)


# --------------------------------------------------------------------------- f-DPO


def _exp_diff_logit(x: Tensor, y: Tensor, scale: float) -> Tensor:
    """``h = scale * (exp(x) - exp(y))`` via ``log|h| = log|scale| + max + log1mexp(min - max)``.

    Overflows to +-inf only when h itself does; exact 0 at x = y.
    """
    hi, lo = torch.maximum(x, y), torch.minimum(x, y)
    log_mag = math.log(abs(scale)) if scale != 0 else -math.inf
    sign = torch.sign(x - y) * math.copysign(1.0, scale)
    mag = torch.exp(log_mag + hi + log1mexp(lo - hi))
    return torch.where(x == y, torch.zeros_like(mag), sign * mag)


class _NegLogSigmoidExpDiff(torch.autograd.Function):
    """``-log sig(scale * (exp(x) - exp(y)))`` with a log-space backward."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        h = _exp_diff_logit(x, y, scale)
        ctx.save_for_backward(x, y, h)
        ctx.scale = scale
        return -F.logsigmoid(h)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        # dL/dh = -sig(-h), dh/dx = s e^x, dh/dy = -s e^y: each product formed as one exp
        # of a sum of logs, so sig(-h) ~ 0 times e^x ~ inf never meets as 0 * inf.
        x, y, h = ctx.saved_tensors
        scale = ctx.scale
        if scale == 0:
            return torch.zeros_like(x), torch.zeros_like(y), None
        base = F.logsigmoid(-h) + math.log(abs(scale))
        sign = math.copysign(1.0, scale)
        gx = -sign * torch.exp(base + x)
        gy = sign * torch.exp(base + y)
        return grad * gx, grad * gy, None


def neg_logsigmoid_exp_diff(x: Tensor, y: Tensor, scale: float) -> Tensor:
    """``-log sig(scale * (exp(x) - exp(y)))``, exact for all real x, y (no clamps).

    The logistic loss on a difference of exponentials, as in f-DPO with the forward-KL
    or alpha divergences (Wang et al. 2023, arXiv 2309.16240). Value and gradients are
    formed in log space: h = scale * (e^x - e^y) from log1mexp; dL/dx = -sig(-h) scale e^x
    = -exp(log sig(-h) + log scale + x), and likewise for y. A loss or gradient beyond the
    dtype's range is +-inf (never NaN).

    Args: x, y: tensors of one shape and dtype; scale: a finite float.
    """
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return _NegLogSigmoidExpDiff.apply(x, y, float(scale))


# --------------------------------------------------------------------------- ORPO


def log_odds(m: Tensor) -> Tensor:
    """``log(p / (1 - p))`` for ``p = exp(m)``, ``m <= 0``: ``m - log1mexp(m)`` (+inf at 0)."""
    return m - log1mexp(m)


def _one_minus_exp(m: Tensor) -> Tensor:
    """``1 - exp(m)`` as ``-expm1(m)``, with +0 (not -0) at m = 0 so that 1/q is +inf."""
    return -torch.expm1(m) + 0.0


class _LogSigmoidLogOddsRatio(torch.autograd.Function):
    """``log sig(log odds(mw) - log odds(ml))`` with the closed-form backward.

    With p = e^m, q = 1 - p = -expm1(m) and t = e^-z = (p_l q_w) / (p_w q_l) (the inverse
    odds ratio, a product of terms each accurate to an ulp): log sig(z) = -log1p(t). Only
    where t overflows is z itself used: z = (mw - ml) + log q_l - log q_w.
    """

    @staticmethod
    def forward(ctx, mw: Tensor, ml: Tensor) -> Tensor:  # type: ignore[override]
        qw, ql = _one_minus_exp(mw), _one_minus_exp(ml)
        t = torch.exp(ml - mw) * qw / ql
        z = (mw - ml) + (log1mexp(ml) - log1mexp(mw))
        out = torch.where(torch.isinf(t), F.logsigmoid(z), -torch.log1p(t))
        both_certain = (mw == 0) & (ml == 0)
        out = torch.where(both_certain, torch.full_like(out, -_LOG2), out)
        out = torch.where((mw > 0) | (ml > 0), torch.full_like(out, math.nan), out)
        ctx.save_for_backward(mw, ml, qw, ql, both_certain)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        # D = p_w q_l + p_l q_w: d/dmw = p_l / D = 1 / (e^(mw - ml) q_l + q_w) (no
        # cancellation), d/dml = -(p_l / D) q_w / q_l.
        mw, ml, qw, ql, both_certain = ctx.saved_tensors
        gw = 1.0 / (torch.exp(mw - ml) * ql + qw)
        gl = -(gw * qw) / ql
        zero = torch.zeros_like(gw)
        gw, gl = torch.where(both_certain, zero, gw), torch.where(both_certain, zero, gl)
        return grad * gw, grad * gl


def log_sigmoid_log_odds_ratio(mw: Tensor, ml: Tensor) -> Tensor:
    """``log sig(log odds(p_w) - log odds(p_l))`` for ``p = exp(m)``, ``m <= 0``, exact.

    The odds-ratio term of ORPO (Hong, Lee & Thorne 2024, arXiv 2403.07691). With
    q = 1 - p = -expm1(m) it equals -log1p(t), t = (p_l q_w) / (p_w q_l), exact up to
    m = 0: p_w = 1 gives 0 (gradient p_l / q_l), p_l = 1 gives -inf. Both equal to 1 is
    0/0; there the value is the limit along p_w = p_l, -log 2, with zero gradient.
    Gradients: d/dmw = p_l / D, d/dml = -p_l q_w / (q_l D), D = p_w q_l + p_l q_w.

    Args: mw, ml: per-token mean log-probs (<= 0; a positive one, no log-probability,
    gives NaN).
    """
    return _LogSigmoidLogOddsRatio.apply(mw, ml)
