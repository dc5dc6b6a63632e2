"""``ppo``: the clipped surrogate (Schulman et al. 2017) with a value head on the policy's body
and GAE (``gamma``, ``lam``); the KL to the reference is a per-token reward penalty
``-kl_coef * k`` (Ziegler et al. 2019; Ouyang et al. 2022); advantages whitened over the
GLOBAL rollout (all processes), so sharding leaves them unchanged."""

from __future__ import annotations

import torch

from ...losses import rl
from .policy_gradient import PolicyGradient
from .registry import register

__all__ = ["PPO"]


@register("ppo")
class PPO(PolicyGradient):
    """Clipped surrogate with a value head and GAE (Schulman et al. 2017)."""

    value_head = True

    def needs_old(self, cfg, kl_in):
        return True  # the values and the KL penalty come from the sampling policy's forward

    def targets(self, ctx, data):
        cfg = ctx.cfg
        coef = float(ctx.kl_ctl.value)
        adv, ret = [], []
        for scores, old, ref, values, mask in zip(data.split(data.scores), data.old, data.ref,
                                                  data.values, data.masks, strict=True):
            kl = rl.kl_penalty(old, ref, ctx.kl_kind) * mask
            rewards = rl.token_rewards(scores, kl, mask, kl_coef=coef)
            a, r = rl.gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
            adv.append(a)
            ret.append(r)
        if cfg.whiten_advantages:
            flat = torch.cat([a[m] for a, m in zip(adv, data.masks, strict=True)]).double()
            mean = ctx.global_mean(flat)
            std = ctx.global_mean((flat - mean) ** 2) ** 0.5
            adv = [((a - mean) / (std + 1e-8)) * m for a, m in zip(adv, data.masks, strict=True)]
        return {"adv": adv, "returns": ret, "values": list(data.values)}

    def extra_terms(self, ctx, values, batch):
        vf, _ = rl.value_loss(values, batch["values"], batch["returns"], batch["mask"],
                              clip_range=ctx.cfg.value_clip)
        return {"vf_loss": (ctx.cfg.vf_coef, vf)}
