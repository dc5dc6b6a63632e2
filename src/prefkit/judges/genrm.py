"""A generative reward model (:class:`prefkit.rewards.generative.GenerativeRewardModel`) as a
judge: ``compare`` gives its position-calibrated verdict probability as ``p_first`` (it already
reads each pair in both orders), the verdict by which side of 1/2 it falls."""

from __future__ import annotations

from typing import Any

from .base import JudgeRequest, Judgment

__all__ = ["GenRMJudge"]


class GenRMJudge:
    """``genrm:PATH`` (a folder written by ``prefkit rm train-genrm``); compare requests
    only."""

    def __init__(self, path: str):
        from ..rewards.generative import GenerativeRewardModel

        self.path = path
        self.name = f"genrm:{path}"
        self.model = GenerativeRewardModel.from_pretrained(path)

    def config(self) -> dict[str, Any]:
        return {"backend": "genrm", "spec": self.name}

    async def judge(self, request: JudgeRequest) -> Judgment:
        if request.task != "compare":
            return Judgment.failed(request.task, "a generative reward model only compares two "
                                                 "responses")
        p = self.model.preference(request.prompt, *request.responses)
        verdict = "first" if p > 0.5 else "second" if p < 0.5 else "tie"
        return Judgment(task="compare", verdict=verdict, p_first=p)
