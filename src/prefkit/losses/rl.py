"""Pure maths for online RL from human feedback: advantages, KL estimators, PPO losses.

Everything here is a function of tensors (plus two tiny stateful helpers, the KL
controllers and :class:`RunningMoments`); nothing touches a model or a trainer.

Shapes and conventions:

* ``scores`` — one scalar reward per response. Group-based estimators take ``[P, G]``
  (P prompts x G sampled responses per prompt).
* token-level tensors are ``[B, T]`` with a ``mask [B, T]`` (bool or 0/1) marking the
  valid completion tokens; each row's valid tokens are a prefix (right padding).
  Values at masked-out positions are never read (they may be garbage, ``inf`` or
  ``nan``) and every ``[B, T]`` output is 0 there.
* ``log_ratio = logps - ref_logps`` is policy minus reference with samples drawn from
  the policy.

Two registries of their own (separate from :mod:`prefkit.losses.registry`, which is for
offline preference / reward losses with a different contract)::

    >>> from prefkit.losses import rl
    >>> adv = rl.get_advantage("grpo")(scores)                    # [P, G]
    >>> loss, metrics = rl.get_policy_loss("ppo_clip")(logps, old_logps, adv_tok, mask)
    >>> total, count = rl.aggregate(loss, mask, "token_mean")     # sum totals / sum counts
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "KL_KINDS",
    "POLICY_LOSSES",
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "aggregate",
    "broadcast_to_tokens",
    "dr_grpo",
    "fill_batch",
    "gae",
    "get_advantage",
    "get_policy_loss",
    "grpo",
    "gspo",
    "kl_penalty",
    "length_penalty",
    "overlong_penalty",
    "ppo_clip",
    "register_advantage",
    "register_policy_loss",
    "reinforce",
    "reinforce_pp",
    "reinforce_pp_returns",
    "remax",
    "rloo",
    "token_rewards",
    "value_loss",
    "varied_groups",
    "vanilla_pg",
    "whiten",
]

_Fn = TypeVar("_Fn", bound=Callable[..., Any])

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Any]] = {}
POLICY_LOSSES: dict[str, Callable[..., Any]] = {}

KL_KINDS = ("k1", "k2", "k3", "abs")
AGGREGATION_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")

# Log-ratios fed to exp() are clamped to +-_EXP_CLAMP (exp(20) ~ 4.9e8, finite in float32).
_EXP_CLAMP = 20.0


# --------------------------------------------------------------------------- registries


def _register(table: dict[str, Callable[..., Any]], what: str, name: str) -> Callable[[_Fn], _Fn]:
    def deco(fn: _Fn) -> _Fn:
        if name in table:
            raise ValueError(f"{what} {name!r} is already registered")
        table[name] = fn
        return fn

    return deco


def _lookup(table: dict[str, Callable[..., Any]], what: str, name: str) -> Callable[..., Any]:
    try:
        return table[name]
    except KeyError:
        raise ValueError(
            f"unknown {what} {name!r}; available: {', '.join(sorted(table))}"
        ) from None


def register_advantage(name: str) -> Callable[[_Fn], _Fn]:
    """Decorator: register an advantage estimator in :data:`ADVANTAGE_ESTIMATORS`."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[_Fn], _Fn]:
    """Decorator: register a per-token policy loss in :data:`POLICY_LOSSES`."""
    return _register(POLICY_LOSSES, "policy loss", name)


def get_advantage(name: str) -> Callable[..., Any]:
    """The advantage estimator registered as ``name``; ValueError listing the names if unknown."""
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable[..., Any]:
    """The policy loss registered as ``name``; ValueError listing the names if unknown."""
    return _lookup(POLICY_LOSSES, "policy loss", name)


# --------------------------------------------------------------------------- helpers


def _as_float(x: Tensor) -> Tensor:
    """Bool / integer tensors (e.g. 0/1 correctness rewards) -> default float dtype."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tensor shape {tuple(like.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_groups(scores: Tensor, method: str) -> None:
    if scores.dim() != 2:
        raise ValueError(
            f"{method} expects scores of shape [P, G] (prompts x group size), "
            f"got shape {tuple(scores.shape)}"
        )
    g = scores.shape[1]
    if g < 2:
        raise ValueError(
            f"{method} needs at least 2 responses per prompt (group size G={g}); "
            "set num_generations >= 2"
        )


# --------------------------------------------------------------------------- KL estimators


def kl_penalty(logps: Tensor, ref_logps: Tensor, kind: str = "k1") -> Tensor:
    """Per-token single-sample estimators of KL(pi || ref), samples drawn from pi.

    Paper: Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html).
    Formula, with r = ref_logps - logps = log(ref(x) / pi(x)):
      k1  = -r = logps - ref_logps                  unbiased, high variance, can be < 0
      k2  = 0.5 * r^2                               biased, low variance, >= 0
      k3  = exp(r) - 1 - r                          unbiased, low variance, >= 0
      abs = |logps - ref_logps|                     biased, >= 0
    For k3, r is clamped to [-20, 20] before use so exp() stays finite in float32
    (the estimate, and its gradient, saturate beyond that).

    Args: logps, ref_logps: any matching shape (typically [B, T]); kind: k1, k2, k3, abs.
    Returns: the elementwise estimate, same shape.
    """
    if kind == "k1":
        return logps - ref_logps
    if kind == "k2":
        return 0.5 * (logps - ref_logps) ** 2
    if kind == "k3":
        r = (ref_logps - logps).clamp(-_EXP_CLAMP, _EXP_CLAMP)
        return torch.expm1(r) - r
    if kind == "abs":
        return (logps - ref_logps).abs()
    raise ValueError(f"unknown KL estimator kind {kind!r}; choose one of {', '.join(KL_KINDS)}")


# --------------------------------------------------------------------------- advantages


@register_advantage("grpo")
def grpo(scores: Tensor, *, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """GRPO group-relative advantage: rewards standardised within each prompt's group.

    Paper: Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning
    in Open Language Models", arXiv 2402.03300 (outcome supervision, Sec. 4.1.2).
    Formula: A_i = (r_i - mean_j r_j) / (std_j r_j + eps) over the G responses of a prompt,
    std being the UNBIASED (Bessel-corrected, divide by G - 1) sample standard deviation,
    as ``torch.std`` computes in the common reference implementations. A group with all
    rewards equal gets advantage 0.
    ``scale=False`` is Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A
    Critical Perspective", arXiv 2503.20783): A_i = r_i - mean_j r_j, no std division.

    Args: scores [P, G] (G >= 2); eps; scale. Returns: advantages [P, G].
    """
    _check_groups(scores, "GRPO")
    scores = _as_float(scores)
    centred = scores - scores.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (scores.std(dim=1, keepdim=True) + eps)


@register_advantage("dr_grpo")
def dr_grpo(scores: Tensor) -> Tensor:
    """Dr. GRPO advantage: group mean subtracted, no std normalisation.

    Paper: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
    arXiv 2503.20783. Formula: A_i = r_i - mean_j r_j. Same as ``grpo(scores, scale=False)``.

    Args: scores [P, G] (G >= 2). Returns: advantages [P, G].
    """
    return grpo(scores, scale=False)


@register_advantage("rloo")
def rloo(scores: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out advantage: each reward minus the mean of the others.

    Paper: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
    for Learning from Human Feedback in LLMs", arXiv 2402.14740 (after Kool et al. 2019,
    "Buy 4 REINFORCE Samples, Get a Baseline for Free!").
    Formula: A_i = r_i - 1/(G-1) sum_{j != i} r_j  (= G/(G-1) * (r_i - mean_j r_j)).

    Args: scores [P, G] (G >= 2). Returns: advantages [P, G].
    """
    _check_groups(scores, "RLOO")
    scores = _as_float(scores)
    g = scores.shape[1]
    others = (scores.sum(dim=1, keepdim=True) - scores) / (g - 1)
    return scores - others


@register_advantage("remax")
def remax(scores: Tensor, *, baseline_scores: Tensor) -> Tensor:
    """ReMax advantage: reward minus the reward of the prompt's greedy response.

    Paper: Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement
    Learning Method for Aligning Large Language Models", arXiv 2310.10505.
    Formula: A_i = r_i - r(greedy response of the same prompt).

    Args: scores [P, G] (G >= 1); baseline_scores [P]. Returns: advantages [P, G].
    """
    if scores.dim() != 2:
        raise ValueError(f"ReMax expects scores of shape [P, G], got {tuple(scores.shape)}")
    if baseline_scores.shape != scores.shape[:1]:
        raise ValueError(
            f"baseline_scores must have shape [P]={tuple(scores.shape[:1])}, "
            f"got {tuple(baseline_scores.shape)}"
        )
    return _as_float(scores) - _as_float(baseline_scores)[:, None]


@register_advantage("reinforce")
def reinforce(scores: Tensor, *, baseline: str = "mean") -> Tensor:
    """REINFORCE advantage with an optional batch-mean baseline.

    Paper: Williams 1992, "Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning", Machine Learning 8.
    Formula: baseline "mean": A = r - mean(r) over the whole batch (all P*G entries);
    baseline "none": A = r.

    Args: scores [P, G] (any shape works); baseline: "mean" or "none".
    Returns: advantages, same shape.
    """
    scores = _as_float(scores)
    if baseline == "mean":
        return scores - scores.mean()
    if baseline == "none":
        return scores
    raise ValueError(f"unknown REINFORCE baseline {baseline!r}; choose mean or none")


@register_advantage("gae")
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over completion tokens, with value targets.

    Paper: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
    Advantage Estimation", arXiv 1506.02438; per-token use in RLHF as in Ziegler et al.
    2019 (arXiv 1909.08593) and Ouyang et al. 2022 (arXiv 2203.02155).
    Formula: with m the mask, delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t;
    A_t = delta_t + gamma * lam * A_{t+1} * m_{t+1}; returns R_t = A_t + V_t.
    The last valid token of a row is terminal (no bootstrap). Any masked-out position
    acts as a terminal boundary, so left padding works too.
    Outputs are detached (they are regression / policy-gradient targets).

    Args: rewards, values [B, T]; mask [B, T]; gamma; lam.
    Returns: (advantages [B, T], returns [B, T]), both 0 at masked positions.
    """
    m = _bool_mask(mask, rewards)
    if values.shape != rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} != rewards {tuple(rewards.shape)}")
    with torch.no_grad():
        r = torch.where(m, _as_float(rewards), 0.0)
        v = torch.where(m, _as_float(values).to(r.dtype), 0.0)
        zero = r.new_zeros(r.shape[0])
        next_v, next_a = zero, zero  # V_{t+1} * m_{t+1}, A_{t+1} * m_{t+1}
        cols: list[Tensor] = []
        for t in range(r.shape[1] - 1, -1, -1):
            delta = r[:, t] + gamma * next_v - v[:, t]
            a = torch.where(m[:, t], delta + gamma * lam * next_a, 0.0)
            cols.append(a)
            next_v, next_a = v[:, t], a
        adv = torch.stack(cols[::-1], dim=1) if cols else r.clone()
        returns = torch.where(m, adv + v, 0.0)
    return adv, returns


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, *, kl_coef: float) -> Tensor:
    """Per-token RLHF reward: KL penalty on every token, sequence score on the last one.

    Paper: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    arXiv 1909.08593; Stiennon et al. 2020 (arXiv 2009.01325); Ouyang et al. 2022.
    Formula: r_t = -kl_coef * kl_t on valid tokens, plus scores[b] at the last valid
    token of row b. ``kl`` is a per-token estimate, e.g. ``kl_penalty(logps, ref, "k1")``.
    Rows with no valid token get all zeros (their score is dropped).

    Args: scores [B]; kl [B, T]; mask [B, T]; kl_coef. Returns: rewards [B, T].
    """
    m = _bool_mask(mask, kl)
    if scores.shape != kl.shape[:1]:
        raise ValueError(f"scores must have shape [B]={tuple(kl.shape[:1])}, got {scores.shape}")
    kl = _as_float(kl)
    out = torch.where(m, -kl_coef * kl, 0.0)
    t = kl.shape[1]
    if t == 0:
        return out
    positions = torch.arange(t, device=kl.device).expand_as(m)
    last = torch.where(m, positions, -1).max(dim=1).values  # -1 for an empty row
    has_any = last >= 0
    rows = torch.arange(kl.shape[0], device=kl.device)[has_any]
    bonus = torch.zeros_like(out)
    bonus[rows, last[has_any]] = _as_float(scores).to(out.dtype)[has_any]
    return out + bonus


def whiten(
    x: Tensor, mask: Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8
) -> Tensor:
    """Standardise ``x`` over its (masked) entries, as done to PPO advantages / rewards.

    Paper: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    arXiv 1909.08593 (advantage whitening in PPO for RLHF).
    Formula: y = (x - mean) / sqrt(var + eps), mean and var (population, /N) over the
    valid entries; ``shift_mean=False`` adds the mean back: y = (x - mean) /
    sqrt(var + eps) + mean. With a mask, masked-out entries are returned as 0.

    Args: x (any shape); mask (same shape) or None for all entries; shift_mean; eps.
    Returns: tensor shaped like x.
    """
    x = _as_float(x)
    if mask is None:
        mean = x.mean()
        var = x.var(unbiased=False)
        out = (x - mean) * torch.rsqrt(var + eps)
        return out if shift_mean else out + mean
    m = _bool_mask(mask, x)
    xm = torch.where(m, x, 0.0)
    n = m.sum().clamp(min=1).to(x.dtype)
    mean = xm.sum() / n
    var = torch.where(m, (x - mean) ** 2, 0.0).sum() / n
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0)


def broadcast_to_tokens(seq_values: Tensor, mask: Tensor) -> Tensor:
    """Copy one value per sequence onto each of its valid tokens (0 elsewhere).

    Used to turn sequence-level advantages (GRPO, RLOO, ReMax, REINFORCE) into the
    per-token advantages the policy losses take: A_{b,t} = a_b * m_{b,t}.

    Args: seq_values [B]; mask [B, T]. Returns: [B, T].
    """
    if mask.dim() != 2 or seq_values.shape != mask.shape[:1]:
        raise ValueError(
            f"expected seq_values [B] and mask [B, T], got {tuple(seq_values.shape)} "
            f"and {tuple(mask.shape)}"
        )
    v = _as_float(seq_values)[:, None].expand(mask.shape)
    return torch.where(_bool_mask(mask, v), v, 0.0)


# --------------------------------------------------------------------------- policy losses


@register_policy_loss("ppo_clip")
def ppo_clip(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate objective, per token (as a loss to minimise).

    Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
    arXiv 1707.06347; decoupled upper clip ``clip_eps_high`` from Yu et al. 2025, "DAPO:
    An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476.
    Formula: rho = exp(logps - old_logps);
    loss_t = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A),
    eps_low = clip_eps, eps_high = clip_eps_high if given else clip_eps.
    The log-ratio is clamped to [-20, 20] before exp(). ``old_logps`` and ``advantages``
    are treated as constants (detached).

    Args: logps, old_logps, advantages, mask, all [B, T]; clip_eps; clip_eps_high.
    Returns: (loss [B, T], metrics) — loss 0 at masked positions; metrics are detached
    per-token [B, T] tensors, 0 at masked positions: ``clipfrac`` (1.0 where the clipped
    term is strictly smaller, i.e. active), ``approx_kl`` (0.5 * (logps - old_logps)^2),
    ``ratio``. Reduce loss and metrics with :func:`aggregate` and the same mask.
    """
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got {eps_low} and {eps_high}")
    m = _bool_mask(mask, logps)
    log_ratio = torch.where(m, logps - old_logps.detach(), 0.0)
    adv = torch.where(m, advantages.detach().to(log_ratio.dtype), 0.0)
    ratio = torch.exp(log_ratio.clamp(-_EXP_CLAMP, _EXP_CLAMP))
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    is_clipped = clipped < unclipped
    loss = torch.where(m, -torch.where(is_clipped, clipped, unclipped), 0.0)
    with torch.no_grad():
        metrics = {
            "clipfrac": (is_clipped & m).to(loss.dtype),
            "approx_kl": torch.where(m, 0.5 * log_ratio**2, 0.0),
            "ratio": torch.where(m, ratio, 0.0),
        }
    return loss, metrics


@register_policy_loss("vanilla_pg")
def vanilla_pg(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """REINFORCE surrogate (vanilla policy gradient), per token.

    Paper: Williams 1992, "Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning", Machine Learning 8.
    Formula: loss_t = -A_t * logps_t, whose gradient -A_t * grad logps_t equals that of
    :func:`ppo_clip` at rho = 1 (on-policy). ``old_logps`` only feeds the ``ratio`` metric;
    advantages are detached.

    Args: logps, old_logps, advantages, mask, all [B, T].
    Returns: (loss [B, T], {"ratio": [B, T]}), 0 at masked positions, metric detached.
    """
    m = _bool_mask(mask, logps)
    lp = torch.where(m, logps, 0.0)
    adv = torch.where(m, advantages.detach().to(lp.dtype), 0.0)
    loss = -adv * lp
    with torch.no_grad():
        log_ratio = torch.where(m, logps - old_logps, 0.0)
        ratio = torch.where(m, torch.exp(log_ratio.clamp(-_EXP_CLAMP, _EXP_CLAMP)), 0.0)
    return loss, {"ratio": ratio}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range: float | None = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value-function loss of PPO for RLHF, per token.

    Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv
    1707.06347) as implemented in OpenAI's PPO2 and used by Ziegler et al. 2019 (arXiv
    1909.08593); analysed in Engstrom et al. 2020, "Implementation Matters in Deep RL"
    (arXiv 2005.12729).
    Formula: v_clip = old_v + clip(v - old_v, -c, c);
    loss_t = 0.5 * max((v - R)^2, (v_clip - R)^2); with clip_range None,
    loss_t = 0.5 * (v - R)^2. ``old_values`` and ``returns`` are detached.

    Args: values, old_values, returns, mask, all [B, T]; clip_range c or None.
    Returns: (loss [B, T], {"vf_clipfrac": [B, T]}) — 0 at masked positions;
    vf_clipfrac is 1.0 where the clipped term is strictly larger (the one in use).
    """
    m = _bool_mask(mask, values)
    v = torch.where(m, values, 0.0)
    target = torch.where(m, returns.detach().to(v.dtype), 0.0)
    unclipped = (v - target) ** 2
    if clip_range is None:
        loss = torch.where(m, 0.5 * unclipped, 0.0)
        return loss, {"vf_clipfrac": torch.zeros_like(loss).detach()}
    if clip_range < 0:
        raise ValueError(f"clip_range must be >= 0 or None, got {clip_range}")
    old = torch.where(m, old_values.detach().to(v.dtype), 0.0)
    v_clip = old + (v - old).clamp(-clip_range, clip_range)
    clipped = (v_clip - target) ** 2
    use_clipped = clipped > unclipped
    loss = torch.where(m, 0.5 * torch.where(use_clipped, clipped, unclipped), 0.0)
    return loss, {"vf_clipfrac": (use_clipped & m).to(loss.dtype).detach()}


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token_mean",
    *,
    max_tokens: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Reduce a per-token loss to ``(total, count)`` whose global ratio is the wanted mean.

    Summing ``total`` and ``count`` over micro-batches and processes and dividing once
    gives the mean over the whole global batch (gradient accumulation and data parallel
    are then exact). Modes:
      token_mean:               total = sum_{b,t} m x; count = sum_{b,t} m
                                (Yu et al. 2025, DAPO, arXiv 2503.14476).
      seq_mean_token_mean:      total = sum_b (sum_t m x / sum_t m); count = #rows
                                (Shao et al. 2024, GRPO, arXiv 2402.03300).
      seq_mean_token_sum_norm:  total = sum_b (sum_t m x / max_tokens); count = #rows
                                (Liu et al. 2025, Dr. GRPO, arXiv 2503.20783; max_tokens
                                is a constant such as the generation budget).
    Rows with no valid token contribute nothing (and are not counted).

    Args: per_token [B, T]; mask [B, T]; mode; max_tokens (only and required for
    seq_mean_token_sum_norm). Returns: (total, count) 0-dim tensors; count is float.
    """
    m = _bool_mask(mask, per_token)
    x = torch.where(m, _as_float(per_token), 0.0)
    if mode == "token_mean":
        return x.sum(), m.sum().to(x.dtype)
    if mode not in AGGREGATION_MODES:
        raise ValueError(
            f"unknown aggregation mode {mode!r}; choose one of {', '.join(AGGREGATION_MODES)}"
        )
    if x.dim() != 2:
        raise ValueError(f"{mode} needs per_token of shape [B, T], got {tuple(x.shape)}")
    n_tok = m.sum(dim=1).to(x.dtype)
    nonempty = n_tok > 0
    count = nonempty.sum().to(x.dtype)
    row_sum = x.sum(dim=1)
    if mode == "seq_mean_token_mean":
        return torch.where(nonempty, row_sum / n_tok.clamp(min=1.0), 0.0).sum(), count
    if max_tokens is None or max_tokens <= 0:
        raise ValueError(
            f"seq_mean_token_sum_norm needs max_tokens > 0 (e.g. the generation budget), "
            f"got {max_tokens}"
        )
    return torch.where(nonempty, row_sum / max_tokens, 0.0).sum(), count


# --------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """Constant KL coefficient (Ziegler et al. 2019, arXiv 1909.08593). ``update`` is a no-op."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (kept for interface parity with :class:`AdaptiveKLController`)."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient steering the measured KL towards a target.

    Paper: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    arXiv 1909.08593 (Sec. 2.2, log-space proportional controller).
    Formula: e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon),
    with n_steps the number of samples (or steps) the KL was measured over.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` by the clipped proportional error (``current_kl`` may be a tensor)."""
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Only the current coefficient; target and horizon come from the constructor."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


# --------------------------------------------------------------------------- reward transforms


class RunningMoments:
    """Running mean / population variance of a stream of values (e.g. rewards).

    Paper: Chan, Golub & LeVeque 1979/1983, "Updating Formulae and a Pairwise Algorithm for
    Computing Sample Variances" (parallel merge of partial moments).
    Formula: merging (mean_a, var_a, n_a) with a batch (mean_b, var_b, n_b), d = mean_b -
    mean_a, n = n_a + n_b: mean = mean_a + d n_b / n;
    var = (var_a n_a + var_b n_b + d^2 n_a n_b / n) / n (population variance, /n).
    Before any data: mean 0, std 1. Statistics are kept as Python floats (float64).
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = 0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: Tensor) -> None:
        """Merge all entries of ``x`` (any shape) into the running moments."""
        x = x.detach().reshape(-1).to(torch.float64)
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b = float(x.mean())
        var_b = float(x.var(unbiased=False))
        n_a, n = self.count, self.count + n_b
        d = mean_b - self.mean
        m2 = self.var * n_a + var_b * n_b + d * d * n_a * n_b / n
        self.mean += d * n_b / n
        self.var = m2 / n
        self.count = n

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.count = int(state["count"])


def length_penalty(scores: Tensor, lengths: Tensor, *, coef: float) -> Tensor:
    """Linear length penalty on sequence rewards.

    Paper: e.g. Singhal et al. 2023, "A Long Way to Go: Investigating Length Correlations
    in RLHF", arXiv 2310.03716 (length-penalised reward as a mitigation).
    Formula: r' = r - coef * length.

    Args: scores [B] (any shape); lengths (same shape, token counts); coef.
    Returns: penalised scores, float.
    """
    scores = _as_float(scores)
    return scores - coef * lengths.to(scores.dtype)


# --------------------------------------------------------------------------- 2025 variants


def overlong_penalty(lengths: Tensor, *, max_length: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment, added to the reward of each response.

    Paper: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
    arXiv 2503.14476 (Sec. 3.4, Eq. 13). With L = len(y), L_max = ``max_length`` and
    L_cache = ``buffer``:
      R = 0                                   if L <= L_max - L_cache
      R = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
      R = -1                                  if L > L_max
    i.e. a linear ramp from 0 to -1 over the last L_cache tokens before the limit.
    ``buffer = 0`` turns it off (all zeros).

    Args: lengths (any shape, token counts); max_length; buffer. Returns: penalties, float.
    """
    lengths = _as_float(lengths)
    if buffer < 0 or buffer > max_length:
        raise ValueError(f"buffer must be in [0, max_length={max_length}], got {buffer}")
    if buffer == 0:
        return torch.zeros_like(lengths)
    start = max_length - buffer
    ramp = (start - lengths) / buffer
    return torch.where(lengths <= start, 0.0, torch.where(lengths <= max_length, ramp, -1.0))


def varied_groups(scores: Tensor) -> Tensor:
    """DAPO's dynamic-sampling filter: which groups have rewards that are not all equal.

    Paper: Yu et al. 2025 (DAPO, arXiv 2503.14476, Sec. 3.2, Eq. 11: keep a prompt only if
    0 < |{correct outputs}| < G). A group whose rewards are all equal has GRPO advantage 0
    for every sample, so it gives no gradient; the filter keeps the others.
    Formula: keep_p = max_j r_pj > min_j r_pj.

    Args: scores [P, G]. Returns: bool [P].
    """
    if scores.dim() != 2:
        raise ValueError(f"expected scores [P, G], got {tuple(scores.shape)}")
    return scores.max(dim=1).values > scores.min(dim=1).values


def fill_batch(keep: Sequence[bool], size: int) -> list[int]:
    """The batch dynamic sampling trains on: the first ``size`` kept groups in sampling order;
    when fewer were kept (the attempt cap was reached), the earliest dropped groups fill the
    rest, so the batch size stays ``size`` (a dropped group's GRPO advantages are 0).

    Args: keep (flags of all sampled groups, in order); size. Returns: indices, sorted.
    """
    if size > len(keep):
        raise ValueError(f"cannot fill a batch of {size} from {len(keep)} groups")
    kept = [i for i, k in enumerate(keep) if k][:size]
    dropped = [i for i, k in enumerate(keep) if not k][:size - len(kept)]
    return sorted(kept + dropped)


def gspo(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: PPO's clipped objective on a sequence-level importance ratio.

    Paper: Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071.
    Formula: s_i = exp((1/|y_i|) sum_t (logps_it - old_logps_it)) (the length-normalised
    sequence likelihood ratio); A_i the sequence advantage (here: the mean of ``advantages``
    over the row's valid tokens, which is A_i when it was broadcast to the tokens);
    loss_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i), eps_low = clip_eps,
    eps_high = clip_eps_high (None: clip_eps). The paper's ranges are 3e-4 / 4e-4.
    loss_i is written on every valid token of row i, so ``aggregate(...,
    "seq_mean_token_mean")`` gives the paper's mean over sequences (1/G sum_i loss_i).
    The mean log-ratio is clamped to [-20, 20] before exp(); old_logps and advantages are
    detached.

    Args: logps, old_logps, advantages, mask, all [B, T]; clip_eps; clip_eps_high.
    Returns: (loss [B, T], metrics [B, T]: ``clipfrac``, ``ratio`` -- the sequence ratio on
    each token --, ``approx_kl``), 0 at masked positions.
    """
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got {eps_low} and {eps_high}")
    m = _bool_mask(mask, logps)
    n = m.sum(dim=1).clamp(min=1).to(logps.dtype)
    log_ratio = torch.where(m, logps - old_logps.detach(), 0.0)
    seq_log_ratio = log_ratio.sum(dim=1) / n
    adv = torch.where(m, advantages.detach().to(logps.dtype), 0.0).sum(dim=1) / n
    ratio = torch.exp(seq_log_ratio.clamp(-_EXP_CLAMP, _EXP_CLAMP))
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    is_clipped = clipped < unclipped
    seq_loss = -torch.where(is_clipped, clipped, unclipped)
    loss = torch.where(m, seq_loss[:, None].expand_as(logps), 0.0)
    with torch.no_grad():
        metrics = {
            "clipfrac": torch.where(m, is_clipped[:, None].expand_as(m), False).to(loss.dtype),
            "ratio": torch.where(m, ratio[:, None].expand_as(logps), 0.0),
            "approx_kl": torch.where(m, 0.5 * seq_log_ratio[:, None] ** 2, 0.0),
        }
    return loss, metrics


def reinforce_pp_returns(scores: Tensor, kl: Tensor, mask: Tensor, *,
                         kl_coef: float) -> Tensor:
    """REINFORCE++ returns before normalisation: the reward-to-go of the per-token RLHF reward.

    Paper: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
    Models", arXiv 2501.03262 (Sec. 3). Formula: r_t = -kl_coef * kl_t on valid tokens plus
    the score on the last valid token (:func:`token_rewards`); G_t = sum_{s >= t} r_s
    (gamma = 1). With kl_coef = 0 every token's return is the sequence score.

    Args: scores [B]; kl [B, T] (a per-token KL estimate, e.g. k1); mask [B, T]; kl_coef.
    Returns: [B, T], 0 at masked positions.
    """
    r = token_rewards(scores, kl, mask, kl_coef=kl_coef)
    out = r.flip(1).cumsum(1).flip(1)
    return torch.where(_bool_mask(mask, out), out, 0.0)


def reinforce_pp(returns: Tensor, mask: Tensor, *, mean: float | None = None,
                 std: float | None = None, eps: float = 1e-8) -> Tensor:
    """REINFORCE++ advantage: returns normalised over the whole (global) batch, no critic and
    no per-prompt baseline.

    Paper: Hu 2025, "REINFORCE++", arXiv 2501.03262 (Sec. 3, "advantage normalization":
    A = (G - mean) / std over the global batch). Formula: A_t = (G_t - mu) / (sigma + eps),
    mu and sigma (population) over every valid token of the batch; pass ``mean`` / ``std``
    computed over all processes' tokens to normalise a data-parallel batch exactly (default:
    this tensor's valid tokens).

    Args: returns [B, T] (:func:`reinforce_pp_returns`); mask [B, T]; mean; std; eps.
    Returns: advantages [B, T], 0 at masked positions.
    """
    m = _bool_mask(mask, returns)
    x = _as_float(returns)
    if mean is None or std is None:
        vals = x[m]
        mean = float(vals.mean()) if vals.numel() else 0.0
        std = float(vals.var(unbiased=False).sqrt()) if vals.numel() else 0.0
    return torch.where(m, (x - mean) / (std + eps), 0.0)
