"""``reinforce_pp`` -- REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for
Aligning Large Language Models", arXiv 2501.03262): no critic and no per-prompt baseline; each
token's return is the sequence reward minus the per-token KL penalty still to come
(:func:`prefkit.losses.rl.reinforce_pp_returns`, KL in the reward by default, k1), normalized
over the GLOBAL batch -- the mean and standard deviation over every valid token of every process
(:func:`prefkit.losses.rl.reinforce_pp`) -- and trained with PPO's clipped surrogate."""

from __future__ import annotations

import torch

from ...losses import rl
from .policy_gradient import PolicyGradient
from .registry import register

__all__ = ["ReinforcePP"]


@register("reinforce_pp")
class ReinforcePP(PolicyGradient):
    """Global-batch normalized returns, PPO-clip loss (Hu 2025)."""

    def targets(self, ctx, data):
        coef = float(ctx.kl_ctl.value) if ctx.kl_in == "reward" else 0.0
        returns = []
        for scores, old, ref, mask in zip(data.split(data.scores), data.old, data.ref,
                                          data.masks, strict=True):
            kl = (rl.kl_penalty(old, ref, ctx.kl_kind) * mask if coef and ctx.needs_reference
                  else torch.zeros_like(old))
            returns.append(rl.reinforce_pp_returns(scores, kl, mask, kl_coef=coef))
        flat = torch.cat([r[m] for r, m in zip(returns, data.masks, strict=True)]).double()
        mean = ctx.global_mean(flat)
        std = ctx.global_mean((flat - mean) ** 2) ** 0.5
        return {"adv": [rl.reinforce_pp(r, m, mean=mean, std=std)
                        for r, m in zip(returns, data.masks, strict=True)]}
