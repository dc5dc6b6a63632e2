"""``dapo`` (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
arXiv 2503.14476): GRPO's group advantages with

* decoupled clip ranges: the ratio is clipped to ``[1 - clip_eps, 1 + clip_eps_high]``
  (``clip_eps_high`` defaults to the paper's 0.28 for dapo);
* dynamic sampling: groups whose rewards are all equal (zero advantage, no gradient) are
  dropped and the loop samples more prompts until the batch is full again
  (:func:`prefkit.losses.rl.varied_groups`, :func:`prefkit.losses.rl.fill_batch`; at most
  ``max_sampling_rounds`` rounds, then a warning and the earliest dropped groups fill it);
* a token-level loss (``token_mean``: the sum over every token of the global batch divided by
  the number of tokens);
* soft overlong punishment (:func:`prefkit.losses.rl.overlong_penalty`): a linear penalty from 0
  to -1 over the last ``overlong_buffer`` tokens before ``max_new_tokens`` (default a quarter
  of ``max_new_tokens``).

The paper drops the KL term (set ``kl_coef=0``); with ``kl_coef > 0`` it is a loss term, as in
GRPO.
"""

from __future__ import annotations

from .critic_free import GRPO
from .registry import register

__all__ = ["DAPO"]


@register("dapo")
class DAPO(GRPO):
    """GRPO with decoupled clips, dynamic sampling, token-level loss, overlong shaping."""

    aggregation = "token_mean"
    clip_eps_high = 0.28
    dynamic_sampling = True
    overlong_fraction = 0.25
