"""Arena votes as arrays, streamed from files without one Python object per vote.

Reads Chatbot-Arena battles (``model_a, model_b, winner``, optional ``conv_metadata``) and
native prefkit battle records (``kind: battle``, ``outcome``, ``style``) from JSONL, JSON arrays,
Parquet or dataset folders. Parquet and JSONL are read in Arrow record batches (a Parquet file
of 100M votes is aggregated chunk by chunk: memory is bounded by the number of models, not
votes); JSON arrays are parsed incrementally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rank.aggregate import A_WINS, B_WINS, BOTH_BAD, TIE, CountAccumulator, PairCounts
from .errors import (
    EMPTY_FIELD,
    MISSING_FIELD,
    NO_RECORDS,
    UNKNOWN_OUTCOME,
    UNREADABLE_FILE,
    WRONG_TYPE,
    Note,
    RecordError,
)
from .io import iter_rows, json_columns_of, open_parquet, source_kind

WINNER_CODES = {"model_a": A_WINS, "model_b": B_WINS, "tie": TIE, "tie (bothbad)": BOTH_BAD,
                "a": A_WINS, "b": B_WINS, "both_bad": BOTH_BAD}
CHUNK = 100_000


@dataclass
class BattleArrays:
    models: list[str]
    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray
    style_a: np.ndarray | None = None
    style_b: np.ndarray | None = None
    style_names: list[str] | None = None


def style_pairs(style: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The naming rule of style features, shared by the row reader and the Parquet column
    reader (:mod:`prefkit.data.parquet_style`): style counts of both sides for every
    ``..._a...`` key with a matching ``..._b...`` key; a nested object counts as the sum of its
    values (Chatbot Arena's ``header_count_a: {h1: ..}``). Names drop the side marker
    (``sum_assistant_a_tokens`` -> ``sum_assistant_tokens``)."""
    out = {}
    for key, value in style.items():
        for marker in ("_a_", "_a"):
            if marker in key and (marker == "_a_" or key.endswith("_a")):
                other = key.replace(marker, marker.replace("a", "b"), 1) if marker == "_a_" \
                    else key[:-2] + "_b"
                if other in style:
                    name = key.replace(marker, "_" if marker == "_a_" else "", 1)
                    out[name] = (_total(value), _total(style[other]))
                break
    return out


def _total(value: Any) -> float:
    if isinstance(value, dict):
        return float(sum(_total(v) for v in value.values()))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _rows_of(source: Any) -> Iterator[tuple[int, dict]]:
    for row in iter_rows(source):
        if row.error is not None:
            raise row.error
        yield row.line, row.data


def iter_battle_chunks(source: Any, *, with_style: bool = False, index: dict | None = None
                       ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, Any]]:
    """Chunks ``(a, b, outcome, style)`` of integer-coded votes; ``index`` maps model names to
    codes and grows as new names appear. ``style`` is ``(names, a_counts, b_counts)`` or None."""
    index = {} if index is None else index
    name = str(source)
    kind = source_kind(source)
    if kind == "parquet" and not with_style and _plain_battle_columns(source):
        yield from _parquet_chunks(source, index)
        return
    a_list: list[int] = []
    b_list: list[int] = []
    o_list: list[int] = []
    styles: list[dict] = []
    row_kind = "line" if kind == "jsonl" else "row" if kind != "json-array" else "record"
    for line, data in _rows_of(source):
        model_a, model_b = data.get("model_a"), data.get("model_b")
        for field, value in (("model_a", model_a), ("model_b", model_b)):
            if not isinstance(value, str) or not value:
                raise RecordError(name, line, field, "a model name", MISSING_FIELD if value is
                                  None else WRONG_TYPE, value, row_kind=row_kind)
        winner = data.get("winner", data.get("outcome"))
        code = WINNER_CODES.get(winner) if isinstance(winner, str) else None
        if code is None:
            raise RecordError(name, line, "outcome" if "outcome" in data else "winner",
                              "one of model_a, model_b, tie, tie (bothbad)", UNKNOWN_OUTCOME,
                              winner, row_kind=row_kind)
        if model_a == model_b:
            raise RecordError(name, line, "model_b", "a model different from model_a",
                              WRONG_TYPE, model_b, row_kind=row_kind)
        a_list.append(index.setdefault(model_a, len(index)))
        b_list.append(index.setdefault(model_b, len(index)))
        o_list.append(code)
        if with_style:
            key = "conv_metadata" if "conv_metadata" in data else "style"
            style = data.get(key) or {}
            if not isinstance(style, dict):
                raise RecordError(name, line, key, "an object of style counts", WRONG_TYPE,
                                  style, row_kind=row_kind)
            styles.append(style_pairs(style))
        if len(a_list) >= CHUNK:
            yield _chunk(a_list, b_list, o_list, styles if with_style else None)
            a_list, b_list, o_list, styles = [], [], [], []
    if a_list:
        yield _chunk(a_list, b_list, o_list, styles if with_style else None)


def _chunk(a, b, o, styles):
    style = None
    if styles is not None:
        names = sorted({k for s in styles for k in s})
        sa = np.array([[s.get(k, (np.nan, np.nan))[0] for k in names] for s in styles])
        sb = np.array([[s.get(k, (np.nan, np.nan))[1] for k in names] for s in styles])
        style = (names, sa.reshape(len(styles), len(names)), sb.reshape(len(styles), len(names)))
    return (np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(o, dtype=np.int8),
            style)


def _plain_battle_columns(path) -> bool:
    """True when the battle columns of a Parquet file are plain columns (the column fast path
    applies), False when prefkit's writer stored one as JSON text (mixed value types: read
    row by row, where each row is checked)."""
    with open_parquet(path) as pf:
        encoded = set(json_columns_of(pf.schema_arrow))
    return not encoded & {"model_a", "model_b", "winner", "outcome"}


def arrow_numbers(column) -> np.ndarray:
    """The values of a numeric Arrow array without nulls, as a view of its data buffer
    (``Array.to_numpy`` imports pandas on first use: ~0.15 s of a leaderboard's run)."""
    import pyarrow as pa

    kind = column.type
    code = "f" if pa.types.is_floating(kind) else \
        "i" if pa.types.is_signed_integer(kind) else "u"
    width = kind.bit_width // 8
    return np.frombuffer(column.buffers()[1], dtype=f"{code}{width}", count=len(column),
                         offset=column.offset * width)


def _dictionary_codes(column) -> tuple[list, np.ndarray, np.ndarray]:
    """``(values, codes, used)`` of a string column: its distinct values, each row's index
    into them and which values occur. A column Parquet stored dictionary-encoded is used as it
    is (its dictionary may hold values no row of this batch uses); only a plain column is
    encoded, with ``pyarrow.compute`` (importing it costs ~40 ms of a leaderboard's run)."""
    import pyarrow as pa

    if not pa.types.is_dictionary(column.type):
        import pyarrow.compute as pc

        column = pc.dictionary_encode(column)
    codes = arrow_numbers(column.indices)
    values = column.dictionary.to_pylist()
    return values, codes, np.bincount(codes, minlength=len(values)) > 0


def _parquet_chunks(path, index: dict):
    import pyarrow as pa

    source = str(path)
    with open_parquet(path) as pf:
        schema = pf.schema_arrow
        outcome_col = "winner" if "winner" in schema.names else "outcome"
        columns = ["model_a", "model_b", outcome_col]
        for field in columns:
            if field not in schema.names:
                raise RecordError(source, None, field, "a column of battle records",
                                  MISSING_FIELD)
            value_type = schema.field(field).type
            if pa.types.is_dictionary(value_type):
                value_type = value_type.value_type
            if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
                raise RecordError(source, None, field, "a column of strings", WRONG_TYPE,
                                  Note(f"a column of {value_type}"), row_kind="row")
        start = 0
        batches = pf.iter_batches(batch_size=1 << 20, columns=columns)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise RecordError(source, start + 1, None, "readable Parquet rows",
                                  UNREADABLE_FILE, Note(str(exc).strip()), row_kind="row"
                                  ) from None
            if batch is None:
                break
            for field in columns:
                column = batch.column(field)
                if column.null_count:
                    first = int(np.flatnonzero(
                        column.is_null().to_numpy(zero_copy_only=False))[0])
                    raise RecordError(source, start + first + 1, field,
                                      "a model name" if field != outcome_col else
                                      "one of model_a, model_b, tie, tie (bothbad)",
                                      MISSING_FIELD, row_kind="row")
            codes = []
            for col in ("model_a", "model_b"):
                names, rows, used = _dictionary_codes(batch.column(col))
                empty = [k for k, m in enumerate(names) if m == "" and used[k]]
                if empty:
                    first = int(np.flatnonzero(rows == empty[0])[0])
                    raise RecordError(source, start + first + 1, col, "a model name",
                                      EMPTY_FIELD, "", row_kind="row")
                mapping = np.array([index.setdefault(m, len(index)) if used[k] else -1
                                    for k, m in enumerate(names)], dtype=np.int64)
                codes.append(mapping[rows])
            values, rows, used = _dictionary_codes(batch.column(outcome_col))
            bad = [k for k, v in enumerate(values) if used[k] and v not in WINNER_CODES]
            if bad:
                first = int(np.flatnonzero(np.isin(rows, bad))[0])
                raise RecordError(source, start + first + 1, outcome_col,
                                  "one of model_a, model_b, tie, tie (bothbad)",
                                  UNKNOWN_OUTCOME, values[bad[0]], row_kind="row")
            mapping = np.array([WINNER_CODES.get(v, -1) for v in values], dtype=np.int8)
            outcome = mapping[rows]
            same = np.flatnonzero(codes[0] == codes[1])
            if len(same):
                raise RecordError(source, start + int(same[0]) + 1, "model_b",
                                  "a model different from model_a", WRONG_TYPE, row_kind="row")
            start += len(outcome)
            yield codes[0], codes[1], outcome, None
        if start == 0:
            raise RecordError(source, None, None, "at least one record", NO_RECORDS,
                              Note("none (empty)"))


def aggregate_battle_file(source: str | os.PathLike) -> tuple[PairCounts, list[str],
                                                              dict[str, int]]:
    """Stream a battle file into :class:`PairCounts`; returns the counts, the model names (by
    code) and extra counts (``{"both_bad": n}``, votes that are ties in the counts)."""
    index: dict[str, int] = {}
    acc = CountAccumulator(16)
    both_bad = 0
    for a, b, outcome, _ in iter_battle_chunks(source, index=index):
        if len(index) > acc.n_items:
            acc.grow(max(len(index), 2 * acc.n_items))
        acc.add(a, b, outcome)
        both_bad += int(np.sum(outcome == BOTH_BAD))
    counts = acc.result()
    n = len(index)
    counts = PairCounts(n, counts.i, counts.j, counts.wins_i, counts.wins_j, counts.ties)
    models = [None] * n
    for model, code in index.items():
        models[code] = model
    return counts, models, {"both_bad": both_bad}


def load_battle_arrays(source: str | os.PathLike, *, with_style: bool = False) -> BattleArrays:
    """All votes as arrays (for style control and online Elo, which need vote rows)."""
    index: dict[str, int] = {}
    parts = list(iter_battle_chunks(source, with_style=with_style, index=index))
    if not parts:
        raise ValueError(f"{source}: no battle records")
    a = np.concatenate([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    o = np.concatenate([p[2] for p in parts])
    models = [None] * len(index)
    for model, code in index.items():
        models[code] = model
    out = BattleArrays(models, a, b, o)
    if with_style:
        names = sorted({n for p in parts for n in p[3][0]})
        if not names:
            raise ValueError(f"{source}: no style features (conv_metadata / style with "
                             "..._a / ..._b counts) for style control")
        sa, sb = [], []
        for p in parts:
            cols = {n: k for k, n in enumerate(p[3][0])}
            take = [cols.get(n) for n in names]
            sa.append(np.column_stack([p[3][1][:, k] if k is not None else
                                       np.full(len(p[0]), np.nan) for k in take]))
            sb.append(np.column_stack([p[3][2][:, k] if k is not None else
                                       np.full(len(p[0]), np.nan) for k in take]))
        out.style_a, out.style_b, out.style_names = np.vstack(sa), np.vstack(sb), names
    return out


@dataclass
class KwiseVotes:
    """Votes as rankings of models, in file order: each a list of tiers (best first) of model
    codes. Pairwise battles become rankings of 2 (a tie = one tier of 2)."""

    models: list[str]
    rankings: list[list[list[int]]]


def load_kwise_votes(source: str | os.PathLike) -> KwiseVotes:
    """K-wise votes from ranking records whose ``models`` column (``metadata["models"]``)
    names the model of each response, or pairwise votes from battle records."""
    from .formats import detect_format
    from .io import read_records

    first = next((row.data for row in iter_rows(source) if row.data is not None), None)
    if first is None:
        raise ValueError(f"{source}: no votes")
    if detect_format(first).name in ("arena",) or first.get("kind") == "battle":
        arrays = load_battle_arrays(source)
        rankings = [[[int(a), int(b)]] if o >= TIE else
                    ([[int(a)], [int(b)]] if o == A_WINS else [[int(b)], [int(a)]])
                    for a, b, o in zip(arrays.a, arrays.b, arrays.outcome, strict=True)]
        return KwiseVotes(arrays.models, rankings)
    index: dict[str, int] = {}
    rankings = []
    for n, record in enumerate(read_records(source), 1):
        models = record.metadata.get("models") if record.kind == "ranking" else None
        if (not isinstance(models, list) or len(models) != len(record.responses)
                or not all(isinstance(m, str) and m for m in models)):
            raise RecordError(str(source), n, "models",
                              "a list naming the model of each response (K-wise arena votes)",
                              MISSING_FIELD if models is None else WRONG_TYPE, models,
                              row_kind="record")
        codes = [index.setdefault(m, len(index)) for m in models]
        rankings.append([[codes[i] for i in tier] for tier in record.tiers])
    names = [None] * len(index)
    for model, code in index.items():
        names[code] = model
    return KwiseVotes(names, rankings)
