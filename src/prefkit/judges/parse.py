"""Strict parsing of a judge's text into a verdict, a score or a ranking.

Each parser returns a :class:`Parsed` or raises :class:`ParseError` with the reason. Strict
means: the output must contain the answer in the template's exact form, once (the same tag
repeated is fine, two *different* answers are not), and in range. Nothing is guessed -- an
output that says "[[A]]" and later "[[B]]", a score of 11 on a 1-10 scale, or a ranking that
leaves out a response is unparsed, never a loss, a tie or a minimum score (the failures seen in
inspect_ai #4026, openai/evals #1712 and prometheus-eval #58).

Parsers, by the name a template declares (``{% set parser = "..." %}``):

- ``ab``: ``[[A]]`` or ``[[B]]`` (pairwise without ties; AlpacaEval / MT-Bench style tags);
- ``abc``: ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie; MT-Bench's pair-v2);
- ``score``: ``[[N]]`` (or ``Rating: [[N]]``), a number within the template's ``scale``
  (single-answer grading, MT-Bench single-v1: 1-10);
- ``result_score``: ``[RESULT] N``, an integer within ``scale`` (Prometheus absolute grading,
  1-5);
- ``result_ab``: ``[RESULT] A`` or ``[RESULT] B`` (Prometheus relative grading);
- ``ranking``: ``[[2 > 1 = 3]]``: every response's 1-based number once, ``>`` between tiers
  and ``=`` within one (K-wise ranking with ties).

The text before the answer is kept as the rationale.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PARSERS", "ParseError", "Parsed", "parse"]


class ParseError(ValueError):
    """The output did not hold an answer in the expected form (``str(exc)`` says why)."""


@dataclass(frozen=True)
class Parsed:
    """What a parser found: one of ``verdict`` / ``score`` / ``ranking``, the rationale and
    the character span of the answer in the text (for reading the verdict token's
    log-probabilities)."""

    verdict: str | None = None
    score: float | None = None
    ranking: list[list[int]] | None = None
    rationale: str | None = None
    span: tuple[int, int] | None = None


_AB_TAG = re.compile(r"\[\[\s*([A-Za-z])\s*\]\]")
_SCORE_TAG = re.compile(r"\[\[\s*([-+]?\d+(?:\.\d+)?)\s*\]\]")
_RESULT = re.compile(r"\[RESULT\]\s*\(?\s*([-+]?\d+(?:\.\d+)?|[A-Za-z])\b\s*\)?")
_RANKING = re.compile(r"\[\[\s*(\d+(?:\s*[>=]\s*\d+)+)\s*\]\]")


def _rationale(text: str, start: int) -> str | None:
    before = text[:start].strip()
    return before or None


def _one(matches: list[re.Match[str]], what: str, normalize: Callable[[str], str]
         ) -> re.Match[str]:
    if not matches:
        raise ParseError(f"no {what} found")
    values = {normalize(m.group(1)) for m in matches}
    if len(values) > 1:
        raise ParseError(f"conflicting {what}s: {', '.join(sorted(values))}")
    return matches[-1]


def _letters(text: str, allowed: dict[str, str], pattern: re.Pattern[str], what: str) -> Parsed:
    matches = [m for m in pattern.finditer(text) if m.group(1).upper() in allowed]
    if not matches and any(pattern.finditer(text)):
        seen = sorted({m.group(1) for m in pattern.finditer(text)})
        raise ParseError(f"{what} {', '.join(seen)} is not one of {', '.join(allowed)}")
    found = _one(matches, what, str.upper)
    return Parsed(verdict=allowed[found.group(1).upper()],
                  rationale=_rationale(text, found.start()), span=found.span(1))


def parse_ab(text: str, scale: tuple[float, float] | None = None, k: int = 2) -> Parsed:
    return _letters(text, {"A": "first", "B": "second"}, _AB_TAG, "verdict")


def parse_abc(text: str, scale: tuple[float, float] | None = None, k: int = 2) -> Parsed:
    return _letters(text, {"A": "first", "B": "second", "C": "tie"}, _AB_TAG, "verdict")


def parse_result_ab(text: str, scale: tuple[float, float] | None = None, k: int = 2) -> Parsed:
    return _letters(text, {"A": "first", "B": "second"}, _RESULT, "[RESULT] verdict")


def _number(text: str, pattern: re.Pattern[str], scale: tuple[float, float] | None,
            what: str, integer: bool) -> Parsed:
    matches = [m for m in pattern.finditer(text)
               if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", m.group(1))]
    found = _one(matches, what, lambda v: str(float(v)))
    value = float(found.group(1))
    if integer and not value.is_integer():
        raise ParseError(f"{what} {found.group(1)} is not a whole number")
    if scale is not None and not scale[0] <= value <= scale[1]:
        raise ParseError(f"{what} {found.group(1)} is outside {scale[0]:g}-{scale[1]:g}")
    return Parsed(score=value, rationale=_rationale(text, found.start()), span=found.span(1))


def parse_score(text: str, scale: tuple[float, float] | None = None, k: int = 1) -> Parsed:
    return _number(text, _SCORE_TAG, scale, "score", integer=False)


def parse_result_score(text: str, scale: tuple[float, float] | None = None, k: int = 1
                       ) -> Parsed:
    return _number(text, _RESULT, scale, "[RESULT] score", integer=True)


def parse_ranking(text: str, scale: tuple[float, float] | None = None, k: int = 2) -> Parsed:
    found = _one(list(_RANKING.finditer(text)), "ranking",
                 lambda v: re.sub(r"\s+", "", v))
    tiers: list[list[int]] = []
    for tier in found.group(1).split(">"):
        tiers.append([int(x) - 1 for x in tier.split("=")])
    flat = sorted(i for tier in tiers for i in tier)
    if flat != list(range(k)):
        raise ParseError(f"ranking {found.group(1).strip()!r} must name each of 1..{k} once")
    return Parsed(ranking=tiers, rationale=_rationale(text, found.start()), span=found.span(1))


PARSERS: dict[str, Callable[..., Parsed]] = {
    "ab": parse_ab,
    "abc": parse_abc,
    "score": parse_score,
    "result_score": parse_result_score,
    "result_ab": parse_result_ab,
    "ranking": parse_ranking,
}
"""Parser name -> function ``(text, scale, k) -> Parsed``."""

TASK_OF: dict[str, str] = {"ab": "compare", "abc": "compare", "result_ab": "compare",
                           "score": "grade", "result_score": "grade", "ranking": "rank"}
"""The request task each parser answers."""


def parse(name: str, text: str, *, scale: tuple[float, float] | None = None, k: int = 2
          ) -> Parsed:
    """Parse ``text`` with the parser ``name`` (:data:`PARSERS`)."""
    if name not in PARSERS:
        raise ValueError(f"parser {name!r}: expected one of {', '.join(PARSERS)}")
    if text is None or not str(text).strip():
        raise ParseError("empty output")
    return PARSERS[name](str(text), scale, k)
