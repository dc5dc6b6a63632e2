"""On-disk formats: how one row (a JSON object, a Parquet row, a dataset example) maps to a
record and back.

Each :class:`Format` has a ``decode(row) -> record`` that checks every field (raising
:class:`~prefkit.data.errors.FieldError` naming the field and what was expected) and an
``encode(record) -> row`` that raises :class:`~prefkit.data.errors.Unrepresentable` when the
format cannot hold the record (a tie in chosen/rejected columns, a ranking in a pairwise
format...). Columns a format does not know are kept in ``record.metadata`` and written back as
columns, so every format round-trips losslessly.

Formats (``prefkit data convert --to NAME``):

- ``prefkit``: native ``{"kind": ..., every field}``; holds every record kind losslessly;
- ``trl-preference``: TRL pairs with an explicit prompt: ``prompt, chosen, rejected`` (text or
  message lists);
- ``trl-preference-implicit``: TRL pairs with the prompt inside ``chosen`` / ``rejected``;
- ``trl-unpaired``: TRL/KTO unpaired feedback: ``prompt, completion, label`` (bool);
- ``ranking``: K-wise ``prompt, responses, ranking`` (best index first, ties nested);
- ``rating``: ``prompt, response, ratings {name: score}, scale``;
- ``helpsteer``: ``prompt, response, helpfulness, correctness, coherence, complexity,
  verbosity`` (0-4);
- ``alpaca-eval``: AlpacaFarm/AlpacaEval annotations ``instruction, output_1, output_2,
  preference`` (1, 2, 1.5 = draw, or a weighted value in [1, 2]);
- ``arena``: Chatbot-Arena battles ``model_a, model_b, winner, question_id, judge, tstamp,
  conv_metadata``;
- ``rewardbench``: RewardBench trios ``prompt, chosen, rejected, subset``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import (
    EMPTY_FIELD,
    IDENTICAL_RESPONSES,
    MISSING_FIELD,
    OUT_OF_SCALE,
    RANKING_OUT_OF_RANGE,
    RANKING_REPEATED,
    UNKNOWN_FORMAT,
    UNKNOWN_OUTCOME,
    WRONG_TYPE,
    FieldError,
    Unrepresentable,
)
from .records import (
    RECORD_TYPES,
    Annotator,
    AnnotatorKind,
    Battle,
    Binary,
    Comparison,
    Critique,
    Outcome,
    Ranking,
    Rating,
    Record,
    Text,
    to_dict,
)

_MISSING = object()
TEXT_EXPECTED = "non-empty text or a list of {role, content} messages"

# ---------------------------------------------------------------------------------------------
# Field readers: each returns a checked value or raises FieldError
# ---------------------------------------------------------------------------------------------


def _conversation(value: list, name: str) -> list:
    if not value:
        raise FieldError(name, TEXT_EXPECTED, value, EMPTY_FIELD)
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise FieldError(f"{name}[{i}]", "a {role, content} message object", message)
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise FieldError(f"{name}[{i}].role", "a non-empty role string", role,
                             MISSING_FIELD if role is None else WRONG_TYPE)
        if not isinstance(content, str):
            raise FieldError(f"{name}[{i}].content", "a string", content,
                             MISSING_FIELD if content is None else WRONG_TYPE)
    return value


def need_text(row: dict, name: str, allow_empty: bool = False) -> Text:
    """A required prompt/response field: non-empty string or a conversation."""
    value = row.get(name, _MISSING)
    if type(value) is str:
        if not allow_empty and not value.strip():
            raise FieldError(name, TEXT_EXPECTED, value, EMPTY_FIELD)
        return value
    if value is _MISSING or value is None:
        raise FieldError(name, TEXT_EXPECTED, code=MISSING_FIELD)
    if isinstance(value, list):
        return _conversation(value, name)
    raise FieldError(name, TEXT_EXPECTED, value)


def need_str(row: dict, name: str) -> str:
    value = row.get(name, _MISSING)
    if type(value) is str and value.strip():
        return value
    if value is _MISSING or value is None:
        raise FieldError(name, "a non-empty string", code=MISSING_FIELD)
    if isinstance(value, str):
        raise FieldError(name, "a non-empty string", value, EMPTY_FIELD)
    raise FieldError(name, "a non-empty string", value)


def opt_str(row: dict, name: str) -> str | None:
    value = row.get(name)
    if value is None or isinstance(value, str):
        return value
    raise FieldError(name, "a string", value)


def opt_number(row: dict, name: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise FieldError(name, "a number", value)
    return value


def opt_dict(row: dict, name: str) -> dict:
    value = row.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(name, "an object", value)
    return value


def need_distinct(a: Any, b: Any, name_b: str, name_a: str) -> None:
    if a == b:
        raise FieldError(name_b, f"a response different from '{name_a}'", b, IDENTICAL_RESPONSES)


def parse_annotator(value: Any, name: str = "annotator") -> Annotator | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Annotator(value)
    if isinstance(value, dict):
        aid = value.get("id")
        if not isinstance(aid, str) or not aid:
            raise FieldError(f"{name}.id", "a non-empty annotator id string", aid,
                             MISSING_FIELD if aid is None else WRONG_TYPE)
        kind = value.get("kind", "human")
        try:
            return Annotator(aid, AnnotatorKind(kind))
        except ValueError:
            kinds = ", ".join(k.value for k in AnnotatorKind)
            raise FieldError(f"{name}.kind", f"one of {kinds}", kind) from None
    raise FieldError(name, "an annotator id string or {id, kind}", value)


def parse_critique(value: Any, name: str) -> Critique:
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(name, "non-empty critique text", value, EMPTY_FIELD)
        return Critique(text=value)
    if not isinstance(value, dict):
        raise FieldError(name, "critique text or {text, aspect?, annotator?}", value)
    return Critique(
        text=need_str(value, "text") if "text" in value else _raise_missing(f"{name}.text"),
        target_id=opt_str(value, "target_id"),
        aspect=opt_str(value, "aspect"),
        annotator=parse_annotator(value.get("annotator"), f"{name}.annotator"),
        metadata=opt_dict(value, "metadata"),
        id=opt_id(value),
    )


def _raise_missing(name: str):
    raise FieldError(name, "a value", code=MISSING_FIELD)


def parse_critiques(row: dict) -> list[Critique]:
    value = row.get("critiques")
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError("critiques", "a list of critiques", value)
    return [parse_critique(v, f"critiques[{i}]") for i, v in enumerate(value)]


def opt_id(row: dict) -> str | None:
    value = row.get("id")
    if value is None:
        return None
    if isinstance(value, bool):
        raise FieldError("id", "a string or integer id", value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise FieldError("id", "a non-empty string or integer id", value)


_OUTCOMES = {o.value: o for o in Outcome}


def parse_outcome(value: Any, name: str = "outcome") -> Outcome:
    outcome = _OUTCOMES.get(value) if isinstance(value, str) else None
    if outcome is None:
        raise FieldError(name, "one of 'a', 'b', 'tie', 'both_bad'", value,
                         MISSING_FIELD if value is None else UNKNOWN_OUTCOME)
    return outcome


def parse_tiers(value: Any, n_responses: int, name: str = "ranking") -> list[list[int]]:
    """Ranking ``[best, ..., worst]`` with ties as nested lists -> tiers of indices."""
    if value is None:
        raise FieldError(name, "a list of response indices, best first", code=MISSING_FIELD)
    if not isinstance(value, list) or not value:
        raise FieldError(name, "a non-empty list of response indices, best first", value,
                         EMPTY_FIELD if value == [] else WRONG_TYPE)
    tiers: list[list[int]] = []
    seen: set[int] = set()
    for pos, item in enumerate(value):
        tier = item if isinstance(item, list) else [item]
        if not tier:
            raise FieldError(f"{name}[{pos}]", "an index or a non-empty list of tied indices", item)
        for index in tier:
            if isinstance(index, bool) or not isinstance(index, int):
                raise FieldError(f"{name}[{pos}]", "an integer response index", index)
            if not 0 <= index < n_responses:
                raise FieldError(f"{name}[{pos}]", f"an index in 0..{n_responses - 1}", index,
                                 RANKING_OUT_OF_RANGE)
            if index in seen:
                raise FieldError(f"{name}[{pos}]", "each index at most once", index,
                                 RANKING_REPEATED)
            seen.add(index)
        tiers.append(list(tier))
    if len(seen) < 2:
        raise FieldError(name, "at least 2 ranked responses", value, EMPTY_FIELD)
    return tiers


def encode_tiers(tiers: list[list[int]]) -> list:
    return [tier[0] if len(tier) == 1 else list(tier) for tier in tiers]


def parse_scores(value: Any, name: str = "ratings") -> dict[str, float]:
    if value is None:
        raise FieldError(name, "an object of attribute scores", code=MISSING_FIELD)
    if not isinstance(value, dict) or not value:
        raise FieldError(name, "a non-empty object {attribute: score}", value,
                         EMPTY_FIELD if value == {} else WRONG_TYPE)
    for key, score in value.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise FieldError(f"{name}.{key}", "a number", score)
    return value


def parse_scales(value: Any, attributes: Iterable[str], name: str = "scale"):
    if value is None:
        return {}
    if isinstance(value, list):
        value = {a: value for a in attributes}
    if not isinstance(value, dict):
        raise FieldError(name, "[low, high] or {attribute: [low, high]}", value)
    scales = {}
    for key, pair in value.items():
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
                or pair[0] >= pair[1]):
            raise FieldError(f"{name}.{key}", "[low, high] with low < high", pair)
        scales[key] = (pair[0], pair[1])
    return scales


def check_in_scale(scores: dict[str, float], scales: dict[str, tuple[float, float]]) -> None:
    for key, score in scores.items():
        if key in scales:
            low, high = scales[key]
            if not low <= score <= high:
                raise FieldError(f"ratings.{key}", f"a score in [{low}, {high}]", score,
                                 OUT_OF_SCALE)


def encode_scales(scales: dict[str, tuple[float, float]], scores: dict[str, float]):
    if not scales:
        return None
    values = {tuple(v) for v in scales.values()}
    if len(values) == 1 and set(scales) == set(scores):
        return list(next(iter(values)))
    return {k: list(v) for k, v in scales.items()}


# ---------------------------------------------------------------------------------------------
# Common optional columns and extra columns (kept in metadata)
# ---------------------------------------------------------------------------------------------

COMMON = ("id", "annotator", "critiques", "metadata")


def split_extras(row: dict, known: frozenset[str]) -> dict[str, Any]:
    """Columns the format does not know -> metadata (an explicit ``metadata`` object merges in)."""
    extras = {k: v for k, v in row.items() if k not in known}
    nested = row.get("metadata")
    if nested is not None:
        if not isinstance(nested, dict):
            raise FieldError("metadata", "an object", nested)
        extras = {**nested, **extras}
    return extras


def put_extras(out: dict[str, Any], record: Record, known: frozenset[str]) -> dict[str, Any]:
    """Write metadata as top-level columns; keys that collide with the format's own columns go
    into a ``metadata`` object instead, so nothing is lost."""
    clashing = {}
    for key, value in record.metadata.items():
        if key in known or key in out:
            clashing[key] = value
        else:
            out[key] = value
    if clashing:
        out["metadata"] = clashing
    return out


def put_common(out: dict[str, Any], record: Record, annotator_as: str = "dict") -> None:
    if record.id is not None:
        out["id"] = record.id
    if record.annotator is not None:
        out["annotator"] = (record.annotator.id if annotator_as == "id"
                            else record.annotator.to_dict())
    critiques = getattr(record, "critiques", None)
    if critiques:
        out["critiques"] = [_critique_dict(c) for c in critiques]


def _critique_dict(critique: Critique) -> dict[str, Any]:
    out = to_dict(critique)
    del out["kind"]
    return out


# ---------------------------------------------------------------------------------------------
# Format definitions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    kinds: tuple[str, ...]
    """Record kinds this format holds (what ``decode`` returns, what ``encode`` accepts)."""
    decode: Callable[[dict], Record]
    encode: Callable[[Record], dict]
    description: str


FORMATS: dict[str, Format] = {}


def register_format(name: str, kinds: tuple[str, ...], description: str):
    def wrap(pair):
        decode, encode = pair
        FORMATS[name] = Format(name, kinds, decode, encode, description)
        return pair

    return wrap


def _require_kind(record: Record, fmt: str, *kinds: str) -> None:
    if record.kind not in kinds:
        raise Unrepresentable(
            f"{record.kind} record",
            f"format {fmt} holds {' / '.join(kinds)} records; convert first",
        )


# --- prefkit (native) -------------------------------------------------------------------------


def _decode_comparison_native(row: dict) -> Comparison:
    a, b = need_text(row, "response_a"), need_text(row, "response_b")
    need_distinct(a, b, "response_b", "response_a")
    return Comparison(
        prompt=need_text(row, "prompt"), response_a=a, response_b=b,
        outcome=parse_outcome(row.get("outcome")),
        strength=opt_number(row, "strength"), soft_label=_soft_label(row),
        rationale=opt_str(row, "rationale"),
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=opt_dict(row, "metadata"), id=opt_id(row),
    )


def _soft_label(row: dict) -> float | None:
    value = opt_number(row, "soft_label")
    if value is not None and not 0.0 <= value <= 1.0:
        raise FieldError("soft_label", "a probability in [0, 1]", value)
    return value


def _decode_ranking_native(row: dict) -> Ranking:
    responses = row.get("responses")
    if responses is None:
        raise FieldError("responses", "a list of >= 2 responses", code=MISSING_FIELD)
    if not isinstance(responses, list) or len(responses) < 2:
        raise FieldError("responses", "a list of >= 2 responses", responses,
                         EMPTY_FIELD if isinstance(responses, list) else WRONG_TYPE)
    checked = []
    for i, response in enumerate(responses):
        try:
            checked.append(need_text({"response": response}, "response"))
        except FieldError as err:
            raise FieldError(f"responses[{i}]", err.expected, err.got, err.code) from None
    key = "tiers" if "tiers" in row else "ranking"
    return Ranking(
        prompt=need_text(row, "prompt"), responses=checked,
        tiers=parse_tiers(row.get(key), len(checked), key),
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=opt_dict(row, "metadata"), id=opt_id(row),
    )


def _decode_rating_native(row: dict) -> Rating:
    scores = parse_scores(row.get("scores"), "scores")
    scales = parse_scales(row.get("scales"), scores, "scales")
    check_in_scale(scores, scales)
    return Rating(
        prompt=need_text(row, "prompt"), response=need_text(row, "response"),
        scores=scores, scales=scales,
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=opt_dict(row, "metadata"), id=opt_id(row),
    )


def _need_bool(row: dict, name: str) -> bool:
    value = row.get(name)
    if isinstance(value, bool):
        return value
    if value is None:
        raise FieldError(name, "true or false", code=MISSING_FIELD)
    raise FieldError(name, "true or false", value)


def _decode_binary_native(row: dict) -> Binary:
    return Binary(
        prompt=need_text(row, "prompt"), response=need_text(row, "response"),
        desirable=_need_bool(row, "desirable"),
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=opt_dict(row, "metadata"), id=opt_id(row),
    )


def _decode_battle_native(row: dict) -> Battle:
    model_a, model_b = need_str(row, "model_a"), need_str(row, "model_b")
    need_distinct(model_a, model_b, "model_b", "model_a")
    return Battle(
        model_a=model_a, model_b=model_b, outcome=parse_outcome(row.get("outcome")),
        prompt_id=opt_str(row, "prompt_id"), style=opt_dict(row, "style"),
        timestamp=opt_number(row, "timestamp"),
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=opt_dict(row, "metadata"), id=opt_id(row),
    )


def _decode_critique_native(row: dict) -> Critique:
    critique = parse_critique({k: v for k, v in row.items() if k != "kind"}, "critique")
    return critique


_NATIVE_DECODERS: dict[str, Callable[[dict], Record]] = {
    "comparison": _decode_comparison_native,
    "ranking": _decode_ranking_native,
    "rating": _decode_rating_native,
    "binary": _decode_binary_native,
    "battle": _decode_battle_native,
    "critique": _decode_critique_native,
}


def decode_native(row: dict) -> Record:
    kind = row.get("kind")
    decoder = _NATIVE_DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise FieldError("kind", f"one of {', '.join(RECORD_TYPES)}", kind,
                         MISSING_FIELD if kind is None else WRONG_TYPE)
    return decoder(row)


def encode_native(record: Record) -> dict:
    return to_dict(record)


register_format("prefkit", tuple(RECORD_TYPES),
                "native prefkit records, every kind and field")((decode_native, encode_native))


# --- TRL preference (explicit and implicit prompt) ---------------------------------------------

_TRL_PAIR = frozenset({"prompt", "chosen", "rejected", "strength", "soft_label", "rationale",
                       *COMMON})


def _comparison_from_pair(row: dict, prompt: Text, chosen: Text, rejected: Text,
                          known: frozenset[str]) -> Comparison:
    return Comparison(
        prompt=prompt, response_a=chosen, response_b=rejected, outcome=Outcome.A,
        strength=opt_number(row, "strength"), soft_label=_soft_label(row),
        rationale=opt_str(row, "rationale"),
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=split_extras(row, known), id=opt_id(row),
    )


def decode_trl_pair(row: dict) -> Comparison:
    if len(row) == 3:  # the common case, checked inline: three non-blank, distinct strings
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        if (type(prompt) is str and type(chosen) is str and type(rejected) is str
                and chosen != rejected and prompt and chosen and rejected
                and not prompt.isspace() and not chosen.isspace() and not rejected.isspace()):
            return Comparison(prompt=prompt, response_a=chosen, response_b=rejected,
                              outcome=_A_WINS)
    # everything else, with the precise error for whatever is wrong
    chosen, rejected = need_text(row, "chosen"), need_text(row, "rejected")
    need_distinct(chosen, rejected, "rejected", "chosen")
    prompt = need_text(row, "prompt")
    return _comparison_from_pair(row, prompt, chosen, rejected, _TRL_PAIR)


_A_WINS = Outcome.A


def _pair_columns(record: Record, fmt: str) -> tuple[Text, Text]:
    _require_kind(record, fmt, "comparison")
    if record.outcome is Outcome.A:
        return record.response_a, record.response_b
    if record.outcome is Outcome.B:
        return record.response_b, record.response_a
    raise Unrepresentable(record.outcome.value, f"format {fmt} has no way to store a tie")


def _put_pair_options(out: dict, record: Comparison) -> None:
    for name in ("strength", "rationale"):
        value = getattr(record, name)
        if value is not None:
            out[name] = value
    if record.soft_label is not None:
        # soft_label is P(chosen preferred) in these formats
        out["soft_label"] = (record.soft_label if record.outcome is Outcome.A
                             else 1.0 - record.soft_label)


def encode_trl_pair(record: Record) -> dict:
    chosen, rejected = _pair_columns(record, "trl-preference")
    out = {"prompt": record.prompt, "chosen": chosen, "rejected": rejected}
    _put_pair_options(out, record)
    put_common(out, record)
    return put_extras(out, record, _TRL_PAIR)


register_format("trl-preference", ("comparison",),
                "TRL preference pairs: prompt, chosen, rejected")(
    (decode_trl_pair, encode_trl_pair))


def split_shared_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Longest shared prefix of two full texts (characters, or whole messages for
    conversations) -> (prompt, chosen completion, rejected completion). As TRL does, a space
    right before the split point stays with the completions."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        limit = min(len(chosen), len(rejected))
        while n < limit and chosen[n] == rejected[n]:
            n += 1
        if n > 0 and chosen[n - 1] == " ":
            n -= 1
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        limit = min(len(chosen), len(rejected))
        while n < limit and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    raise FieldError("rejected", "the same form (text or messages) as 'chosen'", rejected)


def decode_trl_implicit(row: dict) -> Comparison:
    full_chosen, full_rejected = need_text(row, "chosen"), need_text(row, "rejected")
    need_distinct(full_chosen, full_rejected, "rejected", "chosen")
    prompt, chosen, rejected = split_shared_prompt(full_chosen, full_rejected)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not value or (isinstance(value, str) and not value.strip()):
            raise FieldError(name, "a completion after the prompt shared with the other response",
                             row[name], EMPTY_FIELD)
    return _comparison_from_pair(row, prompt, chosen, rejected, _TRL_PAIR)


def encode_trl_implicit(record: Record) -> dict:
    chosen, rejected = _pair_columns(record, "trl-preference-implicit")
    prompt = record.prompt
    if type(prompt) is not type(chosen) or type(prompt) is not type(rejected):
        raise Unrepresentable("mixed text and messages",
                              "prompt and responses must all be text or all be messages")
    out = {"chosen": prompt + chosen, "rejected": prompt + rejected}
    _put_pair_options(out, record)
    put_common(out, record)
    return put_extras(out, record, _TRL_PAIR)


register_format("trl-preference-implicit", ("comparison",),
                "TRL preference pairs with the prompt inside chosen/rejected")(
    (decode_trl_implicit, encode_trl_implicit))


# --- RewardBench ------------------------------------------------------------------------------

_REWARDBENCH = frozenset({*_TRL_PAIR, "subset"})


def decode_rewardbench(row: dict) -> Comparison:
    record = decode_trl_pair(row)
    record.metadata["subset"] = need_str(row, "subset")
    return record


def encode_rewardbench(record: Record) -> dict:
    if record.kind == "comparison" and "subset" not in record.metadata:
        raise Unrepresentable("no subset", "rewardbench rows need metadata['subset']")
    out = encode_trl_pair(record)
    return out


register_format("rewardbench", ("comparison",),
                "RewardBench trios: prompt, chosen, rejected, subset")(
    (decode_rewardbench, encode_rewardbench))


# --- TRL unpaired (KTO) -----------------------------------------------------------------------

_UNPAIRED = frozenset({"prompt", "completion", "label", *COMMON})


def decode_unpaired(row: dict) -> Binary:
    return Binary(
        prompt=need_text(row, "prompt"), response=need_text(row, "completion"),
        desirable=_need_bool(row, "label"),
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=split_extras(row, _UNPAIRED), id=opt_id(row),
    )


def encode_unpaired(record: Record) -> dict:
    _require_kind(record, "trl-unpaired", "binary")
    out = {"prompt": record.prompt, "completion": record.response, "label": record.desirable}
    put_common(out, record)
    return put_extras(out, record, _UNPAIRED)


register_format("trl-unpaired", ("binary",),
                "TRL/KTO unpaired feedback: prompt, completion, label")(
    (decode_unpaired, encode_unpaired))


# --- K-wise ranking ---------------------------------------------------------------------------

_RANKING = frozenset({"prompt", "responses", "ranking", *COMMON})


def decode_ranking(row: dict) -> Ranking:
    record = _decode_ranking_native({k: v for k, v in row.items() if k != "metadata"})
    record.metadata = split_extras(row, _RANKING)
    return record


def encode_ranking(record: Record) -> dict:
    _require_kind(record, "ranking", "ranking")
    out = {"prompt": record.prompt, "responses": record.responses,
           "ranking": encode_tiers(record.tiers)}
    put_common(out, record)
    return put_extras(out, record, _RANKING)


register_format("ranking", ("ranking",),
                "K-wise rankings: prompt, responses, ranking (best first, ties nested)")(
    (decode_ranking, encode_ranking))


# --- attribute ratings ------------------------------------------------------------------------

_RATING = frozenset({"prompt", "response", "ratings", "scale", *COMMON})


def decode_rating(row: dict) -> Rating:
    scores = parse_scores(row.get("ratings"))
    scales = parse_scales(row.get("scale"), scores)
    check_in_scale(scores, scales)
    return Rating(
        prompt=need_text(row, "prompt"), response=need_text(row, "response"),
        scores=scores, scales=scales,
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=split_extras(row, _RATING), id=opt_id(row),
    )


def encode_rating(record: Record) -> dict:
    _require_kind(record, "rating", "rating")
    out: dict[str, Any] = {"prompt": record.prompt, "response": record.response,
                           "ratings": record.scores}
    scale = encode_scales(record.scales, record.scores)
    if scale is not None:
        out["scale"] = scale
    put_common(out, record)
    return put_extras(out, record, _RATING)


register_format("rating", ("rating",),
                "attribute ratings: prompt, response, ratings {name: score}, scale")(
    (decode_rating, encode_rating))

HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
_HELPSTEER = frozenset({"prompt", "response", *HELPSTEER_ATTRIBUTES, *COMMON})


def decode_helpsteer(row: dict) -> Rating:
    scores = {}
    for name in HELPSTEER_ATTRIBUTES:
        value = row.get(name)
        if value is None:
            raise FieldError(name, "a score 0-4", code=MISSING_FIELD)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(name, "a score 0-4", value)
        scores[name] = value
    scales = {name: (0, 4) for name in HELPSTEER_ATTRIBUTES}
    check_in_scale(scores, scales)
    return Rating(
        prompt=need_text(row, "prompt"), response=need_text(row, "response"),
        scores=scores, scales=scales,
        annotator=parse_annotator(row.get("annotator")), critiques=parse_critiques(row),
        metadata=split_extras(row, _HELPSTEER), id=opt_id(row),
    )


def encode_helpsteer(record: Record) -> dict:
    _require_kind(record, "helpsteer", "rating")
    missing = [a for a in HELPSTEER_ATTRIBUTES if a not in record.scores]
    other = [a for a in record.scores if a not in HELPSTEER_ATTRIBUTES]
    if missing or other:
        raise Unrepresentable("not the HelpSteer attributes",
                              f"missing {missing}, unknown {other}")
    out: dict[str, Any] = {"prompt": record.prompt, "response": record.response}
    out.update({a: record.scores[a] for a in HELPSTEER_ATTRIBUTES})
    put_common(out, record)
    return put_extras(out, record, _HELPSTEER)


register_format("helpsteer", ("rating",),
                "HelpSteer: prompt, response, helpfulness, correctness, coherence, complexity, "
                "verbosity (0-4)")((decode_helpsteer, encode_helpsteer))


# --- AlpacaFarm / AlpacaEval annotations -------------------------------------------------------

_ALPACA = frozenset({"instruction", "output_1", "output_2", "preference", "annotator",
                     "both_bad", "rationale", "id", "critiques", "metadata"})
ALPACA_PREFERENCE = "1 (output_1 wins), 2 (output_2 wins), 1.5 (draw) or a weighted value in [1, 2]"


def decode_alpaca(row: dict) -> Comparison:
    a, b = need_text(row, "output_1"), need_text(row, "output_2")
    need_distinct(a, b, "output_2", "output_1")
    preference = row.get("preference")
    if preference is None:
        raise FieldError("preference", ALPACA_PREFERENCE, code=MISSING_FIELD)
    if (isinstance(preference, bool) or not isinstance(preference, (int, float))
            or math.isnan(preference) or not (preference == 0 or 1 <= preference <= 2)):
        raise FieldError("preference", ALPACA_PREFERENCE, preference, UNKNOWN_OUTCOME)
    soft = None
    if preference in (0, 1.5):  # 0 is AlpacaFarm's legacy draw
        outcome = Outcome.TIE
    elif preference == 1:
        outcome = Outcome.A
    elif preference == 2:
        outcome = Outcome.B
    else:
        outcome = Outcome.A if preference < 1.5 else Outcome.B
        soft = 2 - preference  # exact for preference in [1, 2]
    if row.get("both_bad") is True:
        if outcome is not Outcome.TIE:
            raise FieldError("both_bad", "true only for a draw (preference 1.5)", True)
        outcome = Outcome.BOTH_BAD
    annotator = row.get("annotator")
    if annotator is not None and not isinstance(annotator, str):
        raise FieldError("annotator", "an annotator name", annotator)
    return Comparison(
        prompt=need_text(row, "instruction"), response_a=a, response_b=b, outcome=outcome,
        soft_label=soft, rationale=opt_str(row, "rationale"),
        annotator=Annotator(annotator, AnnotatorKind.JUDGE) if annotator else None,
        critiques=parse_critiques(row), metadata=split_extras(row, _ALPACA), id=opt_id(row),
    )


def encode_alpaca(record: Record) -> dict:
    _require_kind(record, "alpaca-eval", "comparison")
    if not isinstance(record.prompt, str):
        raise Unrepresentable("conversational prompt", "alpaca-eval instructions are text")
    if record.soft_label is not None:
        preference: float = 2 - record.soft_label
    else:
        preference = {Outcome.A: 1, Outcome.B: 2}.get(record.outcome, 1.5)
    out: dict[str, Any] = {"instruction": record.prompt, "output_1": record.response_a,
                           "output_2": record.response_b, "preference": preference}
    if record.outcome is Outcome.BOTH_BAD:
        out["both_bad"] = True
    if record.rationale is not None:
        out["rationale"] = record.rationale
    put_common(out, record, annotator_as="id")
    return put_extras(out, record, _ALPACA)


register_format("alpaca-eval", ("comparison",),
                "AlpacaFarm/AlpacaEval annotations: instruction, output_1, output_2, preference")(
    (decode_alpaca, encode_alpaca))


# --- Chatbot Arena battles --------------------------------------------------------------------

_ARENA = frozenset({"model_a", "model_b", "winner", "question_id", "judge", "tstamp",
                    "conv_metadata", "id", "critiques", "metadata"})
ARENA_WINNERS = {"model_a": Outcome.A, "model_b": Outcome.B, "tie": Outcome.TIE,
                 "tie (bothbad)": Outcome.BOTH_BAD}
_WINNER_OF = {v: k for k, v in ARENA_WINNERS.items()}


def decode_arena(row: dict) -> Battle:
    model_a, model_b = need_str(row, "model_a"), need_str(row, "model_b")
    need_distinct(model_a, model_b, "model_b", "model_a")
    winner = row.get("winner")
    outcome = ARENA_WINNERS.get(winner) if isinstance(winner, str) else None
    if outcome is None:
        raise FieldError("winner", "one of 'model_a', 'model_b', 'tie', 'tie (bothbad)'", winner,
                         MISSING_FIELD if winner is None else UNKNOWN_OUTCOME)
    judge = row.get("judge")
    if judge is not None and not isinstance(judge, str):
        raise FieldError("judge", "a voter/judge id string", judge)
    question_id = row.get("question_id")
    if question_id is not None and not isinstance(question_id, str):
        raise FieldError("question_id", "a string", question_id)
    return Battle(
        model_a=model_a, model_b=model_b, outcome=outcome, prompt_id=question_id,
        style=opt_dict(row, "conv_metadata"), timestamp=opt_number(row, "tstamp"),
        annotator=Annotator(judge) if judge else None, critiques=parse_critiques(row),
        metadata=split_extras(row, _ARENA), id=opt_id(row),
    )


def encode_arena(record: Record) -> dict:
    _require_kind(record, "arena", "battle")
    out: dict[str, Any] = {"model_a": record.model_a, "model_b": record.model_b,
                           "winner": _WINNER_OF[record.outcome]}
    if record.prompt_id is not None:
        out["question_id"] = record.prompt_id
    if record.annotator is not None:
        out["judge"] = record.annotator.id
    if record.timestamp is not None:
        out["tstamp"] = record.timestamp
    if record.style:
        out["conv_metadata"] = record.style
    if record.id is not None:
        out["id"] = record.id
    if record.critiques:
        out["critiques"] = [_critique_dict(c) for c in record.critiques]
    return put_extras(out, record, _ARENA)


register_format("arena", ("battle",),
                "Chatbot-Arena battles: model_a, model_b, winner, question_id, judge, tstamp")(
    (decode_arena, encode_arena))


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

_DETECTION: tuple[tuple[str, frozenset[str]], ...] = (
    ("prefkit", frozenset({"kind"})),
    ("arena", frozenset({"model_a", "model_b", "winner"})),
    ("alpaca-eval", frozenset({"instruction", "output_1", "output_2"})),
    ("ranking", frozenset({"prompt", "responses", "ranking"})),
    ("rewardbench", frozenset({"prompt", "chosen", "rejected", "subset"})),
    ("trl-preference", frozenset({"prompt", "chosen", "rejected"})),
    ("trl-preference-implicit", frozenset({"chosen", "rejected"})),
    ("trl-unpaired", frozenset({"completion", "label"})),
    ("rating", frozenset({"response", "ratings"})),
    ("helpsteer", frozenset({"response", "helpfulness"})),
)


def detect_format(columns: Iterable[str]) -> Format:
    """The format whose required columns are present (first match in a fixed priority)."""
    keys = set(columns)
    for name, required in _DETECTION:
        if required <= keys:
            return FORMATS[name]
    raise FieldError("(columns)", "the columns of a known format (" + ", ".join(FORMATS)
                     + "); pass --format to choose one", sorted(keys), UNKNOWN_FORMAT)


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMATS)}") from None
