"""The LM head's log-probability of target tokens with its own backward pass.

For hidden states ``h`` ``[n, H]``, a linear head ``W`` ``[V, H]`` (bias ``b``) and targets
``y``, the forward computes ``z = h W^T + b`` in float32 and

    out_i = z[i, y_i] - logsumexp_v z[i, v]

and keeps ``h`` and the ``n`` values ``lse_i`` (not the ``[n, V]`` logits when ``recompute``);
the backward uses ``d out_i / d z[i, v] = 1[v = y_i] - softmax(z_i)_v``:

    G = (onehot(y) - exp(z - lse)) * g          (in place on one [n, V] buffer)
    dh = G W,   dW = G^T h,   db = sum_i G_i

Autograd through ``gather - logsumexp`` builds the same gradient from ~6 passes over fresh
``[n, V]`` tensors (the logsumexp backward, a zero-filled scatter for the gather, their sum),
and activation checkpointing of a chunk (``torch.utils.checkpoint``) also recomputes the
logsumexp; here a recomputed chunk costs the one matrix product and the backward three
in-place passes. Values and gradients equal the autograd path (tests/test_head_logps.py, with
``torch.autograd.gradcheck`` in float64); :func:`prefkit.models.logprobs.token_logps` stays the
plain reference and the path of heads this does not cover (:func:`fused_head`).

The forward product on the CPU in float32 (no autocast): ``h W^T`` through oneDNN with ``W``
packed once per call (:func:`pack_head`, :mod:`prefkit.models.packed_linear`) instead of MKL's
``sgemm``, whose blocking suits the head's short inner dimension badly: ``[1024, 256] x
[256, 4096]`` took 10.2 ms packed vs 12.9 ms (16.3 ms inside the online bench's update, where
its outputs are cold), ~210 vs ~130-170 GFLOP/s on the 2-core host; a recomputed chunk reuses
the same packed copy, so its logits are the forward's bit for bit. The two backward products
stay MKL's (at the peak there). Values differ from ``F.linear`` by the order of float sums
(~1e-6 relative).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .packed_linear import pack_weight, packed_product

__all__ = ["PACK_HEAD_MAX_BYTES", "PACK_HEAD_MIN_ROWS", "fused_head", "linear_token_logps",
           "pack_head"]


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            packed: torch.Tensor | None) -> torch.Tensor:
    """Float32 logits (float64 ones stay float64: what gradcheck needs); through ``packed``
    (:func:`pack_head`) when given."""
    if packed is not None:
        return packed_product(hidden, packed, bias)
    logits = F.linear(hidden, weight, bias)
    return logits if logits.dtype == torch.float64 else logits.float()


PACK_HEAD_MAX_BYTES = 64 << 20
"""Heads larger than this (64 MiB of float32: 16M parameters) are not packed: the packed copy
would be a large transient second copy of the weight."""

PACK_HEAD_MIN_ROWS = 256
"""Fewer positions than this are not worth a packing pass over the weight."""


def pack_head(weight: torch.Tensor, hidden: torch.Tensor, rows: int | None = None
              ) -> torch.Tensor | None:
    """The head weight packed for :func:`linear_token_logps`'s forward product (module docs)
    when ``hidden`` is float32 on the CPU outside autocast, has at least
    :data:`PACK_HEAD_MIN_ROWS` rows, and the weight packs
    (:func:`prefkit.models.packed_linear.pack_weight`) and takes at most
    :data:`PACK_HEAD_MAX_BYTES`; else None (``F.linear``). Pack once per forward pass and
    hand it to every chunk: the weight must not change in between."""
    if (hidden.dtype != torch.float32 or hidden.device.type != "cpu"
            or torch.is_autocast_enabled("cpu") or hidden.shape[0] < PACK_HEAD_MIN_ROWS
            or weight.nbytes > PACK_HEAD_MAX_BYTES):
        return None
    return pack_weight(weight, rows)


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(logits, -1)`` with the same operations in the same order (so the same
    bits: the row max, set to 0 where it is infinite, subtracted, ``exp``, sum, ``log``, the
    max added back), but in place on ``logits``, which it overwrites: no second ``[n, V]``
    tensor."""
    top = logits.amax(-1, keepdim=True)
    top.masked_fill_(top.abs() == float("inf"), 0)
    return logits.sub_(top).exp_().sum(-1).log_().add_(top[:, 0])


class _LinearTokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, targets: torch.Tensor, recompute: bool,
                packed: torch.Tensor | None) -> torch.Tensor:
        logits = _logits(hidden, weight, bias, packed)
        picked = logits.gather(-1, targets[:, None])[:, 0]
        # recompute: the logits are not kept, so the log-sum-exp may work in place on them
        lse = _logsumexp_(logits) if recompute else torch.logsumexp(logits, dim=-1)
        out = picked - lse
        device = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device),
                        torch.get_autocast_dtype(device), device)
        ctx.recompute = recompute
        ctx.packed = packed if recompute else None  # the same product again in backward
        ctx.save_for_backward(hidden, weight, bias, targets, lse,
                              None if recompute else logits)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, targets, lse, logits = ctx.saved_tensors
        enabled, dtype, device = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            g = grad.to(lse.dtype)[:, None]
            if logits is None:  # the same product as the forward, under the same autocast
                shifted = _logits(hidden, weight, bias, ctx.packed).sub_(lse[:, None])  # ours
            else:  # the saved logits stay intact (a second backward with retain_graph)
                shifted = logits - lse[:, None]
            # onehot(y) - softmax(z), times g, in place
            scores = shifted.exp_().mul_(-g)
            scores.scatter_add_(-1, targets[:, None], g)
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            gz = scores.to(weight.dtype) if not enabled else scores
            d_hidden = (gz @ weight).to(hidden.dtype) if need_h else None
            d_weight = (gz.t() @ hidden).to(weight.dtype) if need_w else None
            d_bias = scores.sum(0).to(bias.dtype) if need_b and bias is not None else None
        return d_hidden, d_weight, d_bias, None, None, None


def linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       targets: torch.Tensor, *, recompute: bool = False,
                       packed: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(hidden W^T + b)[target]`` per row in float32 (module docs); ``recompute``:
    keep only ``hidden`` and the ``n`` log-sum-exps for the backward pass and recompute the
    logits there (what a chunk under activation checkpointing keeps), else keep the
    ``[n, V]`` float32 logits. ``packed``: ``weight`` as :func:`pack_head` packed it (the
    forward product through oneDNN), or None (``F.linear``)."""
    return _LinearTokenLogps.apply(hidden, weight, bias, targets, recompute, packed)


def fused_head(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight, bias)`` of ``head`` when :func:`linear_token_logps` computes exactly what
    ``token_logps(head(hidden), targets)`` does: a plain ``nn.Linear`` (not a LoRA or other
    wrapper, whose forward adds more) with ordinary (not sharded DTensor) parameters; None
    otherwise."""
    if type(head) is not nn.Linear:
        return None
    if any(type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor"
           for p in head.parameters()):
        return None
    return head.weight, head.bias
