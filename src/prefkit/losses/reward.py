"""Reward-model objectives: losses on the *outputs of a reward model*, kind ``"reward"``.

These losses train a model that scores responses (a scalar head, a multi-attribute
regression head, or an embedding head for general preference models); they never read
policy or reference log-probs, so ``needs_reference`` is False for all of them.

Canonical inputs:

* pairwise: ``chosen_rewards`` [B], ``rejected_rewards`` [B]; optional ``margins`` [B]
  (preference strength), ``soft_labels`` [B] (probability that chosen is better),
  ``ties`` [B] (bool, True = the annotator declared a tie).
* listwise: ``rewards`` [B, K], ``scores`` [B, K] (higher = better, ties equal; ``None``
  = the given order is best first), ``mask`` [B, K] (bool, True = present).
* regression: ``predictions`` [B, A], ``targets`` [B, A], ``target_mask`` [B, A]
  (bool, True = the attribute was rated; missing targets may be NaN).
* general preference model (GPM): ``chosen_embeddings`` [B, D], ``rejected_embeddings``
  [B, D] with D even, optional ``scale`` [B] or [B, D/2].
* ODIN: ``chosen_rewards`` / ``rejected_rewards`` (quality head),
  ``chosen_length_rewards`` / ``rejected_length_rewards`` (length head),
  ``chosen_lengths`` / ``rejected_lengths``; optional ``quality_weight`` [H] and
  ``length_weight`` [H] (the two heads' weight vectors).

Notation: ``d = r_w - r_l``; ``sig`` = logistic; ``-log sig(x) = softplus(-x)`` is used
everywhere so that |d| = 1e4 gives finite losses and gradients.

Metrics (detached [B]): ``accuracy`` (1 when r_w > r_l, 0.5 when equal; listwise: the
fraction of pairs with different scores ordered correctly, equal rewards counting 1/2),
``margin`` (r_w - r_l), ``rewards/chosen``, ``rewards/rejected``; see each loss for more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .listwise import plackett_luce_nll
from .registry import LossOutput, register
from .sft import best_index

__all__ = [
    "bt",
    "bt_ties",
    "gpm",
    "gpm_logit",
    "odin",
    "pearson_corr",
    "pl_rm",
    "regression",
    "reward_centering",
]


# --------------------------------------------------------------------------- helpers


def _pair_accuracy(d: Tensor) -> Tensor:
    """1 where d > 0, 0.5 where d == 0, 0 elsewhere (detached)."""
    d = d.detach()
    return (d > 0).to(d.dtype) + 0.5 * (d == 0).to(d.dtype)


def _reward_metrics(chosen: Tensor, rejected: Tensor, **extra: Tensor) -> dict[str, Tensor]:
    rw, rl = chosen.detach(), rejected.detach()
    metrics = {
        "accuracy": _pair_accuracy(rw - rl),
        "margin": rw - rl,
        "rewards/chosen": rw,
        "rewards/rejected": rl,
    }
    metrics.update({k: v.detach() for k, v in extra.items()})
    return metrics


def _check_smoothing(eps: float) -> None:
    if not 0.0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {eps}")


def _binary_nll(d: Tensor, soft_labels: Tensor | None, label_smoothing: float) -> Tensor:
    """-(p log sig(d) + (1 - p) log sig(-d)); p = soft_labels if given, else 1 - eps."""
    if soft_labels is not None:
        p = soft_labels.to(d.dtype)
        return p * F.softplus(-d) + (1.0 - p) * F.softplus(d)
    _check_smoothing(label_smoothing)
    eps = label_smoothing
    if eps == 0.0:
        return F.softplus(-d)
    return (1.0 - eps) * F.softplus(-d) + eps * F.softplus(d)


def pearson_corr(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of two flat tensors (a 0-dim tensor; 0 when either is constant).

    Formula: sum((x - mean x)(y - mean y)) / sqrt(sum (x - mean x)^2 * sum (y - mean y)^2).
    The zero-variance case is handled without NaN gradients.
    """
    x = x.reshape(-1)
    y = y.reshape(-1).to(x.dtype)
    xc, yc = x - x.mean(), y - y.mean()
    prod = (xc * xc).sum() * (yc * yc).sum()
    ok = prod > 0
    denom = torch.sqrt(torch.where(ok, prod, torch.ones_like(prod)))
    return torch.where(ok, (xc * yc).sum() / denom, torch.zeros_like(prod))


# --------------------------------------------------------------------------- pairwise


@register("bt", kind="reward", needs_reference=False)
def bt(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margins: Tensor | None = None,
    soft_labels: Tensor | None = None,
    *,
    margin_scale: float = 1.0,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Bradley-Terry pairwise reward-model loss (with optional margin, smoothing, soft labels).

    Papers: Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs"; Ouyang et al.
    2022, "Training language models to follow instructions with human feedback" (InstructGPT),
    arXiv 2203.02155; margin: Touvron et al. 2023, "Llama 2", arXiv 2307.09288.
    Formula: d = r_w - r_l - margin_scale * margins (margin term only when ``margins`` is
    given); loss = -log sig(d). With label smoothing eps:
    loss = (1 - eps) * (-log sig(d)) + eps * (-log sig(-d)). With ``soft_labels`` p
    (probability that the chosen response is better; overrides smoothing):
    loss = -(p log sig(d) + (1 - p) log sig(-d)).

    Args: chosen_rewards, rejected_rewards [B]; margins [B] (optional, preference strength);
    soft_labels [B] in [0, 1] (optional); margin_scale; label_smoothing eps in [0, 0.5].
    Metrics: ``accuracy``, ``margin`` (r_w - r_l, without the target margin),
    ``rewards/chosen``, ``rewards/rejected``.
    """
    d = chosen_rewards - rejected_rewards
    if margins is not None:
        d = d - margin_scale * margins.to(d.dtype)
    loss = _binary_nll(d, soft_labels, label_smoothing)
    return loss, _reward_metrics(chosen_rewards, rejected_rewards)


def _log_tie_prob(d: Tensor, nu: Tensor) -> Tensor:
    """log P(tie) under Rao-Kupper: log(theta^2 - 1) - softplus(nu - d) - softplus(nu + d)."""
    # log(theta^2 - 1) = 2 nu + log(1 - exp(-2 nu)); -inf at theta = 1 (ties impossible)
    log_theta_sq_m1 = 2.0 * nu + torch.log(-torch.expm1(-2.0 * nu))
    return log_theta_sq_m1 - F.softplus(nu - d) - F.softplus(nu + d)


@register("bt_ties", kind="reward", needs_reference=False)
def bt_ties(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    ties: Tensor | None = None,
    *,
    theta: float | Tensor = 1.5,
) -> LossOutput:
    """Rao-Kupper Bradley-Terry with ties: a tie zone of width 2 log(theta) around d = 0.

    Paper: Rao & Kupper 1967, "Ties in Paired-Comparison Experiments: A Generalization of
    the Bradley-Terry Model", JASA 62(317).
    Formula: d = r_w - r_l, nu = log(theta), theta >= 1;
    P(w > l) = sig(d - nu), P(l > w) = sig(-d - nu),
    P(tie) = 1 - P(w > l) - P(l > w) = (theta^2 - 1) / ((1 + theta e^-d)(1 + theta e^d));
    loss = -log P(tie) on rows with ``ties`` True, else -log P(w > l). Computed in log
    space: log P(tie) = log(theta^2 - 1) - softplus(nu - d) - softplus(nu + d).
    theta = 1 without ties is exactly ``bt``; theta = 1 with a tie gives an infinite loss.

    Args: chosen_rewards, rejected_rewards [B]; ties [B] bool (optional); theta >= 1
    (a float or a 0-dim tensor, e.g. ``1 + softplus(param)`` to learn it).
    Metrics: those of ``bt`` plus ``prob/tie`` (the model's P(tie)).
    """
    d = chosen_rewards - rejected_rewards
    theta_t = torch.as_tensor(theta, dtype=d.dtype, device=d.device)
    if bool((theta_t.detach() < 1.0).any()):
        raise ValueError(f"theta must be >= 1, got {theta}")
    nu = torch.log(theta_t)
    win = F.softplus(nu - d)  # -log sig(d - nu)
    log_tie = _log_tie_prob(d, nu)
    if ties is None:
        loss = win
    else:
        tie = ties.to(device=d.device, dtype=torch.bool)
        loss = torch.where(tie, -log_tie, win)
    return loss, _reward_metrics(chosen_rewards, rejected_rewards, **{"prob/tie": log_tie.exp()})


@register("reward_centering", kind="reward", needs_reference=False)
def reward_centering(
    chosen_rewards: Tensor, rejected_rewards: Tensor, *, coefficient: float = 1.0
) -> LossOutput:
    """Reward centering auxiliary term: pulls the pair's summed reward to zero.

    Paper: Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but
    do not Eliminate Reward Hacking", arXiv 2312.09244 (they use coefficient 0.01).
    Formula: loss = coefficient * (r_w + r_l)^2. Meant as an added term: the spec
    ``"bt+0.01*reward_centering"`` is the paper's objective (the combination weight plays
    the role of the coefficient, which defaults to 1).

    Args: chosen_rewards, rejected_rewards [B]; coefficient.
    Metrics: ``rewards/sum`` (r_w + r_l).
    """
    s = chosen_rewards + rejected_rewards
    return coefficient * s * s, {"rewards/sum": s.detach()}


# --------------------------------------------------------------------------- listwise


@register("pl_rm", kind="reward", needs_reference=False)
def pl_rm(rewards: Tensor, scores: Tensor | None = None, mask: Tensor | None = None) -> LossOutput:
    """Plackett-Luce reward-model loss on a ranking of K responses.

    Papers: Plackett 1975, "The Analysis of Permutations"; Luce 1959, "Individual Choice
    Behavior"; for reward models / preference ranking: Song et al. 2023, "Preference
    Ranking Optimization for Human Alignment" (PRO), arXiv 2306.17492.
    Formula: order the present responses by score, best first (ties keep their given
    order: stable sort); loss = -sum_k [r_(k) - logsumexp_{j >= k} r_(j)].
    With K = 2 this is ``bt``: -log sig(r_w - r_l).

    Args: rewards [B, K]; scores [B, K] (higher = better; None = given order best first);
    mask [B, K] bool (absent responses are ignored; their rewards may be NaN).
    Metrics: ``accuracy`` (fraction of pairs with different scores whose rewards are
    ordered the same way, equal rewards counting 1/2; 0 for rows with no such pair),
    ``rewards/chosen`` (best-scored response, first on ties), ``rewards/rejected`` (mean of
    the other present responses), ``margin`` (their difference).
    """
    present = (
        torch.ones_like(rewards, dtype=torch.bool)
        if mask is None
        else mask.to(device=rewards.device, dtype=torch.bool)
    )
    zero = torch.zeros_like(rewards)
    r = torch.where(present, rewards, zero)
    if scores is None:
        k = rewards.shape[-1]
        scores = torch.arange(k - 1, -1, -1, device=rewards.device).expand(rewards.shape)
    s = torch.where(present, scores.to(rewards.dtype), zero)
    loss = plackett_luce_nll(r, s, present)

    rd = r.detach()
    best = best_index(s, present).unsqueeze(-1)
    r_best = rd.gather(-1, best).squeeze(-1)
    rest = present & ~F.one_hot(best.squeeze(-1), rd.shape[-1]).bool()
    r_rest = (rd * rest).sum(-1) / rest.sum(-1).clamp(min=1)
    both = present.unsqueeze(-1) & present.unsqueeze(-2)
    better = both & (s.unsqueeze(-1) > s.unsqueeze(-2))
    diff = rd.unsqueeze(-1) - rd.unsqueeze(-2)
    right = (better & (diff > 0)).to(rd.dtype) + 0.5 * (better & (diff == 0)).to(rd.dtype)
    acc = right.sum((-1, -2)) / better.sum((-1, -2)).clamp(min=1).to(rd.dtype)
    metrics = {
        "accuracy": acc,
        "margin": r_best - r_rest,
        "rewards/chosen": r_best,
        "rewards/rejected": r_rest,
    }
    return loss, metrics


# --------------------------------------------------------------------------- regression


@register("regression", kind="reward", needs_reference=False)
def regression(
    predictions: Tensor, targets: Tensor, target_mask: Tensor | None = None
) -> LossOutput:
    """Multi-attribute regression reward model (mean squared error over rated attributes).

    Paper: Wang et al. 2024, "HelpSteer2: Open-source dataset for training top-performing
    reward models", arXiv 2406.08673 (SteerLM-style regression on helpfulness,
    correctness, coherence, complexity, verbosity).
    Formula: loss_i = sum_a m_ia (p_ia - t_ia)^2 / max(1, sum_a m_ia), m = target_mask
    (all ones when None); a row with no rated attribute has loss 0.

    Args: predictions, targets [B, A] (a [B] pair is treated as A = 1); target_mask
    [B, A] bool (optional; missing targets may be NaN).
    Metrics: ``mse`` (the loss) and ``mse/<a>`` for each attribute index a: the squared
    error of that attribute, 0 where it is missing.
    """
    if predictions.dim() == 1:
        predictions = predictions.unsqueeze(-1)
        targets = targets.unsqueeze(-1)
        target_mask = None if target_mask is None else target_mask.unsqueeze(-1)
    t = targets.to(predictions.dtype)
    if target_mask is None:
        present = torch.ones_like(predictions, dtype=torch.bool)
    else:
        present = target_mask.to(device=predictions.device, dtype=torch.bool)
    diff = predictions - torch.where(present, t, torch.zeros_like(t))
    sq = torch.where(present, diff * diff, torch.zeros_like(diff))
    loss = sq.sum(-1) / present.sum(-1).clamp(min=1).to(sq.dtype)
    metrics = {"mse": loss.detach()}
    sqd = sq.detach()
    for a in range(sqd.shape[-1]):
        metrics[f"mse/{a}"] = sqd[..., a]
    return loss, metrics


# --------------------------------------------------------------------------- GPM


def gpm_logit(e1: Tensor, e2: Tensor, scale: Tensor | float | None = None) -> Tensor:
    """General preference score <R e1, e2> with R block-diagonal of [[0, -1], [1, 0]].

    Paper: Zhang et al. 2024, "Beyond Bradley-Terry Models: A General Preference Model for
    Language Model Alignment", arXiv 2410.02197.
    Formula: for each 2-dim block b, (R e1)_b = (-e1[2b+1], e1[2b]), so
    logit = sum_b lambda_b (e1[2b] e2[2b+1] - e1[2b+1] e2[2b]), lambda = scale (1 when None).
    Skew-symmetric: gpm_logit(e1, e2) = -gpm_logit(e2, e1); gpm_logit(e, e) = 0.

    Args: e1, e2 [..., D] with D even; scale: a float or 0-dim tensor (e.g. a learnable
    ``exp(log_scale)``), [...] (one factor per row) or [..., D/2] (one eigenvalue per
    block, e.g. from a prompt-dependent gate). Returns [...].
    """
    if e1.shape[-1] % 2 or e2.shape[-1] != e1.shape[-1]:
        raise ValueError(
            f"GPM embeddings need equal even last dimensions, got {e1.shape} and {e2.shape}"
        )
    a = e1.unflatten(-1, (-1, 2))
    b = e2.unflatten(-1, (-1, 2))
    blocks = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]  # [..., D/2]
    if scale is None:
        return blocks.sum(-1)
    if not isinstance(scale, Tensor):
        return scale * blocks.sum(-1)
    scale = scale.to(blocks.dtype)
    if scale.dim() == blocks.dim() and scale.shape[-1] == blocks.shape[-1]:
        return (scale * blocks).sum(-1)
    return scale * blocks.sum(-1)


@register("gpm", kind="reward", needs_reference=False)
def gpm(
    chosen_embeddings: Tensor,
    rejected_embeddings: Tensor,
    scale: Tensor | None = None,
    soft_labels: Tensor | None = None,
    *,
    beta: float = 1.0,
    label_smoothing: float = 0.0,
    normalize: bool = False,
) -> LossOutput:
    """General Preference Model loss: logistic loss on a skew-symmetric embedding score.

    Paper: Zhang et al. 2024, "Beyond Bradley-Terry Models: A General Preference Model for
    Language Model Alignment", arXiv 2410.02197. The score can express cyclic
    (intransitive) preferences that no scalar reward can.
    Formula: h = beta * gpm_logit(e_w, e_l, scale) = beta * <R e_w, e_l>;
    loss = -log sig(h); with label smoothing / soft labels exactly as ``bt`` (d -> h).
    With ``normalize`` the embeddings are L2-normalised first (as in the paper's head).

    Args: chosen_embeddings, rejected_embeddings [B, D] (D even); scale (optional): a
    0-dim tensor (a head's learnable scale), [B], or [B, D/2] (prompt-dependent
    eigenvalue scales); soft_labels [B] (optional); beta
    (global scale); label_smoothing eps in [0, 0.5]; normalize.
    Metrics: ``accuracy`` (1 when h > 0, 0.5 when h = 0), ``margin`` (h).
    """
    ew, el = chosen_embeddings, rejected_embeddings
    if normalize:
        ew, el = F.normalize(ew, dim=-1), F.normalize(el, dim=-1)
    h = beta * gpm_logit(ew, el, scale)
    loss = _binary_nll(h, soft_labels, label_smoothing)
    hd = h.detach()
    return loss, {"accuracy": _pair_accuracy(hd), "margin": hd}


# --------------------------------------------------------------------------- ODIN


@register("odin", kind="reward", needs_reference=False)
def odin(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    chosen_length_rewards: Tensor,
    rejected_length_rewards: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    quality_weight: Tensor | None = None,
    length_weight: Tensor | None = None,
    *,
    length_coef: float = 1.0,
    decorr_coef: float = 1.0,
    ortho_coef: float = 1.0,
) -> LossOutput:
    """ODIN: disentangle a quality head from a length head to mitigate length hacking.

    Paper: Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF",
    arXiv 2402.07319. Only the quality head is used as the reward after training.
    Formula: q = quality rewards, s = length-head rewards, L = lengths, each pooled over
    chosen and rejected (2B values); rho = Pearson correlation over that batch;
    loss_i = -log sig((q_w + s_w) - (q_l + s_l))_i
             - length_coef * rho(s, L) + decorr_coef * |rho(q, L)|
             + ortho_coef * |cos(quality_weight, length_weight)| (when both are given).
    The correlation and orthogonality terms are batch statistics: they are added to
    every example's loss equally, so the per-example loss is the BT part plus the batch
    terms and the mean over the batch is the ODIN objective. (Gradient of the batch
    terms under a per-example weighting therefore equals their gradient times the mean
    weight.)

    Args: chosen/rejected quality rewards, length-head rewards and lengths [B];
    quality_weight, length_weight [H] (optional head weights); length_coef, decorr_coef,
    ortho_coef.
    Metrics: ``accuracy``, ``margin``, ``rewards/chosen``, ``rewards/rejected`` of the
    quality head; ``total/accuracy``, ``total/margin`` of the summed reward;
    ``corr/quality_length``, ``corr/length_length`` (broadcast to [B]); ``cos/heads``
    when the head weights are given.
    """
    tw = chosen_rewards + chosen_length_rewards
    tl = rejected_rewards + rejected_length_rewards
    loss = F.softplus(-(tw - tl))
    lengths = torch.cat([chosen_lengths, rejected_lengths]).to(loss.dtype)
    corr_q = pearson_corr(torch.cat([chosen_rewards, rejected_rewards]), lengths)
    corr_s = pearson_corr(torch.cat([chosen_length_rewards, rejected_length_rewards]), lengths)
    batch = decorr_coef * corr_q.abs() - length_coef * corr_s
    ones = torch.ones_like(loss).detach()
    extra = {
        "total/accuracy": _pair_accuracy(tw - tl),
        "total/margin": (tw - tl),
        "corr/quality_length": corr_q * ones,
        "corr/length_length": corr_s * ones,
    }
    if quality_weight is not None and length_weight is not None:
        cos = F.cosine_similarity(
            quality_weight.reshape(-1).to(loss.dtype),
            length_weight.reshape(-1).to(loss.dtype),
            dim=0,
        )
        batch = batch + ortho_coef * cos.abs()
        extra["cos/heads"] = cos * ones
    loss = loss + batch
    return loss, _reward_metrics(chosen_rewards, rejected_rewards, **extra)
