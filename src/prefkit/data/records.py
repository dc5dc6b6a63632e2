"""Typed feedback records: the one data model every part of prefkit reads and writes.

Six kinds of feedback, each a small dataclass:

- :class:`Comparison` -- a prompt, two responses and which one won (A, B, tie, both bad);
- :class:`Ranking` -- a prompt, K >= 2 responses and a full or partial order with ties;
- :class:`Rating` -- a prompt, a response and named attribute scores on known scales;
- :class:`Binary` -- a prompt, a response and a desirable yes/no label (KTO-style);
- :class:`Battle` -- an arena vote between two models (no texts needed);
- :class:`Critique` -- natural-language feedback attached to another record.

A prompt or response is :data:`Text`: either a plain string or a conversation, a list of
``{"role": ..., "content": ...}`` messages (the TRL conversational convention).

Every record carries an ``id``; when none is given, :func:`record_id` derives a stable one from
the content, so re-submitting the same record is recognised as the same record everywhere
(files, conversions, the feedback store).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar

import orjson

Message = dict[str, str]
Text = str | list[Message]
"""A prompt or a response: plain text, or a conversation of role/content messages."""


class Outcome(str, Enum):
    """Result of a pairwise comparison or battle."""

    A = "a"
    B = "b"
    TIE = "tie"
    BOTH_BAD = "both_bad"

    @property
    def is_tie(self) -> bool:
        return self in (Outcome.TIE, Outcome.BOTH_BAD)

    def swapped(self) -> Outcome:
        """The same judgement with the two sides exchanged."""
        return {Outcome.A: Outcome.B, Outcome.B: Outcome.A}.get(self, self)


class AnnotatorKind(str, Enum):
    HUMAN = "human"
    SIMULATED = "simulated"
    JUDGE = "judge"
    REWARD_MODEL = "reward_model"


@dataclass(frozen=True, slots=True)
class Annotator:
    """Who gave a piece of feedback."""

    id: str
    kind: AnnotatorKind = AnnotatorKind.HUMAN

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind.value}


@dataclass(kw_only=True, slots=True)
class Critique:
    """Natural-language feedback on another record (``target_id``) or free-standing."""

    kind: ClassVar[str] = "critique"
    text: str
    target_id: str | None = None
    aspect: str | None = None
    annotator: Annotator | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(kw_only=True, slots=True)
class Comparison:
    """Pairwise preference: which of ``response_a`` and ``response_b`` is better for ``prompt``.

    ``strength`` is an optional margin (e.g. HelpSteer2's 1-3 preference strength or a rating
    gap); ``soft_label`` is an optional probability that A is preferred (weighted judges,
    AlpacaEval's fractional preferences).
    """

    kind: ClassVar[str] = "comparison"
    prompt: Text
    response_a: Text
    response_b: Text
    outcome: Outcome
    strength: float | None = None
    soft_label: float | None = None
    rationale: str | None = None
    annotator: Annotator | None = None
    critiques: list[Critique] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def chosen(self) -> Text:
        """The preferred response (raises for ties)."""
        if self.outcome is Outcome.A:
            return self.response_a
        if self.outcome is Outcome.B:
            return self.response_b
        raise ValueError(f"comparison {self.id!r} is a {self.outcome.value}: no chosen response")

    @property
    def rejected(self) -> Text:
        """The dispreferred response (raises for ties)."""
        if self.outcome is Outcome.A:
            return self.response_b
        if self.outcome is Outcome.B:
            return self.response_a
        raise ValueError(f"comparison {self.id!r} is a {self.outcome.value}: no rejected response")


Tier = list[int]


@dataclass(kw_only=True, slots=True)
class Ranking:
    """K-wise ranking: ``tiers`` lists response indices best first; a tier of several indices is
    a tie; indices not listed are unranked (a partial ranking)."""

    kind: ClassVar[str] = "ranking"
    prompt: Text
    responses: list[Text]
    tiers: list[Tier]
    annotator: Annotator | None = None
    critiques: list[Critique] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def ranked(self) -> list[int]:
        """Ranked indices, best first (tied indices in their listed order)."""
        return [i for tier in self.tiers for i in tier]

    @property
    def unranked(self) -> list[int]:
        seen = set(self.ranked)
        return [i for i in range(len(self.responses)) if i not in seen]

    @property
    def tier_scores(self) -> dict[int, float]:
        """A score per ranked response index, higher = better: ``len(tiers) - 1 - tier``
        (tied responses share a score; unranked ones are absent)."""
        last = len(self.tiers) - 1
        return {i: float(last - t) for t, tier in enumerate(self.tiers) for i in tier}

    @property
    def is_strict(self) -> bool:
        """True for a full order without ties."""
        return all(len(t) == 1 for t in self.tiers) and not self.unranked


@dataclass(kw_only=True, slots=True)
class Rating:
    """Absolute scores of one response on named attributes, each on a ``scales[name]`` range."""

    kind: ClassVar[str] = "rating"
    prompt: Text
    response: Text
    scores: dict[str, float]
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    annotator: Annotator | None = None
    critiques: list[Critique] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(kw_only=True, slots=True)
class Binary:
    """Unpaired feedback: is ``response`` desirable for ``prompt`` (KTO's thumbs up/down)."""

    kind: ClassVar[str] = "binary"
    prompt: Text
    response: Text
    desirable: bool
    annotator: Annotator | None = None
    critiques: list[Critique] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(kw_only=True, slots=True)
class Battle:
    """One arena vote between two models. ``style`` holds features for style control
    (lengths, markdown counts, ...); the voter or judge is the ``annotator``."""

    kind: ClassVar[str] = "battle"
    model_a: str
    model_b: str
    outcome: Outcome
    prompt_id: str | None = None
    style: dict[str, Any] = field(default_factory=dict)
    timestamp: float | None = None
    annotator: Annotator | None = None
    critiques: list[Critique] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


Record = Comparison | Ranking | Rating | Binary | Battle | Critique
RECORD_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Comparison, Ranking, Rating, Binary, Battle, Critique)
}
KINDS: tuple[str, ...] = tuple(RECORD_TYPES)


# ---------------------------------------------------------------------------------------------
# Native (lossless) dictionary form: {"kind": ..., every field that is set}
# ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Annotator):
        return value.to_dict()
    if isinstance(value, Critique):  # attached critiques: no "kind" needed
        out = to_dict(value)
        del out["kind"]
        return out
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(record: Record, *, with_id: bool = True) -> dict[str, Any]:
    """Native dictionary of a record: ``kind`` plus every field that is set (None and empty
    containers are left out). :func:`prefkit.data.formats.decode_native` reads it back."""
    out: dict[str, Any] = {"kind": record.kind}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None or (isinstance(value, (list, dict)) and not value and f.name != "scores"):
            continue
        if f.name == "id" and not with_id:
            continue
        out[f.name] = _plain(value)
    return out


def content_hash(record: Record) -> str:
    """SHA-256 (hex) of the record's canonical content, ``id`` excluded."""
    payload = orjson.dumps(to_dict(record, with_id=False), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def record_id(record: Record) -> str:
    """The record's id: the explicit one, else a stable content-derived one (``kind-<hash>``)."""
    if record.id:
        return record.id
    return f"{record.kind}-{content_hash(record)[:24]}"


def with_id(record: Record) -> Record:
    """Set ``record.id`` to :func:`record_id` if it is missing; returns the record."""
    if not record.id:
        record.id = record_id(record)
    return record


def text_length(text: Text) -> int:
    """Characters of a text (for a conversation: of all message contents)."""
    if isinstance(text, str):
        return len(text)
    return sum(len(m.get("content", "")) for m in text)


def text_content(text: Text) -> str:
    """Plain string of a text (a conversation's contents joined by newlines)."""
    if isinstance(text, str):
        return text
    return "\n".join(str(m.get("content", "")) for m in text)
