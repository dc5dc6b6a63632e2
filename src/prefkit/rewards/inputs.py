"""What ``prefkit rm score`` / ``rm eval`` read: prompt groups from any source prefkit reads.

Rows come through the project's readers (:func:`prefkit.data.io.iter_decoded`: JSONL, JSON
arrays, Parquet, ``datasets`` folders, ``FOLDER::split``) and are checked field by field, so a
bad row raises :class:`~prefkit.data.errors.RecordError` naming the file, the row and the field.
The shape is chosen from the first row's columns and every row must have it:

- ``pairs`` -- any comparison format (``prompt, chosen, rejected`` TRL / RewardBench with
  ``subset``, TRL implicit-prompt pairs, AlpacaEval, prefkit's own comparisons): responses
  ``[response_a, response_b]`` (``[chosen, rejected]`` in the TRL formats) and ``best`` the index
  of the preferred one (None for a tie);
- ``sets`` -- ``prompt, responses`` (+ ``ranking``, best first, parsed as the ``ranking``
  format; ``best`` is the index of the first-ranked response);
- ``single`` -- ``prompt`` and ``response`` or ``completion`` (``rm score`` only).

Prompts and responses are text or lists of ``{role, content}`` messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.errors import MISSING_FIELD, UNKNOWN_FORMAT, WRONG_TYPE, FieldError
from ..data.formats import Format, detect_format, need_text
from ..data.records import Comparison, Outcome, Ranking

__all__ = ["SHAPES", "ScoreInput", "read_score_input"]

SHAPES = ("pairs", "sets", "single")
_PAIR_FORMATS = ("prefkit", "alpaca-eval", "rewardbench", "trl-preference",
                 "trl-preference-implicit")


@dataclass
class _Group:
    prompt: Any
    responses: list[Any]
    best: int | None = None
    subset: str | None = None
    gold: bool | None = None


@dataclass
class ScoreInput:
    """The groups of a file: ``rows`` (the rows as read, for ``rm score``'s output), their
    ``lines`` (1-based row numbers), ``prompts``, ``responses``, ``best`` (the index of the
    preferred response of a pair, None for a tie; the first-ranked response of a ranked set),
    ``subsets`` (pairs with a ``subset``), ``gold`` (with ``gold_column``); ``chosen_rejected``:
    the pairs come from ``chosen`` / ``rejected`` columns."""

    source: str
    shape: str
    rows: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    prompts: list[Any] = field(default_factory=list)
    responses: list[list[Any]] = field(default_factory=list)
    best: list[int | None] | None = None
    subsets: list[str] | None = None
    gold: list[bool] | None = None
    chosen_rejected: bool = False

    def select(self, indices: list[int]) -> ScoreInput:
        """The groups at ``indices`` (e.g. the pairs that are not ties)."""
        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in indices]

        return ScoreInput(self.source, self.shape, rows=pick(self.rows), lines=pick(self.lines),
                          prompts=pick(self.prompts), responses=pick(self.responses),
                          best=pick(self.best), subsets=pick(self.subsets), gold=pick(self.gold),
                          chosen_rejected=self.chosen_rejected)


def _pair(record: Any) -> _Group:
    if not isinstance(record, Comparison):
        raise FieldError("kind", "a comparison (the file's first record is one)",
                         getattr(record, "kind", None))
    best = {Outcome.A: 0, Outcome.B: 1}.get(record.outcome)
    subset = record.metadata.get("subset")
    return _Group(record.prompt, [record.response_a, record.response_b], best=best,
                  subset=None if subset is None else str(subset))


def _ranked_set(record: Any) -> _Group:
    if not isinstance(record, Ranking):
        raise FieldError("kind", "a ranking (the file's first record is one)",
                         getattr(record, "kind", None))
    return _Group(record.prompt, list(record.responses), best=record.tiers[0][0])


def _unranked_set(row: dict) -> _Group:
    responses = row.get("responses")
    if responses is None:
        raise FieldError("responses", "a list of responses", code=MISSING_FIELD)
    if not isinstance(responses, list) or not responses:
        raise FieldError("responses", "a non-empty list of responses", responses)
    checked = []
    for i, response in enumerate(responses):
        try:
            checked.append(need_text({"r": response}, "r"))
        except FieldError as err:
            raise FieldError(f"responses[{i}]", err.expected, err.got, err.code) from None
    return _Group(need_text(row, "prompt"), checked)


def _single(row: dict) -> _Group:
    name = "response" if "response" in row else "completion"
    return _Group(need_text(row, "prompt"), [need_text(row, name)])


def _decoder(columns: set[str], need_ranking: bool) -> tuple[str, Callable[[dict], _Group]]:
    """(shape, row -> group) for a file whose first row has ``columns``."""
    if "responses" in columns and not columns & {"ranking", "tiers"}:
        if need_ranking:
            raise FieldError("ranking", "a ranking of the responses (best first) to evaluate "
                             "sets", code=MISSING_FIELD)
        return "sets", _unranked_set
    try:
        fmt = detect_format(columns)
    except FieldError:
        fmt = None
    if fmt is not None and fmt.name == "ranking":
        return "sets", lambda row: _ranked_set(fmt.decode(row))
    if fmt is not None and fmt.name in _PAIR_FORMATS and (fmt.name != "prefkit"
                                                           or "response_a" in columns):
        return "pairs", lambda row: _pair(fmt.decode(row))
    if fmt is not None and fmt.name == "prefkit" and "responses" in columns:
        return "sets", lambda row: _ranked_set(fmt.decode(row))
    if "prompt" in columns and ("response" in columns or "completion" in columns):
        return "single", _single
    expected = ("pairs (prompt, chosen, rejected), ranked sets (prompt, responses, ranking)"
                if need_ranking else
                "pairs (prompt, chosen, rejected), sets (prompt, responses[, ranking]) or "
                "single responses (prompt, response)")
    raise FieldError("(columns)", expected, sorted(columns), UNKNOWN_FORMAT)


def _with_gold(decode: Callable[[dict], _Group], gold_column: str | None
               ) -> Callable[[dict], _Group]:
    if gold_column is None:
        return decode

    def wrapped(row: dict) -> _Group:
        group = decode(row)
        value = row.get(gold_column)
        if not isinstance(value, bool):
            raise FieldError(gold_column, "true or false (does the gold annotator prefer the "
                             "chosen response?)", ... if value is None else value,
                             MISSING_FIELD if value is None else WRONG_TYPE)
        group.gold = value
        return group

    return wrapped


def _first_columns(source: str) -> tuple[int, set[str]]:
    """(row number, columns) of the first row."""
    from ..data.io import iter_rows

    for row in iter_rows(source):
        if row.error is not None:
            raise row.error
        return row.line, set(row.data)
    raise ValueError(f"{source}: no rows")


def read_score_input(source: str, *, need_ranking: bool = False,
                     gold_column: str | None = None) -> ScoreInput:
    """Read and check every row of ``source`` (module docstring). ``need_ranking``: sets must
    carry a ``ranking`` and single responses are refused (``rm eval``); ``gold_column``: each
    row's boolean gold preference for the chosen response."""
    from ..data.errors import RecordError
    from ..data.io import iter_decoded, row_kind_of, source_kind

    file = Path(source.split("::", 1)[0])
    if not file.exists():
        raise FileNotFoundError(f"no such file or folder: {file}")
    line, columns = _first_columns(source)
    try:
        shape, decode = _decoder(columns, need_ranking)
    except FieldError as exc:
        raise RecordError.from_field(exc, source, line, row_kind_of(source_kind(source))
                                     ) from None
    if need_ranking and shape == "single":
        raise ValueError(f"{source}: eval needs pairs or ranked sets, got single responses")
    fmt = Format(f"rm-{shape}", ("group",), _with_gold(decode, gold_column), _no_encode,
                 f"rm {shape}")
    out = ScoreInput(source, shape)
    groups = []
    for line, group, _raw, data, error in iter_decoded(source, fmt):
        if error is not None:
            raise error
        out.rows.append(data)
        out.lines.append(line)
        groups.append(group)
    if not groups:
        raise ValueError(f"{source}: no rows")
    out.prompts = [g.prompt for g in groups]
    out.responses = [g.responses for g in groups]
    if shape == "pairs" or (shape == "sets" and groups[0].best is not None):
        out.best = [g.best for g in groups]
    out.chosen_rejected = shape == "pairs" and {"chosen", "rejected"} <= columns
    if shape == "pairs" and any(g.subset is not None for g in groups):
        out.subsets = [g.subset if g.subset is not None else "(none)" for g in groups]
    if gold_column is not None:
        out.gold = [bool(g.gold) for g in groups]
    return out


def _no_encode(record: Any) -> dict:  # pragma: no cover - read-only format
    raise NotImplementedError("rm inputs are read-only")

