"""The policy-gradient family's shared parts: a per-token policy loss on per-token advantages,
the KL to the reference as a reward penalty or a loss term, extra loss terms (PPO's value
loss), and the critic-free base whose subclasses only give sequence advantages."""

from __future__ import annotations

from typing import Any

import torch

from ...losses import rl
from ..loop import StepOutput
from .registry import Algorithm, OnlineContext, RolloutData

__all__ = ["CriticFree", "PolicyGradient"]


class PolicyGradient(Algorithm):
    """A clipped per-token surrogate (:func:`prefkit.losses.rl.ppo_clip`) on ``batch["adv"]``;
    subclasses give the advantages (:meth:`targets`) and may swap the surrogate
    (:meth:`policy_loss`) or add loss terms (:meth:`extra_terms`)."""

    def policy_loss(self, ctx: OnlineContext, logps: torch.Tensor, old: torch.Tensor,
                    adv: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = ctx.cfg
        return rl.ppo_clip(logps, old, adv, mask, clip_eps=cfg.clip_eps,
                           clip_eps_high=cfg.resolved_clip_eps_high())

    def extra_terms(self, ctx: OnlineContext, values: torch.Tensor | None,
                    batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """More weighted per-token loss terms ``{metric name: [B, T]}`` (PPO's value loss)."""
        return {}

    def loss(self, ctx, logps, values, batch) -> StepOutput:
        mask = batch["mask"]
        old = batch["old"] if ctx.needs_old else logps.detach()  # on-policy: ratio 1
        pg, pg_metrics = self.policy_loss(ctx, logps, old, batch["adv"], mask)
        per_token = pg
        metrics_tok = {"pg_loss": pg, "clipfrac": pg_metrics["clipfrac"] * mask,
                       "ratio": pg_metrics["ratio"] * mask}
        if ctx.needs_reference:
            kl = rl.kl_penalty(logps, batch["ref"], ctx.kl_kind) * mask
            if ctx.kl_in == "loss" and ctx.kl_ctl.value:
                per_token = per_token + float(ctx.kl_ctl.value) * kl
            metrics_tok["kl"] = kl
        for name, (weight, term) in self.extra_terms(ctx, values, batch).items():
            per_token = per_token + weight * term
            metrics_tok[name] = term
        total, count = rl.aggregate(per_token, mask, ctx.aggregation,
                                    max_tokens=ctx.cfg.max_new_tokens)
        # metrics are per-token means (a ratio of 1 logs as 1) over the loss's denominator
        per_seq = "token_mean" if ctx.aggregation == "token_mean" else "seq_mean_token_mean"
        metrics = {k: rl.aggregate(v.detach(), mask, per_seq)[0]
                   for k, v in metrics_tok.items()}
        return StepOutput(loss_sum=total, n_examples=count, metrics_sum=metrics,
                          n_tokens=int(mask.sum()))


class CriticFree(PolicyGradient):
    """Sequence advantages from the group's scores (:meth:`sequence_advantages`), the summed
    KL subtracted from the score when the KL goes into the reward, copied onto every token."""

    def sequence_advantages(self, ctx: OnlineContext, scores: torch.Tensor,
                            data: RolloutData) -> torch.Tensor:
        raise NotImplementedError

    def targets(self, ctx, data):
        coef = float(ctx.kl_ctl.value)
        s = data.scores - coef * data.seq_kl if ctx.kl_in == "reward" and coef else data.scores
        adv = self.sequence_advantages(ctx, s, data)
        return {"adv": [rl.broadcast_to_tokens(a, m)
                        for a, m in zip(data.split(adv), data.masks, strict=True)]}
