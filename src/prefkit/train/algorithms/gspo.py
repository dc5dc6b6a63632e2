"""``gspo`` (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): GRPO's
group advantages with a SEQUENCE-level importance ratio
``s_i = exp((1/|y_i|) sum_t (log pi(y_it) - log pi_old(y_it)))`` clipped per sequence
(:func:`prefkit.losses.rl.gspo`), the loss averaged over sequences. The paper's clip ranges are
tiny (``clip_eps=3e-4``, ``clip_eps_high=4e-4``) because the ratio is a per-token geometric
mean; set them for off-policy updates (``ppo_epochs`` / ``num_minibatches`` > 1). On-policy
(one step per rollout) the ratio is 1 and the clip never acts.
"""

from __future__ import annotations

from ...losses import rl
from .critic_free import GRPO
from .registry import register

__all__ = ["GSPO"]


@register("gspo")
class GSPO(GRPO):
    """GRPO advantages, sequence-level clipped importance ratio (Zheng et al. 2025)."""

    aggregation = "seq_mean_token_mean"

    def policy_loss(self, ctx, logps, old, adv, mask):
        cfg = ctx.cfg
        return rl.gspo(logps, old, adv, mask, clip_eps=cfg.clip_eps,
                       clip_eps_high=cfg.resolved_clip_eps_high())
