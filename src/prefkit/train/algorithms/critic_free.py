"""Critic-free estimators on sequence rewards (advantages: :mod:`prefkit.losses.rl`).

* ``reinforce`` -- REINFORCE with the GLOBAL batch-mean baseline (Williams 1992);
* ``rloo`` -- leave-one-out baseline (Ahmadian et al. 2024);
* ``grpo`` -- group-normalized advantages, KL (k3) as a loss term (Shao et al. 2024);
* ``dr_grpo`` -- mean-only group advantages and ``seq_mean_token_sum_norm`` (Liu et al. 2025);
* ``remax`` -- the prompt's greedy sample's reward as baseline (Li et al. 2023).

reinforce, rloo and remax put the summed KL into the sequence reward (as RLOO's paper does).
"""

from __future__ import annotations

from ...losses import rl
from .policy_gradient import CriticFree
from .registry import per_group, register

__all__ = ["DrGRPO", "GRPO", "RLOO", "ReMax", "Reinforce"]


@register("reinforce")
class Reinforce(CriticFree):
    """REINFORCE with the global batch-mean baseline (Williams 1992)."""

    def sequence_advantages(self, ctx, scores, data):
        return scores - ctx.global_mean(scores)


@register("rloo")
class RLOO(CriticFree):
    """Leave-one-out baseline (Ahmadian et al. 2024)."""

    min_generations = 2

    def sequence_advantages(self, ctx, scores, data):
        return per_group(rl.rloo, scores, data.sizes)


@register("grpo")
class GRPO(CriticFree):
    """Group-normalized advantages, KL as a loss term (Shao et al. 2024)."""

    kl_in = "loss"
    min_generations = 2

    def sequence_advantages(self, ctx, scores, data):
        return per_group(rl.grpo, scores, data.sizes)


@register("dr_grpo")
class DrGRPO(GRPO):
    """Group-mean advantages, sum-normalized loss (Liu et al. 2025, Dr. GRPO)."""

    aggregation = "seq_mean_token_sum_norm"

    def sequence_advantages(self, ctx, scores, data):
        return per_group(rl.dr_grpo, scores, data.sizes)


@register("remax")
class ReMax(CriticFree):
    """The greedy sample's reward as baseline (Li et al. 2023)."""

    greedy_baseline = True

    def sequence_advantages(self, ctx, scores, data):
        return per_group(rl.remax, scores, data.sizes, baseline_scores=data.baseline)
