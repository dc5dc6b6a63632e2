"""Conversions between feedback kinds: pure functions, records in -> records out.

Every conversion reads records, yields new records and keeps the accounts in a
:class:`ConversionReport`: nothing is invented (every output names its source record(s) in
``metadata["source_id"]`` or ``metadata["source_ids"]``) and nothing disappears silently.
The report keeps two ledgers:

- ``dropped``: input records that produced no output at all, by reason. For every function,
  ``inputs == used + sum(dropped.values())``, where ``used`` counts inputs that produced (or
  passed through as) at least one output;
- ``skipped``: parts of inputs that were not turned into outputs -- a tied pair inside a ranking
  tier, an unranked response, a rating pair whose score gap is below ``min_gap``... -- by reason.

``examples`` keeps up to five source record ids per reason (of either ledger).

The functions are generators: pass a report to read the accounts once the generator is
exhausted (``list(ranking_to_pairs(records, report=report))``), or use :func:`collect`.
Conversions that pair records of the same prompt (:func:`ratings_to_pairs`,
:func:`binary_to_pairs`) have to see every record of a prompt before pairing, so they group
their input in memory (one entry per record) and yield once the input is exhausted; the others
stream record by record.

Output ids are derived deterministically from the source ids, so converting the same input
twice gives the same records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import orjson

from .records import (
    Annotator,
    Battle,
    Binary,
    Comparison,
    Outcome,
    Ranking,
    Rating,
    Record,
    Text,
    record_id,
)

MAX_EXAMPLES = 5

# Reasons (shared by the report's ledgers; kept as constants so callers and tests can match)
NOT_A = "not a {kind}"
INVALID_RANKING = "invalid ranking"
UNRANKED = "unranked response"
TIE_IN_TIER = "tie within tier"
NON_ADJACENT = "non-adjacent tiers"
NO_ORDERED_PAIR = "no ordered pair"
IDENTICAL = "identical responses"
CRITIQUES_NOT_CARRIED = "critiques not carried"
MISSING_ATTRIBUTE = "missing attribute"
EQUAL_RATINGS = "equal ratings"
GAP_BELOW_MIN = "gap below min_gap"
SINGLE_RESPONSE = "single response for prompt"
NO_UNDESIRABLE = "no undesirable response for prompt"
NO_DESIRABLE = "no desirable response for prompt"
TIE = "tie"
BOTH_BAD = "both_bad"
NO_MODEL_NAMES = "no model names"
SAME_MODEL = "same model on both sides"


def no_conversion(kind: str, target: str) -> str:
    """The drop reason of a record of ``kind`` that cannot become a ``target``."""
    return f"no conversion from {kind} to {target}"


@dataclass
class ConversionReport:
    """Accounts of one conversion run (see the module docstring for the two ledgers).

    Invariant after a run: ``inputs == used + sum(dropped.values())``.
    """

    inputs: int = 0
    outputs: int = 0
    used: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def _example(self, reason: str, source_id: str | None) -> None:
        if source_id is None:
            return
        ids = self.examples.setdefault(reason, [])
        if len(ids) < MAX_EXAMPLES and source_id not in ids:
            ids.append(source_id)

    def drop(self, reason: str, source_id: str | None) -> None:
        """Account one input record that produced nothing."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self._example(reason, source_id)

    def skip(self, reason: str, source_id: str | None, n: int = 1) -> None:
        """Account ``n`` parts of an input (pairs, responses) that produced nothing."""
        if n <= 0:
            return
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        self._example(reason, source_id)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def balanced(self) -> bool:
        """True when every input is accounted for: used or dropped, exactly once."""
        return self.inputs == self.used + self.dropped_total

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "used": self.used,
            "dropped": dict(sorted(self.dropped.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }


def collect(
    convert: Callable[..., Iterator[Record]], records: Iterable[Record], **options: Any
) -> tuple[list[Record], ConversionReport]:
    """Run a conversion to the end: ``(outputs, report)``."""
    report = ConversionReport()
    out = list(convert(records, report=report, **options))
    return out, report


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes of a text or any JSON value (sorted keys): a grouping key."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def prompt_hash(prompt: Text) -> str:
    """Stable id of a prompt: ``prompt-`` + the first 16 hex digits of SHA-256 of its canonical
    JSON."""
    return "prompt-" + hashlib.sha256(canonical(prompt)).hexdigest()[:16]


def _shared_annotator(annotators: Iterable[Annotator | None]) -> Annotator | None:
    """The annotator when every source has the same one, else None."""
    items = list(annotators)
    first = items[0] if items else None
    return first if all(a == first for a in items) else None


class _Account:
    """Per-input bookkeeping: counts the input, then exactly one of used / dropped."""

    __slots__ = ("report",)

    def __init__(self, report: ConversionReport) -> None:
        self.report = report

    def take(self, record: Record) -> str:
        self.report.inputs += 1
        return record_id(record)

    def used(self, n_outputs: int) -> None:
        self.report.used += 1
        self.report.outputs += n_outputs


# ---------------------------------------------------------------------------------------------
# Rankings -> pairs
# ---------------------------------------------------------------------------------------------


def _valid_tiers(record: Ranking) -> bool:
    seen: set[int] = set()
    n = len(record.responses)
    for tier in record.tiers:
        if not tier:
            return False
        for i in tier:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n or i in seen:
                return False
            seen.add(i)
    return True


def ranking_to_pairs(
    records: Iterable[Record],
    mode: str = "all",
    *,
    ties: str = "drop",
    report: ConversionReport | None = None,
) -> Iterator[Comparison]:
    """Pairwise comparisons implied by K-wise rankings (streaming, one ranking at a time).

    With tiers ``T_1, ..., T_m`` (best first; rank of tier ``T_t`` is ``t``):

    - ``mode="all"``: every pair ``(i, j)`` with ``i`` in ``T_s``, ``j`` in ``T_t``, ``s < t``
      becomes ``Comparison(response_a=responses[i], response_b=responses[j], outcome=A)``;
      ``sum_{s<t} |T_s| |T_t|`` pairs, ``K(K-1)/2`` for a strict ranking of K;
    - ``mode="adjacent"``: only ``t = s + 1``: ``sum_s |T_s| |T_{s+1}|`` pairs, ``K-1`` for a
      strict ranking; the other cross-tier pairs are skipped as ``"non-adjacent tiers"``.

    Pairs inside a tier (ties) give no pair with ``ties="drop"`` (skipped as
    ``"tie within tier"``), or a ``Comparison`` with outcome ``TIE`` with ``ties="keep"``.
    Unranked indices give no pairs (each skipped as ``"unranked response"``); a pair of
    identical texts is skipped as ``"identical responses"``. A ranking giving no pair at all is
    dropped (``"no ordered pair"``); so are malformed tiers (``"invalid ranking"``) and records
    of other kinds (``"not a ranking"``).

    Output ids: ``f"{rid}:{i}>{j}"`` (``f"{rid}:{i}={j}"`` for kept ties) with ``rid`` the
    ranking's :func:`~prefkit.data.records.record_id`; metadata: the ranking's metadata plus
    ``source_id`` and ``ranks = {"a": s, "b": t}`` (1 = best); the annotator is copied.
    Critiques of the ranking are not copied to its pairs (skipped as
    ``"critiques not carried"``; they stay reachable through ``source_id``).
    """
    if mode not in ("all", "adjacent"):
        raise ValueError(f"mode must be 'all' or 'adjacent', got {mode!r}")
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be 'drop' or 'keep', got {ties!r}")
    report = report if report is not None else ConversionReport()
    account = _Account(report)
    for record in records:
        rid = account.take(record)
        if not isinstance(record, Ranking):
            report.drop(NOT_A.format(kind="ranking"), rid)
            continue
        if not _valid_tiers(record):
            report.drop(INVALID_RANKING, rid)
            continue
        pairs = list(_ranking_pairs(record, rid, mode, ties, report))
        if not pairs:
            report.drop(NO_ORDERED_PAIR, rid)
            continue
        if record.critiques:
            report.skip(CRITIQUES_NOT_CARRIED, rid)
        account.used(len(pairs))
        yield from pairs


def _ranking_pairs(
    record: Ranking, rid: str, mode: str, ties: str, report: ConversionReport
) -> Iterator[Comparison]:
    tiers = record.tiers
    report.skip(UNRANKED, rid, len(record.unranked))

    def pair(i: int, j: int, s: int, t: int, outcome: Outcome, sep: str) -> Comparison | None:
        a, b = record.responses[i], record.responses[j]
        if a == b:
            report.skip(IDENTICAL, rid)
            return None
        return Comparison(
            prompt=record.prompt, response_a=a, response_b=b, outcome=outcome,
            annotator=record.annotator,
            metadata={**record.metadata, "source_id": rid, "ranks": {"a": s + 1, "b": t + 1}},
            id=f"{rid}:{i}{sep}{j}",
        )

    for s, tier in enumerate(tiers):
        if len(tier) > 1:
            if ties == "keep":
                for i, j in combinations(tier, 2):
                    out = pair(i, j, s, s, Outcome.TIE, "=")
                    if out is not None:
                        yield out
            else:
                report.skip(TIE_IN_TIER, rid, len(tier) * (len(tier) - 1) // 2)
        for t in range(s + 1, len(tiers)):
            if mode == "adjacent" and t > s + 1:
                report.skip(NON_ADJACENT, rid, len(tier) * len(tiers[t]))
                continue
            for i in tier:
                for j in tiers[t]:
                    out = pair(i, j, s, t, Outcome.A, ">")
                    if out is not None:
                        yield out


# ---------------------------------------------------------------------------------------------
# Ratings -> pairs
# ---------------------------------------------------------------------------------------------


def rating_score(
    record: Rating, attribute: str | None = None, weights: dict[str, float] | None = None
) -> float | None:
    """The score a rating is compared on (None when the needed attributes are missing):

    - ``attribute``: ``scores[attribute]``;
    - ``weights``: ``sum_k weights[k] * scores[k]`` (every weighted attribute must be present);
    - neither: the record's only score, or the unweighted mean of its scores.
    """
    if attribute is not None and weights is not None:
        raise ValueError("give attribute or weights, not both")
    scores = record.scores
    if attribute is not None:
        value = scores.get(attribute)
        return None if value is None else float(value)
    if weights is not None:
        if any(k not in scores for k in weights):
            return None
        return float(sum(w * scores[k] for k, w in weights.items()))
    if not scores:
        return None
    return float(sum(scores.values()) / len(scores))


@dataclass
class _RatedResponse:
    response: Text
    ids: list[str]
    scores: list[float]
    annotators: list[Annotator | None]
    best_gap_reason: str | None = None  # why none of its pairs was kept
    paired: bool = False

    @property
    def score(self) -> float:
        return sum(self.scores) / len(self.scores)


def ratings_to_pairs(
    records: Iterable[Record],
    attribute: str | None = None,
    weights: dict[str, float] | None = None,
    min_gap: float = 1.0,
    *,
    report: ConversionReport | None = None,
) -> Iterator[Comparison]:
    """Pairwise comparisons from absolute ratings of responses to the same prompt.

    Ratings are grouped by prompt (its canonical JSON) -- **in memory**: every rating of the
    input is held until the input is exhausted, then pairs are yielded prompt by prompt (prompts
    and responses in first-seen order). Within a prompt, ratings of the same response (e.g. by
    several annotators) are merged: the response's score is the mean of their scores (see
    :func:`rating_score` for the score of one rating).

    For every pair of distinct responses ``u, v`` with scores ``s_u >= s_v`` and
    ``gap = s_u - s_v``:

    - ``gap >= min_gap`` and ``gap > 0``: ``Comparison(response_a=u, response_b=v,
      outcome=A, strength=gap)``, id ``f"{id_u}>{id_v}"`` (first rating ids), metadata
      ``source_ids`` (every rating id of u, then of v) and ``scores = {"a": s_u, "b": s_v}``;
      the annotator is kept when all those ratings share it;
    - ``gap == 0``: skipped as ``"equal ratings"`` (never a tie: a tie needs a judgement);
    - ``0 < gap < min_gap``: skipped as ``"gap below min_gap"``.

    Records dropped whole: a prompt with a single rated response (``"single response for
    prompt"``), a rating without the needed attribute(s) (``"missing attribute"``), a rating
    none of whose pairs was kept (``"equal ratings"`` if all its gaps are 0, else ``"gap below
    min_gap"``), and records of other kinds (``"not a rating"``). Critiques are not copied
    (skipped as ``"critiques not carried"``).
    """
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    report = report if report is not None else ConversionReport()
    account = _Account(report)
    groups: dict[bytes, tuple[Text, dict[bytes, _RatedResponse]]] = {}
    for record in records:
        rid = account.take(record)
        if not isinstance(record, Rating):
            report.drop(NOT_A.format(kind="rating"), rid)
            continue
        score = rating_score(record, attribute, weights)
        if score is None:
            report.drop(MISSING_ATTRIBUTE, rid)
            continue
        if record.critiques:
            report.skip(CRITIQUES_NOT_CARRIED, rid)
        _, responses = groups.setdefault(canonical(record.prompt), (record.prompt, {}))
        rated = responses.get(canonical(record.response))
        if rated is None:
            rated = responses[canonical(record.response)] = _RatedResponse(
                record.response, [], [], [])
        rated.ids.append(rid)
        rated.scores.append(score)
        rated.annotators.append(record.annotator)

    for prompt, responses in groups.values():
        rated_list = list(responses.values())
        if len(rated_list) == 1:
            for rid in rated_list[0].ids:
                report.drop(SINGLE_RESPONSE, rid)
            continue
        for x, y in combinations(rated_list, 2):
            u, v = (x, y) if x.score >= y.score else (y, x)
            gap = u.score - v.score
            if gap == 0 or gap < min_gap:
                reason = EQUAL_RATINGS if gap == 0 else GAP_BELOW_MIN
                report.skip(reason, u.ids[0])
                for side in (u, v):
                    if side.best_gap_reason != GAP_BELOW_MIN:
                        side.best_gap_reason = reason
                continue
            u.paired = v.paired = True
            report.outputs += 1
            yield Comparison(
                prompt=prompt, response_a=u.response, response_b=v.response, outcome=Outcome.A,
                strength=gap, annotator=_shared_annotator(u.annotators + v.annotators),
                metadata={"source_ids": u.ids + v.ids, "scores": {"a": u.score, "b": v.score}},
                id=f"{u.ids[0]}>{v.ids[0]}",
            )
        for rated in rated_list:
            for rid in rated.ids:
                if rated.paired:
                    report.used += 1
                else:
                    report.drop(rated.best_gap_reason or EQUAL_RATINGS, rid)


# ---------------------------------------------------------------------------------------------
# Binary <-> pairs
# ---------------------------------------------------------------------------------------------


def binary_to_pairs(
    records: Iterable[Record], *, report: ConversionReport | None = None
) -> Iterator[Comparison]:
    """Pairs from unpaired desirable / undesirable labels of responses to the same prompt.

    Binary records are grouped by prompt (canonical JSON) **in memory**; once the input is
    exhausted, for each prompt (first-seen order) every (desirable ``d``, undesirable ``u``)
    pair gives ``Comparison(response_a=d, response_b=u, outcome=A)``: ``|D| * |U|`` pairs per
    prompt. Id ``f"{id_d}>{id_u}"``; metadata ``source_ids = [id_d, id_u]``; the annotator is
    kept when both labels share it. A pair whose two texts are identical (the same response
    labelled both ways) is skipped as ``"identical responses"``.

    Dropped: records of a prompt with only desirable responses (``"no undesirable response for
    prompt"``) or only undesirable ones (``"no desirable response for prompt"``), records that
    end up in no pair (``"identical responses"``) and records of other kinds
    (``"not a binary"``). Critiques are not copied (``"critiques not carried"``).
    """
    report = report if report is not None else ConversionReport()
    account = _Account(report)
    groups: dict[bytes, tuple[list[tuple[str, Binary]], list[tuple[str, Binary]]]] = {}
    for record in records:
        rid = account.take(record)
        if not isinstance(record, Binary):
            report.drop(NOT_A.format(kind="binary"), rid)
            continue
        if record.critiques:
            report.skip(CRITIQUES_NOT_CARRIED, rid)
        good, bad = groups.setdefault(canonical(record.prompt), ([], []))
        (good if record.desirable else bad).append((rid, record))

    for good, bad in groups.values():
        if not bad or not good:
            reason = NO_UNDESIRABLE if not bad else NO_DESIRABLE
            for rid, _ in good or bad:
                report.drop(reason, rid)
            continue
        paired: set[str] = set()
        for gid, g in good:
            for bid, b in bad:
                if g.response == b.response:
                    report.skip(IDENTICAL, gid)
                    continue
                paired.update((gid, bid))
                report.outputs += 1
                yield Comparison(
                    prompt=g.prompt, response_a=g.response, response_b=b.response,
                    outcome=Outcome.A, annotator=_shared_annotator([g.annotator, b.annotator]),
                    metadata={"source_ids": [gid, bid]}, id=f"{gid}>{bid}",
                )
        for rid, _ in good + bad:
            if rid in paired:
                report.used += 1
            else:
                report.drop(IDENTICAL, rid)


def pairs_to_binary(
    records: Iterable[Record],
    *,
    both_bad: str = "undesirable",
    report: ConversionReport | None = None,
) -> Iterator[Binary]:
    """Unpaired labels from pairwise comparisons (streaming).

    - decisive comparison (A or B): two records, ``Binary(chosen, desirable=True)`` with id
      ``f"{cid}:chosen"`` and ``Binary(rejected, desirable=False)`` with id
      ``f"{cid}:rejected"``;
    - ``BOTH_BAD`` with ``both_bad="undesirable"`` (default, both responses are bad): two
      undesirable records, ids ``f"{cid}:a"`` and ``f"{cid}:b"``; with ``both_bad="drop"``:
      dropped as ``"both_bad"``;
    - ``TIE``: dropped as ``"tie"`` (a tie says nothing about absolute quality).

    Metadata: the comparison's metadata plus ``source_id`` and ``role`` (``chosen``,
    ``rejected``, ``a`` or ``b``); annotator and critiques are copied to both records. Identical
    outputs (same prompt, response and label from different comparisons) are kept, each with
    its own id. Records of other kinds are dropped (``"not a comparison"``).
    """
    if both_bad not in ("undesirable", "drop"):
        raise ValueError(f"both_bad must be 'undesirable' or 'drop', got {both_bad!r}")
    report = report if report is not None else ConversionReport()
    account = _Account(report)
    for record in records:
        cid = account.take(record)
        if not isinstance(record, Comparison):
            report.drop(NOT_A.format(kind="comparison"), cid)
            continue
        if record.outcome is Outcome.TIE:
            report.drop(TIE, cid)
            continue
        if record.outcome is Outcome.BOTH_BAD:
            if both_bad == "drop":
                report.drop(BOTH_BAD, cid)
                continue
            sides = [("a", record.response_a, False), ("b", record.response_b, False)]
        else:
            sides = [("chosen", record.chosen, True), ("rejected", record.rejected, False)]
        account.used(2)
        for role, response, desirable in sides:
            yield Binary(
                prompt=record.prompt, response=response, desirable=desirable,
                annotator=record.annotator, critiques=list(record.critiques),
                metadata={**record.metadata, "source_id": cid, "role": role},
                id=f"{cid}:{role}",
            )


# ---------------------------------------------------------------------------------------------
# Comparisons -> battles
# ---------------------------------------------------------------------------------------------

ALPACA_MODEL_KEYS = ("generator_1", "generator_2")
PROMPT_ID_KEYS = ("question_id", "prompt_id")


def comparisons_to_battles(
    records: Iterable[Record],
    model_a_key: str = "model_a",
    model_b_key: str = "model_b",
    *,
    report: ConversionReport | None = None,
) -> Iterator[Battle]:
    """Arena battles from comparisons whose metadata names the two models (streaming, 1:1).

    Model names: ``metadata[model_a_key]`` / ``metadata[model_b_key]``; when those keys are
    missing, AlpacaEval's ``generator_1`` / ``generator_2``. The battle keeps the outcome,
    annotator and critiques; its id is ``f"{cid}:battle"``; ``prompt_id`` is
    ``metadata["question_id"]`` or ``metadata["prompt_id"]`` (as a string), else
    :func:`prompt_hash` of the prompt; ``timestamp`` is ``metadata["tstamp"]`` when numeric.
    Metadata: the comparison's other metadata keys plus ``source_id`` (and ``soft_label`` /
    ``strength`` when set, since a battle has no such fields).

    Dropped: no model names (``"no model names"``), the same model on both sides (``"same
    model on both sides"``), records of other kinds (``"not a comparison"``).
    """
    report = report if report is not None else ConversionReport()
    account = _Account(report)
    for record in records:
        cid = account.take(record)
        if not isinstance(record, Comparison):
            report.drop(NOT_A.format(kind="comparison"), cid)
            continue
        meta = record.metadata
        keys = (model_a_key, model_b_key)
        if not (_is_name(meta.get(model_a_key)) and _is_name(meta.get(model_b_key))):
            keys = ALPACA_MODEL_KEYS
        model_a, model_b = meta.get(keys[0]), meta.get(keys[1])
        if not (_is_name(model_a) and _is_name(model_b)):
            report.drop(NO_MODEL_NAMES, cid)
            continue
        model_a, model_b = str(model_a), str(model_b)
        if model_a == model_b:
            report.drop(SAME_MODEL, cid)
            continue
        prompt_id = next((str(meta[k]) for k in PROMPT_ID_KEYS if _is_name(meta.get(k))), None)
        tstamp = meta.get("tstamp")
        timestamp = (float(tstamp) if isinstance(tstamp, (int, float))
                     and not isinstance(tstamp, bool) else None)
        rest = {k: v for k, v in meta.items() if k not in keys}
        if timestamp is not None:
            rest.pop("tstamp")
        rest["source_id"] = cid
        if record.soft_label is not None:
            rest["soft_label"] = record.soft_label
        if record.strength is not None:
            rest["strength"] = record.strength
        account.used(1)
        yield Battle(
            model_a=model_a, model_b=model_b, outcome=record.outcome,
            prompt_id=prompt_id or prompt_hash(record.prompt), timestamp=timestamp,
            annotator=record.annotator, critiques=list(record.critiques), metadata=rest,
            id=f"{cid}:battle",
        )


def _is_name(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int)


# ---------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------

TARGETS = ("comparison", "binary", "battle", "ranking", "rating", "critique")

# (source kind, target kind) -> conversion; grouping conversions need every record of a prompt
_STREAMING = {("ranking", "comparison"), ("comparison", "binary"), ("comparison", "battle")}
_GROUPING = {("rating", "comparison"), ("binary", "comparison")}
CONVERSIONS: frozenset[tuple[str, str]] = frozenset(_STREAMING | _GROUPING)


def to_kind(
    records: Iterable[Record],
    target_kind: str,
    *,
    pairs: str = "all",
    ties: str = "drop",
    min_gap: float = 1.0,
    attribute: str | None = None,
    weights: dict[str, float] | None = None,
    both_bad: str = "undesirable",
    model_a_key: str = "model_a",
    model_b_key: str = "model_b",
    report: ConversionReport | None = None,
) -> Iterator[Record]:
    """Convert a stream of mixed records to ``target_kind`` (used by ``prefkit data convert``).

    Records already of the target kind pass through unchanged (counted as used). The others:

    ============  ============  ==========================================================
    from          to            rule
    ============  ============  ==========================================================
    ranking       comparison    :func:`ranking_to_pairs` (``pairs`` = mode, ``ties``)
    rating        comparison    :func:`ratings_to_pairs` (``attribute``/``weights``,
                                ``min_gap``) -- grouped in memory, yielded at the end
    binary        comparison    :func:`binary_to_pairs` -- grouped in memory, at the end
    comparison    binary        :func:`pairs_to_binary` (``both_bad``)
    comparison    battle        :func:`comparisons_to_battles` (model name keys)
    ============  ============  ==========================================================

    Every other record is dropped with reason ``f"no conversion from {kind} to {target}"``
    (pairs are never turned into rankings or ratings, battles carry no texts...). Streaming
    conversions and pass-through records are yielded in input order; grouped conversions
    follow once the input is exhausted. The report's ``inputs == used + dropped`` invariant
    holds for the whole run.
    """
    if target_kind not in TARGETS:
        raise ValueError(f"unknown target kind {target_kind!r}; expected one of {TARGETS}")
    report = report if report is not None else ConversionReport()
    account = _Account(report)
    streaming: dict[str, Callable[[list[Record]], Iterator[Record]]] = {
        "ranking": lambda rs: ranking_to_pairs(rs, pairs, ties=ties, report=report),
        "comparison": (
            (lambda rs: pairs_to_binary(rs, both_bad=both_bad, report=report))
            if target_kind == "binary"
            else (lambda rs: comparisons_to_battles(rs, model_a_key, model_b_key, report=report))
        ),
    }
    buffered: dict[str, list[Record]] = {"rating": [], "binary": []}
    for record in records:
        kind = record.kind
        if kind == target_kind:
            account.take(record)
            account.used(1)
            yield record
        elif (kind, target_kind) in _STREAMING:
            yield from streaming[kind]([record])
        elif (kind, target_kind) in _GROUPING:
            buffered[kind].append(record)
        else:
            report.drop(no_conversion(kind, target_kind), account.take(record))
    if buffered["rating"]:
        yield from ratings_to_pairs(buffered["rating"], attribute, weights, min_gap, report=report)
    if buffered["binary"]:
        yield from binary_to_pairs(buffered["binary"], report=report)


__all__ = [
    "CONVERSIONS",
    "TARGETS",
    "ConversionReport",
    "binary_to_pairs",
    "canonical",
    "collect",
    "comparisons_to_battles",
    "no_conversion",
    "pairs_to_binary",
    "prompt_hash",
    "ranking_to_pairs",
    "rating_score",
    "ratings_to_pairs",
    "to_kind",
]
