"""A jury: several judges asked the same question, their answers combined (Verga et al.,
"Replacing Judges with Juries: Evaluating LLM Generations with a Panel of Diverse Models",
arXiv 2404.18796, PoLL).

``Jury(members, aggregate=...)`` is itself a judge. Members answer concurrently; a member whose
answer is not ``ok`` is left out (counted in ``extra["members"]``); when no member answers
``ok`` the jury's judgment is ``unparsed`` if any member's was, else ``failed``.

Compare, by ``aggregate``:

- ``majority``: each member's verdict is a vote; the verdict with more votes of ``first`` /
  ``second`` wins, equal counts give ``tie``; ``p_first = (n_first + n_tie / 2) / n``;
- ``mean``: ``p_first`` = the mean of the members' ``p_first`` (soft verdicts count as they
  are); the verdict is ``first`` above 1/2, ``second`` below, ``tie`` at 1/2;
- ``weighted``: the members' verdicts weighted by their validated accuracy ``acc_m`` (from
  ``prefkit judge validate``) with the naive-Bayes log-odds weight ``w_m = log(acc_m / (1 -
  acc_m))`` (the optimal weighted majority of independent voters, Nitzan & Paroush 1982):
  ``s = sum_m w_m v_m`` with ``v_m`` = +1 first, -1 second, 0 tie; ``p_first = sigmoid(s)``.

Grade: the (weighted) mean score. Rank: the Borda count -- each member's ranking gives a
response ``k - 1 - (number of responses ranked above it)`` points (tied responses share a
tier), summed (weighted); responses with equal totals share a tier.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from .base import Judge, JudgeRequest, Judgment

__all__ = ["AGGREGATES", "Jury", "accuracy_weight"]

AGGREGATES = ("majority", "mean", "weighted")


def accuracy_weight(accuracy: float, clip: float = 1e-3) -> float:
    """``log(acc / (1 - acc))``, the accuracy clipped to ``[clip, 1 - clip]``."""
    a = min(max(float(accuracy), clip), 1.0 - clip)
    return math.log(a / (1.0 - a))


class Jury:
    """Several judges as one (module docstring). ``weights``: per member, needed for
    ``aggregate="weighted"`` (use :func:`accuracy_weight` of validated accuracies); also
    applied to grade and rank answers when given."""

    def __init__(self, members: Sequence[Judge], aggregate: str = "majority",
                 weights: Sequence[float] | None = None, name: str = "jury"):
        if len(members) < 1:
            raise ValueError("a jury needs at least one member")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate {aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        if weights is not None and len(weights) != len(members):
            raise ValueError(f"weights: expected {len(members)} (one per member), "
                             f"got {len(weights)}")
        if aggregate == "weighted" and weights is None:
            raise ValueError("aggregate 'weighted' needs weights (validated accuracies -> "
                             "accuracy_weight)")
        self.members = list(members)
        self.aggregate = aggregate
        self.weights = None if weights is None else [float(w) for w in weights]
        self.name = name

    def config(self) -> dict[str, Any]:
        return {"backend": "jury", "aggregate": self.aggregate, "weights": self.weights,
                "members": [m.config() for m in self.members]}

    async def judge(self, request: JudgeRequest) -> Judgment:
        answers = await asyncio.gather(*(m.judge(request) for m in self.members),
                                       return_exceptions=True)
        judged: list[tuple[float, Judgment]] = []
        statuses = []
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                answer = Judgment.failed(request.task, f"{type(answer).__name__}: {answer}")
            statuses.append(answer.status)
            if answer.ok:
                judged.append((1.0 if self.weights is None else self.weights[i], answer))
        members = {"ok": statuses.count("ok"), "unparsed": statuses.count("unparsed"),
                   "failed": statuses.count("failed")}
        tokens = {"prompt_tokens": sum(a.prompt_tokens for a in answers
                                       if isinstance(a, Judgment)),
                  "completion_tokens": sum(a.completion_tokens for a in answers
                                           if isinstance(a, Judgment))}
        if not judged:
            kind = "unparsed" if members["unparsed"] else "failed"
            return Judgment(task=request.task, status=kind,
                            reason=f"{kind}: no member answered", extra={"members": members},
                            **tokens)
        extra = {"members": members}
        if request.task == "compare":
            verdict, p_first = self._compare(judged)
            return Judgment(task="compare", verdict=verdict, p_first=p_first, extra=extra,
                            **tokens)
        if request.task == "grade":
            total = sum(w for w, _ in judged)
            score = sum(w * (a.score or 0.0) for w, a in judged) / total
            return Judgment(task="grade", score=score, extra=extra, **tokens)
        return Judgment(task="rank", ranking=_borda(judged, len(request.responses)),
                        extra=extra, **tokens)

    def _compare(self, judged: list[tuple[float, Judgment]]) -> tuple[str, float]:
        if self.aggregate == "mean":
            total = sum(w for w, _ in judged)
            p = sum(w * (a.p_first or 0.0) for w, a in judged) / total
        elif self.aggregate == "majority":
            votes = [a.verdict for _, a in judged]
            n_first, n_second = votes.count("first"), votes.count("second")
            p = (n_first + 0.5 * votes.count("tie")) / len(votes)
            verdict = "first" if n_first > n_second else "second" if n_second > n_first else "tie"
            return verdict, p
        else:
            s = sum(w * {"first": 1.0, "second": -1.0, "tie": 0.0}[a.verdict or "tie"]
                    for w, a in judged)
            p = 1.0 / (1.0 + math.exp(-s))
        verdict = "first" if p > 0.5 else "second" if p < 0.5 else "tie"
        return verdict, p


def _borda(judged: list[tuple[float, Judgment]], k: int) -> list[list[int]]:
    points = [0.0] * k
    for w, answer in judged:
        above = 0
        for tier in answer.ranking or []:
            for i in tier:
                points[i] += w * (k - 1 - above)
            above += len(tier)
    order = sorted(range(k), key=lambda i: -points[i])
    tiers: list[list[int]] = []
    for i in order:
        if tiers and math.isclose(points[tiers[-1][0]], points[i]):
            tiers[-1].append(i)
        else:
            tiers.append([i])
    return tiers
