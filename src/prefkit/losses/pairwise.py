"""Paired direct-preference losses: one chosen (w) and one rejected (l) response per prompt.

Canonical inputs (all ``[B]``): ``chosen_logps``, ``rejected_logps`` (summed log-probs of
the completion tokens under the policy), ``ref_chosen_logps``, ``ref_rejected_logps``
(same under the reference model; only losses that need one), ``chosen_lengths``,
``rejected_lengths`` (completion token counts; only length-normalised losses).

Notation: log-ratio ``rho = logp - ref_logp``; implicit reward ``r = beta * rho``;
``h`` = the logit the loss acts on (for DPO ``h = r_w - r_l``); ``sig`` = logistic.
Nothing is clamped: ``-log sig`` is ``F.logsigmoid`` (exact; ``F.softplus`` returns x itself
above 20), and the exponential / odds forms are in log space (:mod:`.stable`).
All losses return ``(loss [B], metrics)`` with detached ``[B]`` metrics named as in TRL:
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``
(1.0 when ``r_w > r_l``), ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import LossOutput, register
from .sft import nll, per_token
from .stable import log_odds, log_sigmoid_log_odds_ratio, neg_logsigmoid_exp_diff


def _pair_metrics(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    **extra: Tensor,
) -> dict[str, Tensor]:
    rw, rl = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {
        "rewards/chosen": rw,
        "rewards/rejected": rl,
        "rewards/margins": rw - rl,
        "rewards/accuracies": (rw > rl).to(rw.dtype),
        "logps/chosen": chosen_logps.detach(),
        "logps/rejected": rejected_logps.detach(),
    }
    metrics.update({k: v.detach() for k, v in extra.items()})
    return metrics


def _ref_metrics(
    beta: float, cw: Tensor, cl: Tensor, chosen: Tensor, rejected: Tensor, **extra: Tensor
) -> dict[str, Tensor]:
    return _pair_metrics(beta * cw, beta * cl, chosen, rejected, **extra)


def _check_eps(eps: float, upper: float, name: str) -> None:
    if not 0.0 <= eps < upper:
        raise ValueError(f"{name} must be in [0, {upper}), got {eps}")


# --------------------------------------------------------------------------- DPO family


@register("dpo", kind="pairwise", needs_reference=True)
def dpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """Direct Preference Optimization (sigmoid / Bradley-Terry loss).

    Paper: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
    Secretly a Reward Model", arXiv 2305.18290.
    Formula: h = beta * ((logp_w - ref_w) - (logp_l - ref_l)); loss = -log sig(h).

    Args: the four summed log-prob tensors [B]; beta: KL strength / reward scale.
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (cw - cl))
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps)


@register("cdpo", kind="pairwise", needs_reference=True)
def cdpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> LossOutput:
    """Conservative DPO: DPO with label smoothing (labels flipped with probability eps).

    Paper: Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"
    (ericmitchell.ai/cdpo.pdf); DPO: Rafailov et al. 2023, arXiv 2305.18290.
    Formula: h = beta * (rho_w - rho_l);
    loss = (1 - eps) * (-log sig(h)) + eps * (-log sig(-h)), eps = label_smoothing.

    Args: four summed log-prob tensors [B]; beta; label_smoothing eps in [0, 0.5).
    """
    _check_eps(label_smoothing, 0.5, "label_smoothing")
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    h = beta * (cw - cl)
    eps = label_smoothing
    loss = -(1.0 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps)


@register("rdpo", kind="pairwise", needs_reference=True)
def rdpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> LossOutput:
    """Robust DPO: unbiased DPO loss under a known preference-flip rate eps < 1/2.

    Paper: Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language
    Models with Noisy Feedback", arXiv 2403.00409.
    Formula: l(h) = -log sig(h), h = beta * (rho_w - rho_l);
    loss = ((1 - eps) * l(h) - eps * l(-h)) / (1 - 2 eps). Unbounded below for eps > 0
    (it is an unbiased estimate, not a divergence); eps = 0 is DPO.

    Args: four summed log-prob tensors [B]; beta; label_smoothing = flip rate eps.
    """
    _check_eps(label_smoothing, 0.5, "label_smoothing")
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    h = beta * (cw - cl)
    eps = label_smoothing
    loss = (eps * F.logsigmoid(-h) - (1.0 - eps) * F.logsigmoid(h)) / (1.0 - 2.0 * eps)
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps)


@register("ipo", kind="pairwise", needs_reference=True)
def ipo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """Identity Preference Optimisation: squared regression of the log-ratio gap.

    Paper: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
    Human Preferences", arXiv 2310.12036.
    Formula: loss = ((rho_w - rho_l) - 1 / (2 tau))^2 with tau = beta, on the summed
    log-ratios as given (pass per-token-mean log-probs to get TRL's averaged variant).

    Args: four summed log-prob tensors [B]; beta = tau, the regularisation strength.
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    loss = (cw - cl - 1.0 / (2.0 * beta)) ** 2
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps)


@register("hinge", kind="pairwise", needs_reference=True)
def hinge(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """SLiC-HF hinge (calibration) loss on reference-normalised log-ratios.

    Paper: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
    Feedback", arXiv 2305.10425.
    Formula (the reference-normalised form, as in the DPO-family literature):
    loss = max(0, 1 - beta * (rho_w - rho_l)), i.e. SLiC's max(0, delta - (rho_w - rho_l))
    scaled by beta with margin delta = 1/beta. SLiC's SFT regulariser is not included:
    add it with ``hinge+lambda*sft``.

    Args: four summed log-prob tensors [B]; beta (inverse margin).
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    loss = torch.relu(1.0 - beta * (cw - cl))
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps)


@register("rpo", kind="pairwise", needs_reference=True)
def rpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> LossOutput:
    """Regularized Preference Optimization: DPO plus an NLL (SFT) term on the chosen response.

    Paper: Liu et al. 2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss
    is Implicitly an Adversarial Regularizer", arXiv 2405.16436.
    Formula: loss = -log sig(beta * (rho_w - rho_l)) + alpha * (-logp_w / |y_w|).

    Args: four summed log-prob tensors [B], chosen_lengths [B]; beta; alpha (NLL weight).
    Extra metric: ``nll_loss``.
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    nll_w = nll(chosen_logps, chosen_lengths)
    loss = -F.logsigmoid(beta * (cw - cl)) + alpha * nll_w
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps, nll_loss=nll_w)


def _fdpo_loss(cw: Tensor, cl: Tensor, beta: float, divergence: str, f_alpha: float) -> Tensor:
    """-log sig(beta * (f'(u_w) - f'(u_l))) on log-ratios cw, cl, additive constants dropped."""
    if divergence == "reverse_kl":  # f(u) = u log u, f'(u) = log u + 1
        return -F.logsigmoid(beta * (cw - cl))
    if divergence == "js":  # f'(u) = log(2u / (1 + u)) = log 2 + log sig(log u)
        return -F.logsigmoid(beta * (F.logsigmoid(cw) - F.logsigmoid(cl)))
    if divergence in ("forward_kl", "alpha"):
        # f'(u) = (1 - u^-a) / a (forward KL: a = 1, f'(u) = -1/u + 1), so
        # h = beta / a * (exp(-a cl) - exp(-a cw)), exact in log space for any log-ratios
        if divergence == "alpha" and not 0.0 < f_alpha < 1.0:
            raise ValueError(f"f_alpha must be in (0, 1), got {f_alpha}")
        a = 1.0 if divergence == "forward_kl" else f_alpha
        return neg_logsigmoid_exp_diff(-a * cl, -a * cw, beta / a)
    raise ValueError(
        f"unknown divergence {divergence!r}; choose reverse_kl, forward_kl, js or alpha"
    )


@register("fdpo", kind="pairwise", needs_reference=True)
def fdpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """f-DPO: DPO under a general f-divergence constraint.

    Paper: Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference
    Optimization with Diverse Divergence Constraints", arXiv 2309.16240.
    Formula: u = pi/ref; h = beta * (f'(u_w) - f'(u_l)); loss = -log sig(h), with
      reverse_kl: f'(u) = log u + 1           (identical to DPO)
      forward_kl: f'(u) = -1/u
      js:         f'(u) = log(2u / (1 + u))
      alpha:      f'(u) = (1 - u^(-a)) / a,   a = f_alpha in (0, 1)
    forward_kl and alpha are computed in log space with no clamp (see
    :func:`prefkit.losses.stable.neg_logsigmoid_exp_diff`): exact for any log-ratios; a
    loss too large for the dtype is +inf, as the true value is (e.g. e^1000).

    Args: four summed log-prob tensors [B]; beta; divergence; f_alpha.
    Metrics ``rewards/*`` report beta * log(pi/ref) (f' is increasing, so accuracies match).
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    loss = _fdpo_loss(cw, cl, beta, divergence, f_alpha)
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps)


@register("exo", kind="pairwise", needs_reference=True)
def exo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
) -> LossOutput:
    """EXO (efficient exact optimization), pairwise form: reverse KL to the smoothed label.

    Paper: Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model
    Alignment", arXiv 2402.00856.
    Formula: h = beta * (rho_w - rho_l); p = sig(h) = softmax(r_w, r_l)_w; label
    distribution q = (1 - eps, eps); loss = KL(p || q)
      = p (log sig(h) - log(1 - eps)) + (1 - p) (log sig(-h) - log eps).
    The loss is >= 0 and zero when p = 1 - eps.

    Args: four summed log-prob tensors [B]; beta; label_smoothing eps in (0, 0.5).
    """
    if not 0.0 < label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in (0, 0.5) for EXO, got {label_smoothing}")
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    h = beta * (cw - cl)
    eps = label_smoothing
    p = torch.sigmoid(h)
    loss = p * (F.logsigmoid(h) - math.log1p(-eps)) + (1.0 - p) * (F.logsigmoid(-h) - math.log(eps))
    return loss, _ref_metrics(beta, cw, cl, chosen_logps, rejected_logps)


@register("bco_pair", kind="pairwise", needs_reference=True)
def bco_pair(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    delta: float | Tensor = 0.0,
) -> LossOutput:
    """BCO on pairs: binary classification of chosen vs rejected implicit rewards.

    Paper: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment", arXiv 2404.04656.
    Formula: r = beta * rho; loss = -log sig(r_w - delta) - log sig(-(r_l - delta)).
    ``delta`` is the reward shift; the trainer supplies a running mean of the rewards
    (e.g. mean of all r_w and r_l seen so far) — as a pure function it is an argument.

    Args: four summed log-prob tensors [B]; beta; delta (float or [B] tensor).
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    rw, rl = beta * cw, beta * cl
    if isinstance(delta, Tensor):
        delta = delta.detach()
    loss = -F.logsigmoid(rw - delta) - F.logsigmoid(-(rl - delta))
    return loss, _pair_metrics(rw, rl, chosen_logps, rejected_logps)


@register("apo_zero", kind="pairwise", needs_reference=True)
def apo_zero(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """APO-zero: raise the chosen likelihood, lower the rejected one (chosen better than model).

    Paper: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions: Addressing Underspecification in Alignment", arXiv 2408.06266.
    Formula: r = beta * rho; loss = (1 - sig(r_w)) + sig(r_l).

    Args: four summed log-prob tensors [B]; beta.
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    rw, rl = beta * cw, beta * cl
    loss = torch.sigmoid(-rw) + torch.sigmoid(rl)
    return loss, _pair_metrics(rw, rl, chosen_logps, rejected_logps)


@register("apo_down", kind="pairwise", needs_reference=True)
def apo_down(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """APO-down: lower both likelihoods, the rejected more (model better than chosen).

    Paper: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions", arXiv 2408.06266.
    Formula: r = beta * rho; loss = sig(r_w) + (1 - sig(r_w - r_l)).

    Args: four summed log-prob tensors [B]; beta.
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    rw, rl = beta * cw, beta * cl
    loss = torch.sigmoid(rw) + torch.sigmoid(rl - rw)
    return loss, _pair_metrics(rw, rl, chosen_logps, rejected_logps)


@register("nca_pair", kind="pairwise", needs_reference=True)
def nca_pair(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """NCA for binary preferences (K = 2, all target mass on the chosen response).

    Paper: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with
    Explicit Rewards", arXiv 2402.05369.
    Formula: r = beta * rho; loss = -log sig(r_w) - 1/2 log sig(-r_w) - 1/2 log sig(-r_l)
    (the listwise ``nca`` with scores (1, 0) and alpha -> 0).

    Args: four summed log-prob tensors [B]; beta.
    """
    cw, cl = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    rw, rl = beta * cw, beta * cl
    loss = -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)
    return loss, _pair_metrics(rw, rl, chosen_logps, rejected_logps)


# --------------------------------------------------------------------------- reference-free


@register("simpo", kind="pairwise", needs_reference=False)
def simpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.5,
) -> LossOutput:
    """SimPO: reference-free, length-normalised reward with a target margin.

    Paper: Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward", arXiv 2405.14734.
    Formula: r = beta * logp / |y|; gamma = beta * gamma_beta_ratio;
    loss = -log sig(r_w - r_l - gamma). Defaults beta = 2.0, gamma = 1.0.

    Args: chosen/rejected summed log-probs and lengths [B]; beta; gamma_beta_ratio.
    """
    rw = beta * per_token(chosen_logps, chosen_lengths)
    rl = beta * per_token(rejected_logps, rejected_lengths)
    loss = -F.logsigmoid(rw - rl - beta * gamma_beta_ratio)
    return loss, _pair_metrics(rw, rl, chosen_logps, rejected_logps)


@register("cpo", kind="pairwise", needs_reference=False)
def cpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> LossOutput:
    """Contrastive Preference Optimization: reference-free DPO plus NLL on the chosen response.

    Paper: Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries
    of LLM Performance in Machine Translation", arXiv 2401.08417.
    Formula: loss = -log sig(beta * (logp_w - logp_l)) + alpha * (-logp_w / |y_w|).

    Args: chosen/rejected summed log-probs [B], chosen_lengths [B]; beta; alpha (NLL weight).
    Extra metric: ``nll_loss``.
    """
    nll_w = nll(chosen_logps, chosen_lengths)
    loss = -F.logsigmoid(beta * (chosen_logps - rejected_logps)) + alpha * nll_w
    metrics = _pair_metrics(
        beta * chosen_logps, beta * rejected_logps, chosen_logps, rejected_logps, nll_loss=nll_w
    )
    return loss, metrics


@register("orpo", kind="pairwise", needs_reference=False)
def orpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """ORPO: NLL on the chosen response plus an odds-ratio preference term (no reference).

    Paper: Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without
    Reference Model", arXiv 2403.07691.
    Formula: m = logp / |y| (per-token mean); log odds(m) = m - log(1 - exp(m));
    loss = -m_w - beta * log sig(log odds(m_w) - log odds(m_l)). beta is the paper's
    lambda (default 0.1). The odds-ratio term is exact in log space up to m = 0 with no
    clamp (:func:`prefkit.losses.stable.log_sigmoid_log_odds_ratio`): p_w = 1 gives 0,
    p_l = 1 gives +inf, both = 1 the limit along p_w = p_l (log 2).

    Args: chosen/rejected summed log-probs and lengths [B]; beta (= lambda).
    Extra metrics: ``nll_loss``, ``log_odds_ratio``, ``log_odds_chosen``.
    """
    mw = per_token(chosen_logps, chosen_lengths)
    ml = per_token(rejected_logps, rejected_lengths)
    ratio = log_sigmoid_log_odds_ratio(mw, ml)
    loss = -mw - beta * ratio
    with torch.no_grad():  # metric only; 0 where both odds are infinite (p_w = p_l = 1)
        diff = log_odds(mw) - log_odds(ml)
        log_odds_diff = torch.where(diff.isnan(), torch.zeros_like(diff), diff)
    metrics = _pair_metrics(
        beta * mw,
        beta * ml,
        chosen_logps,
        rejected_logps,
        nll_loss=-mw,
        log_odds_ratio=ratio,
        log_odds_chosen=log_odds_diff,
    )
    return loss, metrics
