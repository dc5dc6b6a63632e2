"""Supervised (maximum-likelihood) loss and the helpers other losses share with it.

Also holds the adapters :func:`prefkit.losses.combine` uses to put an ``sft`` term next
to a pairwise (NLL on the chosen response), listwise (NLL on the best response) or
unpaired (NLL on desirable examples) loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import LossOutput, register


def per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """Length-normalised log-probs ``logps / max(lengths, 1)`` (lengths cast to logps' dtype)."""
    return logps / lengths.to(logps.dtype).clamp(min=1.0)


def nll(logps: Tensor, lengths: Tensor | None, per_token_mean: bool = True) -> Tensor:
    """Negative log-likelihood per example: ``-logps / |y|`` (default) or ``-logps``."""
    if per_token_mean:
        if lengths is None:
            raise ValueError("per-token NLL needs completion lengths")
        return -per_token(logps, lengths)
    return -logps


@register("sft", kind="sft", needs_reference=False)
def sft_loss(logps: Tensor, lengths: Tensor, *, per_token_mean: bool = True) -> LossOutput:
    """Supervised fine-tuning: negative log-likelihood of the completion.

    Paper: the SFT stage of RLHF, e.g. Ouyang et al. 2022 (InstructGPT), arXiv 2203.02155.
    Formula: loss = -log pi(y|x) / |y| (per-token mean, default) or -log pi(y|x) (summed).

    Args:
        logps: [B] summed log-probs of the completion tokens.
        lengths: [B] completion token counts (clamped to >= 1).
        per_token_mean: divide by the length (default True); False gives the summed NLL.
    Metrics: ``nll`` (the loss), ``logps`` (summed log-probs).
    """
    loss = nll(logps, lengths, per_token_mean)
    return loss, {"nll": loss.detach(), "logps": logps.detach()}


def sft_on_chosen(
    chosen_logps: Tensor, chosen_lengths: Tensor, *, per_token_mean: bool = True
) -> LossOutput:
    """SFT on the chosen response of a pair (the ``sft`` term of a pairwise combination)."""
    return sft_loss(chosen_logps, chosen_lengths, per_token_mean=per_token_mean)


def best_index(scores: Tensor, mask: Tensor | None) -> Tensor:
    """[B] index of the highest-scored present response (first one on ties)."""
    s = scores if mask is None else scores.masked_fill(~mask.bool(), float("-inf"))
    return s.argmax(dim=-1)


def sft_on_best(
    logps: Tensor,
    lengths: Tensor,
    scores: Tensor,
    mask: Tensor | None = None,
    *,
    per_token_mean: bool = True,
) -> LossOutput:
    """SFT on the best-scored present response of a list (``sft`` in a listwise combination)."""
    idx = best_index(scores, mask).unsqueeze(-1)
    return sft_loss(
        logps.gather(-1, idx).squeeze(-1),
        lengths.gather(-1, idx).squeeze(-1),
        per_token_mean=per_token_mean,
    )


def sft_on_desirable(
    logps: Tensor, lengths: Tensor, labels: Tensor, *, per_token_mean: bool = True
) -> LossOutput:
    """SFT on desirable examples only, zero on the others (``sft`` in an unpaired combination)."""
    loss, metrics = sft_loss(logps, lengths, per_token_mean=per_token_mean)
    keep = labels.bool()
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    metrics["nll"] = loss.detach()
    return loss, metrics
