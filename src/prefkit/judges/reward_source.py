"""A pairwise judge as the reward of online training (RLAIF).

:class:`JudgeReward` is a reward source for :func:`prefkit.train.online.train_online`
(``source(prompts, completions, ...) -> [P, G]``): every pair of a prompt's ``G`` samples is
judged -- in both orders by default (Balanced Position Calibration), all pairs of the whole
rollout in one concurrent batch through the cache -- and a sample's reward is its mean
calibrated win probability against the others (the round-robin win rate; for ``G = 2`` the
first column is P(sample 0 beats sample 1), what ``online_ipo`` reads). A pair whose judgment
is unparsed or failed is left out of both samples' means (never a loss); a sample with no judged
pair gets 1/2. :attr:`JudgeReward.last_counts` holds the last call's status counts.

With ``online_dpo`` this is RLAIF in the sense of Lee et al. ("RLAIF vs. RLHF", arXiv
2309.00267, direct-RLAIF with a pairwise AI preference) and of online AI feedback (Guo et al.,
"Direct Language Model Alignment from Online AI Feedback", arXiv 2402.04792): the judge picks
the better of the policy's own samples each iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch

from .base import Judge, JudgeRequest, JudgmentCache, ajudge_all, run_sync, status_counts
from .bias import ajudge_both_orders

__all__ = ["JudgeReward"]


def _text(value: Any) -> str:
    from ..data.records import text_content

    return text_content(value)


class JudgeReward:
    """Round-robin win rate under a pairwise judge (module docstring)."""

    def __init__(self, judge: Judge, *, both_orders: bool = True,
                 cache: JudgmentCache | None = None, concurrency: int = 8,
                 name: str = "judge"):
        self.judge = judge
        self.both_orders = both_orders
        self.cache = cache
        self.concurrency = concurrency
        self.name = name
        self.last_counts: dict[str, int] = {}

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Sequence[Any]],
                 prompt_ids: Any = None, completion_ids: Any = None) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} groups")
        g = len(completions[0]) if completions else 0
        if g < 2:
            raise ValueError("a pairwise judge needs at least 2 completions per prompt")
        index: list[tuple[int, int, int]] = []
        requests: list[JudgeRequest] = []
        for p, (prompt, group) in enumerate(zip(prompts, completions, strict=True)):
            for a, b in combinations(range(len(group)), 2):
                index.append((p, a, b))
                requests.append(JudgeRequest("compare", _text(prompt),
                                             (_text(group[a]), _text(group[b]))))
        if self.both_orders:
            pairs = run_sync(ajudge_both_orders(self.judge, requests, cache=self.cache,
                                                concurrency=self.concurrency))
            probabilities = [pair.p_a for pair in pairs]
            self.last_counts = status_counts(
                [j for pair in pairs for j in (pair.forward, pair.backward)])
        else:
            judged = run_sync(ajudge_all(self.judge, requests, cache=self.cache,
                                         concurrency=self.concurrency))
            probabilities = [j.p_first if j.ok else None for j in judged]
            self.last_counts = status_counts(judged)
        total = torch.zeros(len(prompts), g, dtype=torch.float64)
        count = torch.zeros(len(prompts), g, dtype=torch.float64)
        for (p, a, b), prob in zip(index, probabilities, strict=True):
            if prob is None:
                continue
            total[p, a] += prob
            total[p, b] += 1.0 - prob
            count[p, a] += 1
            count[p, b] += 1
        reward = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, 0.5))
        return reward.float()
