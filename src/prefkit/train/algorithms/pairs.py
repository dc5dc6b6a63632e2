"""Preference updates on the policy's own samples.

* ``online_dpo`` -- per prompt the best and worst samples under the reward source become a
  pair, trained with a pairwise loss of :mod:`prefkit.losses` (``dpo_loss``; Guo et al. 2024,
  "Direct Language Model Alignment from Online AI Feedback"); with reward 'self' this is a
  self-rewarding loop (Yuan et al. 2024);
* ``online_ipo`` -- the Nash / online-IPO update (Calandriello et al. 2024) on a GENERAL
  preference ``p = P(y > y')`` (the reward source's column 0): the expected IPO loss under labels
  drawn from ``p`` is ``(h - (2p - 1) / (2 beta))^2``, ``h`` the difference of the two
  samples' log-ratios to the reference.
"""

from __future__ import annotations

import torch

from ... import losses
from ..loop import StepOutput
from .registry import Algorithm, register

__all__ = ["OnlineDPO", "OnlineIPO", "group_starts"]


def group_starts(sizes: list[int]) -> list[int]:
    """Index of each group's first sample in the flat layout."""
    out, at = [], 0
    for s in sizes:
        out.append(at)
        at += s
    return out


class _Pairs(Algorithm):
    def needs_reference(self, cfg):
        return True

    def needs_old(self, cfg, kl_in):
        return False

    def pair_loss(self, ctx, seq, ref, lengths, batch):
        raise NotImplementedError

    def loss(self, ctx, logps, values, batch):
        mask = batch["mask"]
        seq = (logps * mask).sum(1)
        ref = (batch["ref"] * mask).sum(1)
        lengths = mask.sum(1).float()
        loss, metrics, valid = self.pair_loss(ctx, seq, ref, lengths, batch)
        w = valid.float()
        return StepOutput(loss_sum=(loss * w).sum(), n_examples=w.sum(),
                          metrics_sum={k: (v.detach().float() * w).sum()
                                       for k, v in metrics.items()},
                          n_tokens=int(mask.sum()))


@register("online_dpo")
class OnlineDPO(_Pairs):
    """Best vs worst sample of each group, any pairwise loss (Guo et al. 2024)."""

    min_generations = 2

    def check(self, cfg):
        from ..config import ConfigError

        if cfg.num_generations < 2:
            raise ConfigError("online_dpo needs num_generations >= 2 (it pairs samples)")

    def pair_loss(self, ctx, seq, ref, lengths, batch):
        if not hasattr(self, "_loss_fns"):
            self._loss_fns = {}
        spec = ctx.cfg.dpo_loss
        if spec not in self._loss_fns:  # a pairwise spec: checked with the config
            self._loss_fns[spec] = losses.combine(losses.parse_loss_spec(spec))
        hi, lo, valid = [], [], []
        for start, s in zip(group_starts(batch["sizes"]), torch.split(batch["scores"],
                                                                      batch["sizes"]),
                            strict=True):
            hi.append(start + int(s.argmax()))
            lo.append(start + int(s.argmin()))
            valid.append(bool(s.max() > s.min()))
        hi, lo = torch.tensor(hi), torch.tensor(lo)
        inputs = {"chosen_logps": seq[hi], "rejected_logps": seq[lo],
                  "ref_chosen_logps": ref[hi], "ref_rejected_logps": ref[lo],
                  "chosen_lengths": lengths[hi], "rejected_lengths": lengths[lo]}
        loss, metrics = losses.call_loss(self._loss_fns[spec], inputs)
        return loss, metrics, torch.tensor(valid)


@register("online_ipo")
class OnlineIPO(_Pairs):
    """Online IPO on a general preference between 2 samples (Calandriello et al. 2024)."""

    def check(self, cfg):
        from ..config import ConfigError

        if cfg.num_generations != 2:
            raise ConfigError("online_ipo needs num_generations = 2 (a preference between two "
                              "samples)")

    def pair_loss(self, ctx, seq, ref, lengths, batch):
        first = torch.tensor(group_starts(batch["sizes"]))
        prob = batch["scores"][first].clamp(0.0, 1.0)  # column 0: P(sample 0 beats 1)
        h = (seq[first] - ref[first]) - (seq[first + 1] - ref[first + 1])
        target = (2.0 * prob - 1.0) / (2.0 * ctx.cfg.beta)
        loss = (h - target) ** 2
        return loss, {"logratio_gap": h.detach(), "target": target}, torch.ones_like(
            loss, dtype=torch.bool)
