"""Readers and writers for feedback files. Every reader iterates: no file is ever loaded whole.

Sources (chosen from the path):

- ``*.jsonl`` / ``*.ndjson`` (and ``*.json`` not starting with ``[``): one JSON object per line;
- ``*.json`` starting with ``[``: a JSON array (e.g. Chatbot-Arena's battle dump), parsed
  incrementally object by object;
- ``*.parquet``: read in record batches with pyarrow;
- a folder written by ``datasets.Dataset.save_to_disk`` (memory-mapped Arrow), or a
  ``datasets.Dataset`` object; a ``DatasetDict`` folder needs ``split``
  (or ``folder::split``).

Parquet and Arrow cannot tell a missing key from a null, so prefkit reads nulls as missing.

The format (see :mod:`prefkit.data.formats`) is detected from the first row's columns unless
given.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .errors import (
    MALFORMED_JSON,
    NON_UTF8,
    WRONG_TYPE,
    FieldError,
    RecordError,
    Unrepresentable,
)
from .formats import Format, detect_format, get_format
from .records import Record

PARQUET_BATCH_ROWS = 4096
JSON_CHUNK_CHARS = 1 << 20


@dataclass(slots=True)
class Row:
    """One raw row of a source: its 1-based ``line`` (JSONL line, or row number), the parsed
    ``data`` (None when unparseable), the ``raw`` bytes for line-based files, and the ``error``
    that made it unparseable."""

    line: int
    data: dict | None
    raw: bytes | None = None
    error: RecordError | None = None


def _source_name(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def source_kind(source: Any) -> str:
    """``jsonl``, ``json-array``, ``parquet`` or ``hf`` for a path or dataset object."""
    if not isinstance(source, (str, os.PathLike)):
        return "hf"
    path = Path(str(source).split("::", 1)[0])
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".json":
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip()
        return "json-array" if head.startswith(b"[") else "jsonl"
    return "jsonl"


def row_kind_of(kind: str) -> str:
    return {"jsonl": "line", "json-array": "record", "parquet": "row", "hf": "row"}[kind]


# ---------------------------------------------------------------------------------------------
# Row iterators
# ---------------------------------------------------------------------------------------------


def _line_error(source: str, lineno: int, raw: bytes, exc: Exception) -> RecordError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return RecordError(source, lineno, None, "UTF-8 text", NON_UTF8,
                           f"byte 0x{raw[err.start]:02x} at byte {err.start} of the line")
    return RecordError(source, lineno, None, "one JSON object per line", MALFORMED_JSON,
                       str(exc))


def iter_jsonl_rows(path: str | os.PathLike) -> Iterator[Row]:
    """Rows of a JSON Lines file; blank lines are skipped; bad lines come back with ``error``."""
    source = str(path)
    loads = orjson.loads
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                data = loads(raw)
            except orjson.JSONDecodeError as exc:
                if not raw.strip():
                    continue
                yield Row(lineno, None, raw, _line_error(source, lineno, raw, exc))
                continue
            if type(data) is not dict:
                err = RecordError(source, lineno, None, "a JSON object", WRONG_TYPE, data)
                yield Row(lineno, None, raw, err)
                continue
            yield Row(lineno, data, raw)


def iter_json_array_rows(path: str | os.PathLike) -> Iterator[Row]:
    """Rows of a file holding one JSON array of objects, decoded incrementally."""
    source = str(path)
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            buf, pos, index, eof = "", 0, 0, False
            started = False
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    pos += 1
                if pos >= len(buf) or (started and buf[pos] not in "]"
                                       and not _complete(decoder, buf, pos)):
                    if eof:
                        if pos < len(buf):
                            _, exc = _try_decode(decoder, buf, pos)
                            err = RecordError(source, index + 1, None, "a JSON object",
                                              MALFORMED_JSON, exc, row_kind="record")
                            yield Row(index + 1, None, None, err)
                            return
                        if started:
                            err = RecordError(source, index + 1, None, "']' closing the array",
                                              MALFORMED_JSON, "end of file", row_kind="record")
                            yield Row(index + 1, None, None, err)
                        return
                    more = fh.read(JSON_CHUNK_CHARS)
                    eof = not more
                    buf, pos = buf[pos:] + more, 0
                    continue
                if not started:
                    if buf[pos] != "[":
                        raise RecordError(source, None, None, "a JSON array", MALFORMED_JSON)
                    started, pos = True, pos + 1
                    continue
                if buf[pos] == "]":
                    return
                obj, end = decoder.raw_decode(buf, pos)
                index += 1
                if type(obj) is not dict:
                    err = RecordError(source, index, None, "a JSON object", WRONG_TYPE, obj,
                                      row_kind="record")
                    yield Row(index, None, None, err)
                else:
                    yield Row(index, obj)
                pos = end
        except UnicodeDecodeError as exc:
            raise RecordError(source, None, None, "UTF-8 text", NON_UTF8,
                              f"invalid byte at byte offset {exc.start} of a chunk") from None


def _try_decode(decoder: json.JSONDecoder, buf: str, pos: int):
    try:
        return decoder.raw_decode(buf, pos), None
    except json.JSONDecodeError as exc:
        return None, str(exc)


def _complete(decoder: json.JSONDecoder, buf: str, pos: int) -> bool:
    """True when an element starting at ``pos`` decodes within the buffer."""
    return _try_decode(decoder, buf, pos)[0] is not None


def drop_nulls(value: Any) -> Any:
    """Arrow has no 'missing key': remove null entries from (nested) objects."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def iter_parquet_rows(path: str | os.PathLike) -> Iterator[Row]:
    import pyarrow.parquet as pq

    n = 0
    with pq.ParquetFile(path) as pf:
        json_columns = json_columns_of(pf.schema_arrow)
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                n += 1
                yield Row(n, decode_json_columns(drop_nulls(row), json_columns))


def open_dataset(source: Any, split: str | None = None):
    """A ``datasets.Dataset`` from a dataset object or a ``save_to_disk`` folder."""
    import datasets

    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if "::" in text and split is None:
            text, split = text.split("::", 1)
        source = datasets.load_from_disk(text)
    if isinstance(source, datasets.DatasetDict):
        if split is None:
            raise ValueError(f"dataset has splits {list(source)}: choose one (split=..., or "
                             "path::split on the command line)")
        source = source[split]
    if not isinstance(source, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(source).__name__}")
    return source


def iter_dataset_rows(source: Any, split: str | None = None) -> Iterator[Row]:
    dataset = open_dataset(source, split)
    json_columns = json_columns_of(dataset.data.schema)
    if isinstance(source, (str, os.PathLike)):
        sidecar = Path(str(source).split("::", 1)[0], DATASET_SIDECAR)
        if sidecar.exists():
            json_columns = orjson.loads(sidecar.read_bytes())
    for start in range(0, len(dataset), PARQUET_BATCH_ROWS):
        batch = dataset.data.slice(start, PARQUET_BATCH_ROWS).to_pylist()
        for offset, row in enumerate(batch):
            yield Row(start + offset + 1, decode_json_columns(drop_nulls(row), json_columns))


def iter_rows(source: Any, *, split: str | None = None) -> Iterator[Row]:
    """Raw rows of any supported source (see the module docstring)."""
    kind = source_kind(source)
    if kind == "jsonl":
        return iter_jsonl_rows(source)
    if kind == "json-array":
        return iter_json_array_rows(source)
    if kind == "parquet":
        return iter_parquet_rows(source)
    return iter_dataset_rows(source, split)


# ---------------------------------------------------------------------------------------------
# Decoding rows into records
# ---------------------------------------------------------------------------------------------


class Decoded(NamedTuple):
    """A row after decoding: ``record`` on success, else ``error``. (Readers build these as
    plain tuples in this field order, for speed.)"""

    line: int
    record: Record | None
    raw: bytes | None
    data: dict | None
    error: RecordError | None


def iter_decoded(
    source: Any, format: str | Format | None = None, *, split: str | None = None
) -> Iterator[Decoded]:
    """Decode every row of ``source``; bad rows come back with ``error`` set (never raised), so
    callers choose whether to stop or skip. Yields ``(line, record, raw, data, error)``."""
    fmt = get_format(format) if isinstance(format, str) else format
    kind = source_kind(source)
    if kind == "jsonl":
        return _decode_jsonl(source, fmt)
    return _decode_rows(iter_rows(source, split=split), _source_name(source), row_kind_of(kind),
                        fmt)


def _decode_jsonl(path: str | os.PathLike, fmt: Format | None, start: int = 0,
                  end: int | None = None, first_line: int = 1) -> Iterator[Decoded]:
    """Decode the lines of ``path`` in bytes ``[start, end)`` (``start`` at a line start;
    ``first_line`` is its line number)."""
    # The hot path of every JSONL read (validate, import, training data): kept flat on purpose.
    source = str(path)
    loads = orjson.loads
    decode = fmt.decode if fmt is not None else None
    remaining = float("inf") if end is None else end - start
    with open(path, "rb") as fh:
        fh.seek(start)
        for lineno, raw in enumerate(fh, first_line):
            if remaining <= 0:
                return
            remaining -= len(raw)
            try:
                data = loads(raw)
            except orjson.JSONDecodeError as exc:
                if raw.strip():
                    yield (lineno, None, raw, None, _line_error(source, lineno, raw, exc))
                continue
            if type(data) is not dict:
                err = RecordError(source, lineno, None, "a JSON object", WRONG_TYPE, data)
                yield (lineno, None, raw, None, err)
                continue
            try:
                if decode is None:
                    decode = detect_format(data).decode
                record = decode(data)
            except FieldError as exc:
                yield (lineno, None, raw, data, RecordError.from_field(exc, source, lineno))
                continue
            yield (lineno, record, raw, data, None)


def line_aligned_ranges(path: str | os.PathLike, parts: int) -> list[tuple[int, int, int]]:
    """Split a line-based file into ``parts`` byte ranges that start at line starts:
    ``[(start, end, first_line_number), ...]``."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as fh:
        for k in range(1, parts):
            fh.seek(max(bounds[-1], size * k // parts))
            fh.readline()  # finish the line we landed in
            bounds.append(min(fh.tell(), size))
    bounds.append(size)
    ranges, line = [], 1
    with open(path, "rb") as fh:
        for a, b in zip(bounds, bounds[1:], strict=False):
            ranges.append((a, b, line))
            fh.seek(a)
            todo = b - a
            while todo > 0:  # count newlines in bounded chunks
                chunk = fh.read(min(todo, 1 << 22))
                line += chunk.count(b"\n")
                todo -= len(chunk)
    return [r for r in ranges if r[1] > r[0]]


def _decode_rows(rows: Iterable[Row], source: str, row_kind: str, fmt: Format | None
                 ) -> Iterator[Decoded]:
    for row in rows:
        data = row.data
        if data is None:
            yield (row.line, None, row.raw, None, row.error)
            continue
        try:
            if fmt is None:
                fmt = detect_format(data)
            record = fmt.decode(data)
        except FieldError as exc:
            yield (row.line, None, row.raw, data,
                   RecordError.from_field(exc, source, row.line, row_kind))
            continue
        yield (row.line, record, row.raw, data, None)


def read_records(
    source: Any, format: str | Format | None = None, *, split: str | None = None,
    skip_invalid: bool = False,
) -> Iterator[Record]:
    """Records of a file, folder or ``datasets.Dataset``. The first bad record raises
    :class:`RecordError` (naming file, line, field and what was expected) unless
    ``skip_invalid``."""
    for _line, record, _raw, _data, error in iter_decoded(source, format, split=split):
        if error is not None:
            if skip_invalid:
                continue
            raise error
        yield record


def detect_source_format(source: Any, *, split: str | None = None) -> Format:
    """The format of a source, from its first parseable row."""
    for row in iter_rows(source, split=split):
        if row.data is not None:
            return detect_format(row.data)
    raise ValueError(f"{_source_name(source)}: no records to detect the format from")


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


@dataclass
class WriteReport:
    """What a writer did: ``written`` rows, and records it could not represent in the target
    format, counted by reason (``dropped``) with a few example ids."""

    path: str
    format: str
    written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, record: Record) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 5:
            from .records import record_id

            ids.append(record_id(record))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "written": self.written,
                "dropped": dict(self.dropped), "examples": dict(self.examples)}


def output_kind(path: str | os.PathLike) -> str:
    """``jsonl``, ``json-array``, ``parquet`` or ``hf`` (a folder) from an output path."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json-array"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix:
        raise ValueError(f"{path}: unknown output extension {suffix!r}; use .jsonl, .json, "
                         ".parquet, or a folder name without extension for a HF dataset")
    return "hf"


def encoded_rows(records: Iterable[Record], fmt: Format, report: WriteReport) -> Iterator[dict]:
    for record in records:
        try:
            row = fmt.encode(record)
        except Unrepresentable as exc:
            report.drop(exc.reason, record)
            continue
        report.written += 1
        yield row


def write_records(records: Iterable[Record], path: str | os.PathLike, format: str = "prefkit"
                  ) -> WriteReport:
    """Write records in ``format`` to ``path`` (kind of file from the extension, see
    :func:`output_kind`). Records the format cannot hold are counted in the report, never
    silently lost. The file appears atomically (written to a temporary name, then renamed)."""
    fmt = get_format(format)
    kind = output_kind(path)
    report = WriteReport(str(path), fmt.name)
    rows = encoded_rows(records, fmt, report)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        if kind == "jsonl":
            write_jsonl_rows(rows, tmp)
        elif kind == "json-array":
            write_json_array_rows(rows, tmp)
        elif kind == "parquet":
            write_parquet_rows(rows, tmp)
        else:
            write_dataset_rows(rows, tmp)
        if kind == "hf" and target.exists():
            import shutil

            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return report


def write_jsonl_rows(rows: Iterable[dict], path: str | os.PathLike) -> int:
    dumps = orjson.dumps
    n = 0
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(dumps(row))
            fh.write(b"\n")
            n += 1
    return n


def write_json_array_rows(rows: Iterable[dict], path: str | os.PathLike) -> int:
    n = 0
    with open(path, "wb") as fh:
        fh.write(b"[")
        for row in rows:
            fh.write(b"\n" if n == 0 else b",\n")
            fh.write(orjson.dumps(row))
            n += 1
        fh.write(b"\n]\n")
    return n


def _batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


JSON_COLUMNS_KEY = b"prefkit.json_columns"


def _columns(batch: list[dict]) -> dict[str, list]:
    keys: dict[str, None] = {}
    for row in batch:
        keys.update(dict.fromkeys(row))
    return {k: [row.get(k) for row in batch] for k in keys}


def mixed_columns(rows: list[dict]) -> list[str]:
    """Columns Arrow cannot type as one column (e.g. text prompts mixed with message-list
    prompts, or ranking entries mixing indices and lists of tied indices)."""
    import pyarrow as pa

    out = []
    for key, values in _columns(rows).items():
        try:
            pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            out.append(key)
    return out


def _json_encode_columns(batch: list[dict], columns: list[str]) -> list[dict]:
    if not columns:
        return batch
    out = []
    for row in batch:
        row = dict(row)
        for key in columns:
            if key in row and row[key] is not None:
                row[key] = orjson.dumps(row[key]).decode()
        out.append(row)
    return out


def json_columns_of(schema) -> list[str]:
    """Columns a prefkit writer stored as JSON text (recorded in the schema metadata)."""
    meta = schema.metadata or {}
    if JSON_COLUMNS_KEY in meta:
        return orjson.loads(meta[JSON_COLUMNS_KEY])
    return []


def decode_json_columns(row: dict, columns: list[str]) -> dict:
    for key in columns:
        if isinstance(row.get(key), str):
            row[key] = orjson.loads(row[key])
    return row


def write_parquet_rows(rows: Iterable[dict], path: str | os.PathLike,
                       batch_rows: int = 10_000) -> int:
    """Parquet with the schema inferred from the first ``batch_rows`` rows. Columns whose values
    mix JSON kinds there (text and message lists, say) are stored as JSON text and listed in the
    schema metadata, so they read back exactly. A later row that needs a different schema (new
    column, other type) is a clear error, not a silent loss."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    json_columns: list[str] = []
    n = 0
    try:
        for batch in _batches(rows, batch_rows):
            if writer is None:
                json_columns = mixed_columns(batch)
            batch = _json_encode_columns(batch, json_columns)
            try:
                table = pa.table(_columns(batch))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                raise ValueError(f"rows {n + 1}-{n + len(batch)} mix value types in a column, "
                                 f"which Parquet cannot store ({exc}); write JSONL instead"
                                 ) from None
            if writer is None:
                schema = table.schema
                if json_columns:
                    schema = schema.with_metadata(
                        {**(schema.metadata or {}), JSON_COLUMNS_KEY: orjson.dumps(json_columns)})
                    table = table.replace_schema_metadata(schema.metadata)
                writer = pq.ParquetWriter(str(path), schema)
            elif table.schema.remove_metadata() != writer.schema.remove_metadata():
                table = _conform(table, writer.schema, n)
            else:
                table = table.replace_schema_metadata(writer.schema.metadata)
            writer.write_table(table)
            n += len(batch)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        pq.write_table(pa.table({}), str(path))
    return n


def _conform(table, schema, offset: int):
    import pyarrow as pa

    try:
        unified = pa.unify_schemas([schema, table.schema], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"rows after {offset} do not fit the Parquet schema of the first rows "
                         f"({exc}); write JSONL instead") from None
    if unified.remove_metadata() != schema.remove_metadata():
        extra = [f.name for f in table.schema if f.name not in schema.names]
        raise ValueError(f"rows after {offset} add columns/fields {extra or '(nested)'} not in "
                         "the first rows; Parquet needs one schema: write JSONL instead")
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(columns, schema=schema)


DATASET_SIDECAR = "prefkit_json_columns.json"


def write_dataset_rows(rows: Iterable[dict], path: str | os.PathLike) -> int:
    """A ``datasets.Dataset.save_to_disk`` folder, built through a temporary memory-mapped
    Parquet file (so memory stays bounded). Columns stored as JSON text are listed in a small
    side file in the folder (datasets drops Arrow schema metadata)."""
    import datasets
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        parquet = os.path.join(tmp, "rows.parquet")
        n = write_parquet_rows(rows, parquet)
        table = pq.read_table(parquet, memory_map=True)
        json_columns = json_columns_of(table.schema)
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            datasets.Dataset(table.replace_schema_metadata(None)).save_to_disk(str(path))
        finally:
            if bars:
                datasets.enable_progress_bars()
    if json_columns:
        Path(path, DATASET_SIDECAR).write_bytes(orjson.dumps(json_columns))
    return n


def to_dataset(records: Iterable[Record], format: str = "trl-preference"):
    """A ``datasets.Dataset`` of records in a format (e.g. to hand to TRL's trainers)."""
    import datasets

    fmt = get_format(format)
    report = WriteReport("<dataset>", fmt.name)
    rows = list(encoded_rows(records, fmt, report))
    return datasets.Dataset.from_list(rows)


def count_by_kind(records: Iterable[Record]) -> Counter:
    return Counter(r.kind for r in records)
