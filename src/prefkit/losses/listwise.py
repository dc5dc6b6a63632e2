"""Listwise and scalar-reward preference losses over K responses per prompt.

Canonical inputs (all ``[B, K]``): ``logps`` (summed policy log-probs), ``ref_logps``
(reference), ``lengths`` (completion token counts), ``scores`` (higher = better; a
ranking is passed as ``K - 1 - rank``, ties as equal scores; NCA/InfoNCA read them as
scalar rewards), ``mask`` (bool, True = response present; ``None`` = all present).
Absent responses are ignored everywhere (their values may be garbage or NaN).

Orderings: responses are sorted by score, best first; ties keep their given order
(stable sort). Plackett-Luce losses therefore treat tied responses as ordered by
position; LiPO skips pairs with equal scores.

Metrics (detached, ``[B]``): ``rewards/chosen`` = implicit reward of the best-scored
response (first on ties); ``rewards/rejected`` = mean reward of the other present
responses; ``rewards/margins`` = their difference; ``rewards/accuracies`` = fraction of
pairs with different scores whose rewards are ordered the same way (0 when a row has no
such pair); ``logps/chosen`` / ``logps/rejected`` likewise for the log-probs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import LossOutput, register
from .sft import best_index


def _present(mask: Tensor | None, like: Tensor) -> Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    return mask.to(device=like.device, dtype=torch.bool)


def _clean(x: Tensor, present: Tensor, fill: float = 0.0) -> Tensor:
    """``x`` where present, ``fill`` elsewhere (keeps NaN padding out of the graph)."""
    return torch.where(present, x, torch.full_like(x, fill))


def _scores(scores: Tensor | None, present: Tensor, dtype: torch.dtype) -> Tensor:
    """Scores as floats; ``None`` means "given order is best first" (K-1, ..., 0)."""
    if scores is None:
        k = present.shape[-1]
        scores = torch.arange(k - 1, -1, -1, device=present.device).expand(present.shape)
    return _clean(scores.to(dtype), present)


def _order(scores: Tensor, present: Tensor) -> Tensor:
    """[B, K] permutation sorting present responses best first, ties stable, absent last."""
    key = torch.where(present, -scores, torch.full_like(scores, math.inf))
    return torch.sort(key, dim=-1, stable=True).indices


def plackett_luce_nll(s: Tensor, scores: Tensor, present: Tensor) -> Tensor:
    """-log P_PL(order by scores | s) = -sum_k [s_(k) - logsumexp_{j>=k} s_(j)], present only."""
    order = _order(scores, present)
    s_sorted = s.gather(-1, order)
    p_sorted = present.gather(-1, order)
    filled = s_sorted.masked_fill(~p_sorted, torch.finfo(s.dtype).min)
    tail = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)
    return -torch.where(p_sorted, s_sorted - tail, torch.zeros_like(s_sorted)).sum(-1)


def _mean_over(x: Tensor, keep: Tensor) -> Tensor:
    return (x * keep).sum(-1) / keep.sum(-1).clamp(min=1)


def _list_metrics(
    rewards: Tensor, logps: Tensor, scores: Tensor, present: Tensor, **extra: Tensor
) -> dict[str, Tensor]:
    r, lp = rewards.detach(), logps.detach()
    best = best_index(scores, present).unsqueeze(-1)
    rest = present & ~F.one_hot(best.squeeze(-1), r.shape[-1]).bool()
    r_best, lp_best = r.gather(-1, best).squeeze(-1), lp.gather(-1, best).squeeze(-1)
    r_rest = _mean_over(r, rest)
    both = present.unsqueeze(-1) & present.unsqueeze(-2)
    better = both & (scores.unsqueeze(-1) > scores.unsqueeze(-2))
    right = better & (r.unsqueeze(-1) > r.unsqueeze(-2))
    acc = right.sum((-1, -2)).to(r.dtype) / better.sum((-1, -2)).clamp(min=1).to(r.dtype)
    metrics = {
        "rewards/chosen": r_best,
        "rewards/rejected": r_rest,
        "rewards/margins": r_best - r_rest,
        "rewards/accuracies": acc,
        "logps/chosen": lp_best,
        "logps/rejected": _mean_over(lp, rest),
    }
    metrics.update({k: v.detach() for k, v in extra.items()})
    return metrics


def _implicit(
    beta: float, logps: Tensor, ref_logps: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    present = _present(mask, logps)
    lp = _clean(logps, present)
    return present, lp, beta * (lp - _clean(ref_logps, present))


# --------------------------------------------------------------------------- Plackett-Luce


@register("listwise_dpo", kind="listwise", needs_reference=True)
def listwise_dpo(
    logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """DPO for rankings: Plackett-Luce likelihood of the ranking under implicit rewards.

    Paper: Rafailov et al. 2023, "Direct Preference Optimization", arXiv 2305.18290
    (section on Plackett-Luce models).
    Formula: r = beta * (logp - ref_logp); sigma = responses sorted by score, best first;
    loss = -sum_k log( exp(r_sigma(k)) / sum_{j>=k} exp(r_sigma(j)) ).
    With K = 2 this is exactly DPO. Ties keep their given order; scores=None means the
    list is already best first.

    Args: logps, ref_logps [B, K]; scores [B, K] (optional); mask [B, K]; beta.
    """
    present, lp, r = _implicit(beta, logps, ref_logps, mask)
    sc = _scores(scores, present, r.dtype)
    loss = plackett_luce_nll(r, sc, present)
    return loss, _list_metrics(r, lp, sc, present)


@register("pro", kind="listwise", needs_reference=False)
def pro(
    logps: Tensor,
    lengths: Tensor,
    scores: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    beta: float = 1.0,
    sft_weight: float = 0.0,
) -> LossOutput:
    """PRO: Plackett-Luce over length-normalised policy log-probs (no reference model).

    Paper: Song et al. 2023, "Preference Ranking Optimization for Human Alignment",
    arXiv 2306.17492.
    Formula: s = beta * logp / |y|; sigma = responses best first;
    loss = -sum_k log( exp(s_sigma(k)) / sum_{j>=k} exp(s_sigma(j)) )
           + sft_weight * (-logp_best / |y_best|).
    The paper adds an SFT term on the best response (set ``sft_weight`` or use
    ``pro+w*sft``) and reward-gap temperatures, which are not implemented here.
    With K = 2 and sft_weight = 0 this is the reference-free length-normalised pairwise
    logistic loss -log sig(s_w - s_l).

    Args: logps, lengths [B, K]; scores [B, K] (optional: None = given order);
    mask [B, K]; beta (score scale); sft_weight.
    """
    present = _present(mask, logps)
    lp = _clean(logps, present)
    norm = lp / _clean(lengths.to(lp.dtype), present, 1.0).clamp(min=1.0)
    s = beta * norm
    sc = _scores(scores, present, s.dtype)
    loss = plackett_luce_nll(s, sc, present)
    if sft_weight:
        best = best_index(sc, present).unsqueeze(-1)
        loss = loss - sft_weight * norm.gather(-1, best).squeeze(-1)
    return loss, _list_metrics(s, lp, sc, present)


# --------------------------------------------------------------------------- LiPO


def lambda_weights(s: Tensor, scores: Tensor, present: Tensor) -> Tensor:
    """LiPO-lambda pair weights Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, [B, K, K].

    G = 2^score - 1; D(tau) = log2(1 + tau); tau = 1-based rank of each present response
    by the (detached) model scores s, ties broken by position.
    """
    order = _order(s.detach(), present)
    k = s.shape[-1]
    positions = torch.arange(1, k + 1, device=s.device, dtype=s.dtype).expand_as(s)
    tau = torch.empty_like(s).scatter_(-1, order, positions)
    inv_d = 1.0 / torch.log2(1.0 + tau)
    gain = torch.exp2(scores) - 1.0
    return (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (
        inv_d.unsqueeze(-1) - inv_d.unsqueeze(-2)
    ).abs()


@register("lipo", kind="listwise", needs_reference=True)
def lipo(
    logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor,
    mask: Tensor | None = None,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """LiPO-lambda: listwise preference optimisation with LambdaLoss pair weights.

    Paper: Liu et al. 2024, "LiPO: Listwise Preference Optimization through
    Learning-to-Rank", arXiv 2402.01878.
    Formula: s = beta * (logp - ref_logp);
    loss = -sum_{psi_i > psi_j} Delta_ij log sig(s_i - s_j),
    Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, G = 2^psi - 1,
    D(tau) = log2(1 + tau), tau = rank of s (detached), psi = scores. Pairs with equal
    scores are skipped; the sum is not normalised. Use small graded labels as scores
    (e.g. rank positions): G grows as 2^psi.
    K = 2, scores (1, 0): loss = (1 - 1/log2(3)) * DPO ~= 0.36907 * DPO.

    Args: logps, ref_logps, scores [B, K]; mask [B, K]; beta.
    """
    present, lp, s = _implicit(beta, logps, ref_logps, mask)
    sc = _scores(scores, present, s.dtype)
    delta = lambda_weights(s, sc, present)
    pairs = present.unsqueeze(-1) & present.unsqueeze(-2) & (sc.unsqueeze(-1) > sc.unsqueeze(-2))
    logsig = F.logsigmoid(s.unsqueeze(-1) - s.unsqueeze(-2))
    loss = -torch.where(pairs, delta * logsig, torch.zeros_like(logsig)).sum((-1, -2))
    return loss, _list_metrics(s, lp, sc, present)


# --------------------------------------------------------------------------- NCA / InfoNCA


def _soft_targets(scores: Tensor, present: Tensor, alpha: float) -> Tensor:
    """softmax(scores / alpha) over present responses, 0 for absent ones (no gradient)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    logits = (scores / alpha).masked_fill(~present, torch.finfo(scores.dtype).min)
    return torch.softmax(logits, dim=-1).mul(present).detach()


@register("infonca", kind="listwise", needs_reference=True)
def infonca(
    logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor,
    mask: Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> LossOutput:
    """InfoNCA: cross-entropy between reward-softmax targets and implicit-reward softmax.

    Paper: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with
    Explicit Rewards", arXiv 2402.05369.
    Formula: r = beta * (logp - ref_logp); loss = -sum_i softmax(scores/alpha)_i
    log softmax(r)_i over present responses. K = 2, scores (1, 0), alpha -> 0: DPO.

    Args: logps, ref_logps, scores (scalar rewards) [B, K]; mask [B, K]; beta; alpha
    (reward temperature).
    """
    present, lp, r = _implicit(beta, logps, ref_logps, mask)
    sc = _scores(scores, present, r.dtype)
    target = _soft_targets(sc, present, alpha)
    logq = torch.log_softmax(r.masked_fill(~present, torch.finfo(r.dtype).min), dim=-1)
    logq = torch.where(present, logq, torch.zeros_like(logq))
    loss = -(target * logq).sum(-1)
    return loss, _list_metrics(r, lp, sc, present)


@register("nca", kind="listwise", needs_reference=True)
def nca(
    logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor,
    mask: Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> LossOutput:
    """NCA: noise-contrastive alignment, optimising absolute (not relative) likelihoods.

    Paper: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with
    Explicit Rewards", arXiv 2402.05369.
    Formula: r = beta * (logp - ref_logp); n = number of present responses;
    loss = -sum_i softmax(scores/alpha)_i log sig(r_i) - (1/n) sum_i log sig(-r_i).

    Args: logps, ref_logps, scores (scalar rewards) [B, K]; mask [B, K]; beta; alpha.
    """
    present, lp, r = _implicit(beta, logps, ref_logps, mask)
    sc = _scores(scores, present, r.dtype)
    target = _soft_targets(sc, present, alpha)
    n = present.sum(-1).clamp(min=1).to(r.dtype)
    zero = torch.zeros_like(r)
    pos = torch.where(present, target * F.logsigmoid(r), zero).sum(-1)
    neg = torch.where(present, F.logsigmoid(-r), zero).sum(-1) / n
    return -pos - neg, _list_metrics(r, lp, sc, present)
