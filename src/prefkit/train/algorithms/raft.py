"""``raft``: rejection-sampling fine-tuning / best-of-N distillation (Dong et al. 2023): NLL
on the ``raft_keep`` best samples of each prompt (all of a smaller group)."""

from __future__ import annotations

import torch

from ...losses import rl
from ..loop import StepOutput
from .registry import Algorithm, register

__all__ = ["RAFT"]


@register("raft")
class RAFT(Algorithm):
    """NLL on the best raft_keep samples per prompt (Dong et al. 2023)."""

    def check(self, cfg):
        from ..config import ConfigError

        g = cfg.num_generations
        if not 1 <= cfg.raft_keep <= g:
            raise ConfigError(f"raft_keep={cfg.raft_keep} must be in [1, num_generations={g}]")

    def needs_reference(self, cfg):
        return False

    def needs_old(self, cfg, kl_in):
        return False

    def loss(self, ctx, logps, values, batch):
        keep = ctx.cfg.raft_keep
        mask = batch["mask"]
        kept = [torch.zeros_like(s, dtype=torch.bool).scatter_(
                    0, s.topk(min(keep, len(s))).indices, True)
                for s in torch.split(batch["scores"], batch["sizes"])]
        tok_mask = mask & torch.cat(kept)[:, None]
        total, count = rl.aggregate(-logps, tok_mask, "token_mean")
        return StepOutput(loss_sum=total, n_examples=count,
                          metrics_sum={"nll": total.detach()}, n_tokens=int(tok_mask.sum()))
