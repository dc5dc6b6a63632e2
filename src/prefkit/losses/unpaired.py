"""Unpaired (binary-feedback) losses: each example is one completion labelled good or bad.

Canonical inputs (``[B]``): ``logps``, ``ref_logps`` (summed log-probs of the completion
under policy and reference), ``labels`` (bool, True = desirable); KTO also reads
``kl_logps``, ``ref_kl_logps`` (``[M]``, log-probs of mismatched prompt/completion pairs,
used for the batch KL estimate).

Metrics are ``[B]`` tensors so the loop can average them: per-class statistics that only
make sense over a batch (``rewards/chosen`` = mean reward of the desirable examples of
the batch, ``rewards/rejected`` for the undesirable ones, 0 when the batch has none) are
broadcast to every example; ``count/chosen`` / ``count/rejected`` are per-example 0/1
indicators, and ``rewards/chosen_sum`` / ``rewards/rejected_sum`` are per-example rewards
times the indicator (mean of ``*_sum`` / mean of ``count/*`` = the exact mean over
several batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import LossOutput, register


def _class_mean(x: Tensor, keep: Tensor) -> Tensor:
    """Mean of x over ``keep`` (0 when empty), broadcast to ``[B]``."""
    k = keep.to(x.dtype)
    return ((x * k).sum() / k.sum().clamp(min=1)).expand_as(x)


def _unpaired_metrics(
    rewards: Tensor, logps: Tensor, good: Tensor, **extra: Tensor
) -> dict[str, Tensor]:
    r, lp = rewards.detach(), logps.detach()
    bad = ~good
    rc, rr = _class_mean(r, good), _class_mean(r, bad)
    metrics = {
        "rewards/chosen": rc,
        "rewards/rejected": rr,
        "rewards/margins": rc - rr,
        "logps/chosen": _class_mean(lp, good),
        "logps/rejected": _class_mean(lp, bad),
        "rewards/chosen_sum": r * good.to(r.dtype),
        "rewards/rejected_sum": r * bad.to(r.dtype),
        "count/chosen": good.to(r.dtype),
        "count/rejected": bad.to(r.dtype),
    }
    metrics.update({k: v.detach() for k, v in extra.items()})
    return metrics


@register("kto", kind="unpaired", needs_reference=True)
def kto(
    logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    kl_logps: Tensor | None = None,
    ref_kl_logps: Tensor | None = None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO: Kahneman-Tversky optimisation from unpaired desirable/undesirable examples.

    Paper: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
    Optimization", arXiv 2402.01306.
    Formula: r = beta * (logp - ref_logp);
    z0 = max(0, mean(beta * (kl_logps - ref_kl_logps))), detached (a batch estimate of
    the KL; 0 when kl_logps is not given);
    desirable: loss = lambda_D * (1 - sig(r - z0));
    undesirable: loss = lambda_U * (1 - sig(z0 - r)).
    z0 depends on the whole ``kl_logps`` tensor, so pass the same mismatched pairs to
    every example of a batch (gather across processes for data parallelism).

    Args: logps, ref_logps, labels [B]; kl_logps, ref_kl_logps [M] (optional); beta;
    desirable_weight (lambda_D); undesirable_weight (lambda_U).
    Extra metric: ``kl`` (z0, broadcast).
    """
    good = labels.to(device=logps.device).bool()
    r = beta * (logps - ref_logps)
    if kl_logps is None or ref_kl_logps is None:
        z0 = torch.zeros((), dtype=r.dtype, device=r.device)
    else:
        z0 = (beta * (kl_logps - ref_kl_logps)).mean().clamp(min=0).detach()
    loss = torch.where(
        good,
        desirable_weight * torch.sigmoid(z0 - r),
        undesirable_weight * torch.sigmoid(r - z0),
    )
    return loss, _unpaired_metrics(r, logps, good, kl=z0.expand_as(r))


@register("bco", kind="unpaired", needs_reference=True)
def bco(
    logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    *,
    beta: float = 0.1,
    delta: float | Tensor = 0.0,
) -> LossOutput:
    """BCO: binary classifier optimisation on unpaired desirable/undesirable examples.

    Paper: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment", arXiv 2404.04656.
    Formula: r = beta * (logp - ref_logp); desirable: -log sig(r - delta);
    undesirable: -log sig(-(r - delta)). ``delta`` is the reward shift; the trainer
    supplies a running mean of the rewards. The paper's density-ratio reweighting
    (underlying distribution matching) is not included.

    Args: logps, ref_logps, labels [B]; beta; delta (float or tensor).
    """
    good = labels.to(device=logps.device).bool()
    r = beta * (logps - ref_logps)
    if isinstance(delta, Tensor):
        delta = delta.detach()
    z = r - delta
    loss = torch.where(good, F.softplus(-z), F.softplus(z))
    return loss, _unpaired_metrics(r, logps, good)
