"""A reward model (or any scalar reward) as a judge.

``compare``: ``p_first = sigmoid(r_first - r_second)`` (the Bradley-Terry probability the reward
model was trained for), verdict ``first`` / ``second`` by its sign, ``tie`` when the rewards are
equal; ``grade``: the reward itself (``score``, unbounded); ``rank``: the responses sorted by
reward, equal rewards sharing a tier. The source is any of
:func:`prefkit.specs.reward_from_spec`'s (``rm:PATH``, ``gold:TASK``,
``implicit:POLICY``, ``python:module:function``): ``source(prompts, completions) -> [P, G]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .base import JudgeRequest, Judgment

__all__ = ["RewardJudge"]


class RewardJudge:
    """A scalar reward source as a judge (module docstring); ``spec`` names it in the cache
    key (a retrained model at the same path needs a new name or a cleared cache)."""

    def __init__(self, source: Callable[..., Any], spec: str):
        self.source = source
        self.spec = spec
        self.name = spec

    def config(self) -> dict[str, Any]:
        return {"backend": "reward", "spec": self.spec}

    def rewards(self, request: JudgeRequest) -> list[float]:
        out = self.source([request.prompt], [list(request.responses)])
        return [float(x) for x in (out[0].tolist() if hasattr(out[0], "tolist") else out[0])]

    async def judge(self, request: JudgeRequest) -> Judgment:
        r = self.rewards(request)
        if not all(math.isfinite(x) for x in r):
            return Judgment.failed(request.task, f"non-finite reward: {r}")
        if request.task == "compare":
            d = r[0] - r[1]
            p = 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0
            verdict = "first" if d > 0 else "second" if d < 0 else "tie"
            return Judgment(task="compare", verdict=verdict, p_first=p,
                            extra={"rewards": r})
        if request.task == "grade":
            return Judgment(task="grade", score=r[0])
        tiers: list[list[int]] = []
        for i in sorted(range(len(r)), key=lambda i: -r[i]):
            if tiers and r[tiers[-1][0]] == r[i]:
                tiers[-1].append(i)
            else:
                tiers.append([i])
        return Judgment(task="rank", ranking=tiers, extra={"rewards": r})
