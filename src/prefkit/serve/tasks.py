"""Task types of the annotation app: what an item holds, what an answer must look like, and the
feedback record an answer becomes.

An item is ``{"prompt": Text, "responses": [Text, ...], "models": [str, ...] | None}`` (models
are never shown to annotators). Responses are shown in a per-assignment order ``shown`` (a
permutation of the response indices, recorded); answers name responses by their *display*
position and are mapped back here, so a record always refers to the item's own order and the
display order stays in ``metadata["shown"]`` (position bias is measurable).

Answers (JSON objects), by task:

- ``pairwise``: ``{"choice": "first" | "second" | "tie" | "both_bad", "strength": 1-3?,
  "rationale": str?}`` -> :class:`~prefkit.data.records.Comparison`;
- ``ranking``: ``{"tiers": [[display positions], ...]}`` best first, a tier of several = a tie,
  every response placed once -> :class:`~prefkit.data.records.Ranking`;
- ``rating``: ``{"scores": {attribute: number}}`` on the campaign's scales ->
  :class:`~prefkit.data.records.Rating`;
- ``binary``: ``{"desirable": true | false}`` -> :class:`~prefkit.data.records.Binary`;
- ``critique``: ``{"text": str}`` -> :class:`~prefkit.data.records.Critique` (the prompt and
  response in its metadata);
- ``arena``: like ``pairwise`` for K = 2 (-> :class:`~prefkit.data.records.Battle`, plus the
  texts in metadata) or like ``ranking`` for K > 2 (-> a Ranking whose ``metadata["models"]``
  names each response's model, what ``prefkit arena rank --method pl`` reads).

:class:`AnswerError` (a ``ValueError``) names the field and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.records import (
    Annotator,
    Battle,
    Binary,
    Comparison,
    Critique,
    Outcome,
    Ranking,
    Rating,
    Record,
)

TASKS = ("pairwise", "ranking", "rating", "binary", "critique", "arena")
CHOICES = {"first": 0, "second": 1, "tie": None, "both_bad": None}
RATIONALE_MODES = ("off", "optional", "required")
MATCHMAKING = ("order", "infogain", "ucb", "random")  # rank.matchmaking.STRATEGIES (no scipy here)
HELPSTEER_SCALES = {name: (0.0, 4.0) for name in
                    ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}
"""HelpSteer2's five attributes on 0-4: the default scales of a rating campaign."""
MAX_TEXT = 20_000
"""Longest rationale or critique accepted (characters)."""


class AnswerError(ValueError):
    """An answer that does not fit its task: ``field`` and what was expected."""

    def __init__(self, field_name: str, expected: str, got: Any = None):
        self.field = field_name
        self.expected = expected
        shown = "" if got is None else f", got {str(got)[:80]!r}"
        super().__init__(f"answer.{field_name}: expected {expected}{shown}")


@dataclass
class TaskSettings:
    """A campaign's task and its options (stored as the campaign's ``settings`` JSON).

    ``allow_tie`` / ``allow_both_bad``: extra pairwise choices; ``strength``: ask how strong a
    preference is (1 slight, 2 clear, 3 strong); ``rationale``: free text off / optional /
    required (pairwise and arena); ``scales``: rating attributes and their ranges (default
    HelpSteer2's); ``k``: responses per arena battle; ``matchmaking``: how the arena picks the
    next models (:data:`MATCHMAKING`: ``order``, the default, is information gain weighted by
    the probability that a pair's order is wrong, see :mod:`prefkit.rank.matchmaking`);
    ``lease_seconds``: how long an item stays reserved for the annotator it was handed to."""

    task: str
    allow_tie: bool = True
    allow_both_bad: bool = True
    strength: bool = False
    rationale: str = "optional"
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    k: int = 2
    matchmaking: str = "order"
    lease_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.rationale not in RATIONALE_MODES:
            raise ValueError(f"rationale {self.rationale!r}: expected one of "
                             f"{', '.join(RATIONALE_MODES)}")
        if self.task == "rating" and not self.scales:
            self.scales = dict(HELPSTEER_SCALES)
        self.scales = {str(k): (float(v[0]), float(v[1])) for k, v in self.scales.items()}
        for name, (low, high) in self.scales.items():
            if not low < high:
                raise ValueError(f"scale {name}: expected low < high, got {low}..{high}")
        if self.k < 2:
            raise ValueError(f"k {self.k}: an arena battle needs at least 2 models")
        if self.matchmaking not in MATCHMAKING:
            raise ValueError(f"matchmaking {self.matchmaking!r}: expected one of "
                             f"{', '.join(MATCHMAKING)}")
        if not self.lease_seconds > 0:
            raise ValueError(f"lease_seconds {self.lease_seconds}: expected > 0")

    @property
    def choices(self) -> list[str]:
        """The pairwise choices offered, in the order of their keyboard shortcuts."""
        return ["first", "second"] + (["tie"] if self.allow_tie else []) + (
            ["both_bad"] if self.allow_both_bad else [])

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "allow_tie": self.allow_tie,
                "allow_both_bad": self.allow_both_bad, "strength": self.strength,
                "rationale": self.rationale,
                "scales": {k: list(v) for k, v in self.scales.items()}, "k": self.k,
                "matchmaking": self.matchmaking, "lease_seconds": self.lease_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSettings:
        return cls(**data)

    def responses_per_item(self) -> tuple[int, int | None]:
        """(fewest, most) responses an item of this task holds (None: no upper bound)."""
        return {"pairwise": (2, 2), "ranking": (2, None), "rating": (1, 1), "binary": (1, 1),
                "critique": (1, 1), "arena": (2, None)}[self.task]


def _text(answer: dict, name: str, required: bool) -> str | None:
    value = answer.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise AnswerError(name, "a non-empty text")
        return None
    if not isinstance(value, str):
        raise AnswerError(name, "a text", value)
    if len(value) > MAX_TEXT:
        raise AnswerError(name, f"at most {MAX_TEXT} characters", f"{len(value)} characters")
    return value


def _pairwise(settings: TaskSettings, answer: dict, shown: list[int]
              ) -> tuple[Outcome, float | None, str | None]:
    choice = answer.get("choice")
    if choice not in settings.choices:
        raise AnswerError("choice", f"one of {', '.join(settings.choices)}", choice)
    strength = answer.get("strength")
    if settings.strength and CHOICES[choice] is not None:
        if strength not in (1, 2, 3) or isinstance(strength, bool):
            raise AnswerError("strength", "1 (slight), 2 (clear) or 3 (strong)", strength)
    elif strength is not None:
        raise AnswerError("strength", "nothing (this campaign does not ask for strength)",
                          strength)
    rationale = None if settings.rationale == "off" else _text(
        answer, "rationale", settings.rationale == "required")
    if settings.rationale == "off" and answer.get("rationale"):
        raise AnswerError("rationale", "nothing (this campaign asks for no rationale)")
    position = CHOICES[choice]
    if position is None:
        outcome = Outcome.TIE if choice == "tie" else Outcome.BOTH_BAD
    else:
        outcome = Outcome.A if shown[position] == 0 else Outcome.B
    return outcome, None if strength is None else float(strength), rationale


def _tiers(answer: dict, shown: list[int]) -> list[list[int]]:
    tiers = answer.get("tiers")
    k = len(shown)
    if not isinstance(tiers, list) or not tiers:
        raise AnswerError("tiers", "a list of tiers of display positions, best first", tiers)
    seen: list[int] = []
    out = []
    for tier in tiers:
        if not isinstance(tier, list) or not tier or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in tier):
            raise AnswerError("tiers", "each tier a non-empty list of display positions", tier)
        for i in tier:
            if not 0 <= i < k:
                raise AnswerError("tiers", f"display positions 0..{k - 1}", i)
        seen.extend(tier)
        out.append([shown[i] for i in tier])
    if sorted(seen) != list(range(k)):
        raise AnswerError("tiers", f"every display position 0..{k - 1} exactly once", seen)
    return out


def _scores(settings: TaskSettings, answer: dict) -> dict[str, float]:
    scores = answer.get("scores")
    if not isinstance(scores, dict):
        raise AnswerError("scores", f"an object with {', '.join(settings.scales)}", scores)
    unknown = set(scores) - set(settings.scales)
    if unknown:
        raise AnswerError("scores", f"only the attributes {', '.join(settings.scales)}",
                          sorted(unknown))
    out = {}
    for name, (low, high) in settings.scales.items():
        value = scores.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                low <= value <= high):
            raise AnswerError(f"scores.{name}", f"a number in {low:g}..{high:g}", value)
        out[name] = float(value)
    return out


def to_record(settings: TaskSettings, item: dict[str, Any], answer: Any, shown: list[int], *,
              annotator: Annotator, metadata: dict[str, Any], record_id: str | None = None
              ) -> Record:
    """The feedback record of ``answer`` to ``item`` shown in the order ``shown``."""
    if not isinstance(answer, dict):
        raise AnswerError("", "a JSON object", type(answer).__name__)
    prompt, responses = item["prompt"], item["responses"]
    meta = {**metadata, "shown": list(shown)}
    task = settings.task
    if task == "arena" and len(shown) == 2:
        outcome, strength, rationale = _pairwise(settings, answer, shown)
        models = item["models"]
        if strength is not None:
            meta["strength"] = strength
        if rationale is not None:
            meta["rationale"] = rationale
        meta.update(prompt=prompt, response_a=responses[0], response_b=responses[1])
        return Battle(model_a=models[0], model_b=models[1], outcome=outcome,
                      prompt_id=item.get("prompt_id"), annotator=annotator, metadata=meta,
                      id=record_id)
    if task == "pairwise":
        outcome, strength, rationale = _pairwise(settings, answer, shown)
        return Comparison(prompt=prompt, response_a=responses[0], response_b=responses[1],
                          outcome=outcome, strength=strength, rationale=rationale,
                          annotator=annotator, metadata=meta, id=record_id)
    if task in ("ranking", "arena"):
        tiers = _tiers(answer, shown)
        if task == "arena":
            meta["models"] = list(item["models"])
        return Ranking(prompt=prompt, responses=list(responses), tiers=tiers,
                       annotator=annotator, metadata=meta, id=record_id)
    if task == "rating":
        return Rating(prompt=prompt, response=responses[0], scores=_scores(settings, answer),
                      scales=dict(settings.scales), annotator=annotator, metadata=meta,
                      id=record_id)
    if task == "binary":
        desirable = answer.get("desirable")
        if not isinstance(desirable, bool):
            raise AnswerError("desirable", "true or false", desirable)
        return Binary(prompt=prompt, response=responses[0], desirable=desirable,
                      annotator=annotator, metadata=meta, id=record_id)
    text = _text(answer, "text", True)
    return Critique(text=text, target_id=item.get("source_id"), annotator=annotator,
                    metadata={**meta, "prompt": prompt, "response": responses[0]}, id=record_id)


def chose_first_shown(record: Record) -> bool | None:
    """For a pairwise label with a winner: did the annotator pick the response shown first?
    None for ties, other tasks, or records without a display order."""
    shown = record.metadata.get("shown") if hasattr(record, "metadata") else None
    outcome = getattr(record, "outcome", None)
    if not shown or len(shown) != 2 or outcome not in (Outcome.A, Outcome.B):
        return None
    return (outcome is Outcome.A) == (shown[0] == 0)
