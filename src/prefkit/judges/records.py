"""Judgments as feedback records (annotator kind ``judge``), and the items that were not judged.

- compare: a :class:`~prefkit.data.records.Comparison` per item judged ``ok`` -- in both orders
  (:class:`~prefkit.judges.bias.PairJudgment`): the calibrated winner as the outcome (a tie when
  the two orders disagree) and ``soft_label`` = the calibrated P(a better); in one order: the
  verdict and ``p_first``. ``metadata``: judge, both verdicts, ``flipped``, models when known;
- grade: a :class:`~prefkit.data.records.Rating` with the attribute ``score`` (and the
  template's scale when it has one);
- rank: a :class:`~prefkit.data.records.Ranking` of the tiers.

An item whose judgment is ``unparsed`` or ``failed`` gets no record (never a guessed label); it
comes back as a row ``{index, status, reason, raw, source_id, prompt}`` for a failures file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from ..data.records import Annotator, AnnotatorKind, Comparison, Outcome, Ranking, Rating
from .base import JudgeRequest, Judgment

__all__ = ["judged_records"]


def _config_id(config: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(config, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def judged_records(task: str, items: Sequence[dict[str, Any]],
                   requests: Sequence[JudgeRequest], judgments: Sequence[Judgment],
                   pairs: Sequence[Any] | None, label: str, config: dict[str, Any]
                   ) -> tuple[list[Any], list[dict[str, Any]]]:
    """``(records, not_judged_rows)`` (module docstring). ``judgments``: one per request, or
    with ``pairs`` (both orders) the flattened forward/backward judgments (unused then)."""
    annotator = Annotator(label, AnnotatorKind.JUDGE)
    common = {"judge": label, "judge_config": _config_id(config)}
    records: list[Any] = []
    missing: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        meta = {**common, **({"models": list(item["models"])} if item.get("models") else {}),
                **({"source_id": item["source_id"]} if item.get("source_id") else {})}
        if pairs is not None:
            pair = pairs[i]
            answer = pair.forward if not pair.forward.ok else pair.backward
            if not pair.ok:
                missing.append(_missing(i, item, pair.status, answer))
                continue
            winner = pair.winner
            outcome = {"a": Outcome.A, "b": Outcome.B, "tie": Outcome.TIE}[winner]
            records.append(Comparison(
                prompt=item["prompt"], response_a=item["responses"][0],
                response_b=item["responses"][1], outcome=outcome, soft_label=pair.p_a,
                rationale=pair.forward.rationale, annotator=annotator,
                metadata={**meta, "verdicts": [pair.forward.verdict, pair.backward.verdict],
                          "flipped": pair.flipped, "orders": 2}))
            continue
        judgment = judgments[i]
        if not judgment.ok:
            missing.append(_missing(i, item, judgment.status, judgment))
            continue
        if task == "compare":
            outcome = {"first": Outcome.A, "second": Outcome.B, "tie": Outcome.TIE}[
                judgment.verdict or "tie"]
            records.append(Comparison(
                prompt=item["prompt"], response_a=item["responses"][0],
                response_b=item["responses"][1], outcome=outcome, soft_label=judgment.p_first,
                rationale=judgment.rationale, annotator=annotator,
                metadata={**meta, "verdicts": [judgment.verdict], "orders": 1}))
        elif task == "grade":
            scale = judgment.extra.get("scale")
            records.append(Rating(
                prompt=item["prompt"], response=item["responses"][0],
                scores={"score": float(judgment.score or 0.0)},
                scales={"score": tuple(scale)} if scale else {}, annotator=annotator,
                metadata={**meta, **({"rationale": judgment.rationale}
                                     if judgment.rationale else {})}))
        else:
            records.append(Ranking(prompt=item["prompt"], responses=list(item["responses"]),
                                   tiers=[list(t) for t in judgment.ranking or []],
                                   annotator=annotator, metadata=meta))
    return records, missing


def _missing(index: int, item: dict[str, Any], status: str, judgment: Judgment
             ) -> dict[str, Any]:
    return {"index": index, "status": status, "reason": judgment.reason, "raw": judgment.raw,
            "source_id": item.get("source_id"), "prompt": item["prompt"]}
