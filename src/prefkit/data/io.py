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

Every problem with a source is a :class:`~prefkit.data.errors.RecordError` naming the file (or
shard), the line / record / row where there is one, the field where there is one, and what was
expected: malformed JSON, non-UTF-8 bytes, JSON nested deeper than :data:`MAX_NESTING` levels,
a corrupt Parquet file or Arrow shard, a folder that is not a dataset folder, an unknown split,
an empty source. Outputs are checked before any work with :func:`check_output_path`.

The format (see :mod:`prefkit.data.formats`) is detected from the first row's columns unless
given.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .errors import (
    MALFORMED_JSON,
    NO_RECORDS,
    NON_UTF8,
    TOO_DEEP,
    UNKNOWN_SPLIT,
    UNREADABLE_FILE,
    WRONG_TYPE,
    FieldError,
    Note,
    OutputPathError,
    RecordError,
    Unrepresentable,
)
from .formats import Format, detect_format, get_format
from .records import Record

PARQUET_BATCH_ROWS = 4096
JSON_CHUNK_CHARS = 1 << 20
MAX_NESTING = 32
"""Deepest nesting of objects and arrays in a record (the record itself is level 1). Deeper
records are rejected as ``too_deep``: every writer can hold what the readers accept (Parquet
readers stop at ~49 nested list levels, orjson writes at most 255), and no reader recurses
without bound."""


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
    if "::" in str(source):
        raise RecordError(str(source), None, None,
                          "FILE without '::SPLIT' (splits are for dataset folders)",
                          UNKNOWN_SPLIT, Note(f"{path} is not a folder"), row_kind="row")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".json":
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip()
        return "json-array" if head.startswith(b"[") else "jsonl"
    return "jsonl"


def check_source_exists(source: str | os.PathLike) -> Path:
    """The local path of a source (``FOLDER::split`` -> ``FOLDER``); a missing one is a
    ``FileNotFoundError`` naming it (exit code 2 in the CLI). Call it before loading models."""
    path = Path(split_source(source)[0])
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    return path


def row_kind_of(kind: str) -> str:
    return {"jsonl": "line", "json-array": "record", "parquet": "row", "hf": "row"}[kind]


# ---------------------------------------------------------------------------------------------
# Nesting depth
# ---------------------------------------------------------------------------------------------


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """True when objects/arrays in ``value`` nest more than ``limit`` levels (``value`` itself
    is level 1). Iterative: safe on any depth."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def deep_field(row: dict) -> str | None:
    """The first top-level field of a row (level 1) whose value nests deeper than
    :data:`MAX_NESTING` allows, else None. A top-level ``metadata`` object counts as more
    top-level fields (``metadata.KEY``): the native format keeps extra columns there, so a
    record is equally deep in every format and whatever a reader accepts, a writer holds."""
    for key, value in row.items():
        if key == "metadata" and isinstance(value, dict):
            inner = next((k for k, v in value.items() if isinstance(v, (dict, list))
                          and too_deep(v, MAX_NESTING - 1)), None)
            if inner is not None:
                return f"metadata.{inner}"
        elif isinstance(value, (dict, list)) and too_deep(value, MAX_NESTING - 1):
            return key
    return None


def row_too_deep(row: Any) -> bool:
    """True when a row nests deeper than :data:`MAX_NESTING` (see :func:`deep_field`)."""
    return deep_field(row) is not None if isinstance(row, dict) else too_deep(row)


def _maybe_deep(text: bytes | str, start: int = 0, end: int | None = None) -> bool:
    """Cheap pre-filter: a value cannot nest deeper than its count of opening brackets."""
    end = len(text) if end is None else end
    opening = (b"[", b"{") if isinstance(text, bytes) else ("[", "{")
    return text.count(opening[0], start, end) + text.count(opening[1], start, end) > MAX_NESTING


def _deep_error(source: str, line: int | None, data: Any, row_kind: str = "line",
                got: Any = ...) -> RecordError:
    """A ``too_deep`` error naming the first top-level field that nests too deep."""
    field_name = deep_field(data) if isinstance(data, dict) else None
    return RecordError(source, line, field_name,
                       f"objects and arrays nested at most {MAX_NESTING} levels deep", TOO_DEEP,
                       got, row_kind=row_kind)


def _type_depth(arrow_type: Any) -> int:
    """Nesting levels of an Arrow type as JSON (a list or struct is one level)."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        return 1 + max((_type_depth(arrow_type.field(i).type)
                        for i in range(arrow_type.num_fields)), default=0)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or \
            pa.types.is_fixed_size_list(arrow_type):
        return 1 + _type_depth(arrow_type.value_type)
    if pa.types.is_map(arrow_type):
        return 1 + _type_depth(arrow_type.item_type)
    return 0


def check_schema_depth(schema: Any, source: str) -> None:
    """Reject an Arrow schema whose columns nest deeper than rows may (:data:`MAX_NESTING`;
    a ``metadata`` struct counts as more columns, as in :func:`deep_field`)."""
    import pyarrow as pa

    columns = list(schema)
    for column in schema:
        if column.name == "metadata" and pa.types.is_struct(column.type):
            columns.extend(column.type.field(i) for i in range(column.type.num_fields))
            columns.remove(column)
    for column in columns:
        if 1 + _type_depth(column.type) > MAX_NESTING:
            raise RecordError(source, None, column.name,
                              f"columns nested at most {MAX_NESTING - 1} levels deep", TOO_DEEP,
                              Note(f"{_type_depth(column.type)} levels"), row_kind="row")


# ---------------------------------------------------------------------------------------------
# Row iterators
# ---------------------------------------------------------------------------------------------


def _non_utf8(source: str, lineno: int, raw: bytes, err: UnicodeDecodeError) -> RecordError:
    return RecordError(source, lineno, None, "UTF-8 text", NON_UTF8,
                       f"byte 0x{raw[err.start]:02x} at byte {err.start} of the line")


def _line_error(source: str, lineno: int, raw: bytes, exc: Exception) -> RecordError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return _non_utf8(source, lineno, raw, err)
    if "depth limit" in str(exc):
        return _deep_error(source, lineno, None, got=Note("more than 1024 levels"))
    return RecordError(source, lineno, None, "one JSON object per line", MALFORMED_JSON,
                       Note(str(exc)))


def iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file, line ends removed (and a leading
    byte-order mark); non-UTF-8 bytes are a ``non_utf8`` :class:`RecordError` naming the file,
    the line and the byte."""
    source = str(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _non_utf8(source, lineno, raw, err) from None
            yield lineno, text.rstrip("\r\n")


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
            if _maybe_deep(raw) and row_too_deep(data):
                yield Row(lineno, None, raw, _deep_error(source, lineno, data))
                continue
            if type(data) is not dict:
                err = RecordError(source, lineno, None, "a JSON object", WRONG_TYPE, data)
                yield Row(lineno, None, raw, err)
                continue
            yield Row(lineno, data, raw)


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a non-UTF-8 byte under "surrogateescape"


def iter_json_array_rows(path: str | os.PathLike) -> Iterator[Row]:
    """Rows of a file holding one JSON array of objects, decoded incrementally (the records
    are numbered from 1). A record with non-UTF-8 bytes, of the wrong type or nested too deep
    comes back with ``error`` and reading goes on; after malformed JSON it stops (the end of
    the record is unknown)."""
    source = str(path)
    decoder = json.JSONDecoder()
    # Undecodable bytes become lone surrogates, found per record below (so the error names
    # the record) only when a chunk had any.
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        buf, pos, index, eof, started, escaped = "", 0, 0, False, False, False
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(buf) and not eof:
                buf, pos, eof, escaped = _more(fh, buf, pos, escaped)
                continue
            if not started:
                if pos >= len(buf) or buf[pos] != "[":
                    raise RecordError(source, None, None, "a JSON array of objects",
                                      MALFORMED_JSON, buf[pos:pos + 20] if pos < len(buf)
                                      else Note("an empty file"))
                started, pos = True, pos + 1
                continue
            if pos >= len(buf):
                yield Row(index + 1, None, None, RecordError(
                    source, index + 1, None, "']' closing the array", MALFORMED_JSON,
                    "end of file", row_kind="record"))
                return
            if buf[pos] == "]":
                return
            index += 1
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except RecursionError:
                yield Row(index, None, None, _deep_error(source, index, None, "record",
                                                         Note("deeper than the JSON parser goes")))
                return
            except json.JSONDecodeError as exc:
                if not eof:  # maybe the record goes on in the next chunk
                    index -= 1
                    buf, pos, eof, escaped = _more(fh, buf, pos, escaped)
                    continue
                yield Row(index, None, None, RecordError(
                    source, index, None, "a JSON object", MALFORMED_JSON,
                    Note(_escaped_text(str(exc))), row_kind="record"))
                return
            bad = _ESCAPED_BYTE.search(buf, pos, end) if escaped else None
            if bad is not None:
                err = RecordError(source, index, None, "UTF-8 text", NON_UTF8,
                                  Note(f"byte 0x{ord(bad.group()) - 0xdc00:02x} in the record"),
                                  row_kind="record")
            elif _maybe_deep(buf, pos, end) and row_too_deep(obj):
                err = _deep_error(source, index, obj, "record")
            elif type(obj) is not dict:
                err = RecordError(source, index, None, "a JSON object", WRONG_TYPE, obj,
                                  row_kind="record")
            else:
                err = None
            if err is None:
                yield Row(index, obj)
            else:  # the record's own bytes, for --skip-invalid's rejected file
                yield Row(index, None, buf[pos:end].encode("utf-8", "surrogateescape"), err)
            pos = end


def _more(fh: Any, buf: str, pos: int, escaped: bool) -> tuple[str, int, bool, bool]:
    """Read the next chunk: ``(buffer from pos, 0, eof, any undecodable byte so far)``."""
    more = fh.read(JSON_CHUNK_CHARS)
    escaped = escaped or _ESCAPED_BYTE.search(more) is not None
    return buf[pos:] + more, 0, not more, escaped


def _escaped_text(text: str) -> str:
    return _ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xdc00:02x}", text)


def drop_nulls(value: Any) -> Any:
    """Arrow has no 'missing key': remove null entries from (nested) objects."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def open_parquet(path: str | os.PathLike) -> Any:
    """A ``pyarrow.parquet.ParquetFile``; a file pyarrow cannot open (not Parquet, truncated,
    a schema nested deeper than pyarrow reads) is an ``unreadable_file`` error naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise RecordError(str(path), None, None, "a Parquet file", UNREADABLE_FILE,
                          _first_line(exc)) from None
    try:
        check_schema_depth(pf.schema_arrow, str(path))
    except BaseException:
        pf.close()
        raise
    return pf


def _first_line(exc: BaseException) -> Note:
    text = str(exc).strip()
    return Note(text.splitlines()[0] if text else type(exc).__name__)


def _read_error(source: str, first_row: int, n_rows: int, exc: BaseException,
                expected: str) -> RecordError:
    """A batch of rows that cannot be read (corrupt pages, undecodable strings)."""
    where = f"rows {first_row}-{first_row + n_rows - 1}: " if n_rows > 1 else ""
    return RecordError(source, first_row, None, expected, UNREADABLE_FILE,
                       Note(where + _first_line(exc)), row_kind="row")


def iter_parquet_rows(path: str | os.PathLike) -> Iterator[Row]:
    import pyarrow as pa

    source = str(path)
    n = 0
    with open_parquet(path) as pf:
        json_columns = json_columns_of(pf.schema_arrow)
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                rows = batch.to_pylist()
            except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
                raise _read_error(source, n + 1, PARQUET_BATCH_ROWS, exc,
                                  "readable Parquet rows") from None
            for row in rows:
                n += 1
                yield _arrow_row(source, n, row, json_columns)


def _arrow_row(source: str, n: int, row: dict, json_columns: list[str]) -> Row:
    """A Parquet / Arrow row: nulls dropped, JSON-text columns decoded (checked like JSONL);
    a bad row keeps its columns as one JSON line in ``raw``."""
    row = drop_nulls(row)
    bad = _bad_json_column(source, n, row, json_columns)
    if bad is not None:
        return Row(n, None, orjson.dumps(row, default=str), bad)
    return Row(n, row)


def _bad_json_column(source: str, n: int, row: dict, json_columns: list[str]
                     ) -> RecordError | None:
    """Decode the JSON-text columns of ``row`` in place; the first problem, else None."""
    for key in json_columns:
        text = row.get(key)
        if not isinstance(text, str):
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if "depth limit" in str(exc):
                return _deep_error(source, n, None, "row", Note("more than 1024 levels"))
            return RecordError(source, n, key, "JSON text", MALFORMED_JSON, Note(str(exc)),
                               row_kind="row")
        if _maybe_deep(text) and row_too_deep({key: value}):
            return _deep_error(source, n, {key: value}, "row")
        row[key] = value
    return None


DATASET_MARKERS = ("state.json", "dataset_info.json")
"""Files of a folder written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` folder
has ``dataset_dict.json`` and one such folder per split)."""


def is_dataset_folder(folder: str | os.PathLike) -> bool:
    """True for a folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    folder = Path(folder)
    return (folder / "dataset_dict.json").is_file() or all(
        (folder / name).is_file() for name in DATASET_MARKERS)


def split_source(source: Any, split: str | None = None) -> tuple[Any, str | None]:
    """``FOLDER::split`` -> ``(FOLDER, split)``; an explicit ``split`` wins."""
    if isinstance(source, (str, os.PathLike)) and "::" in str(source):
        text, named = str(source).split("::", 1)
        return text, split if split is not None else named
    return source, split


def open_dataset(source: Any, split: str | None = None):
    """A ``datasets.Dataset`` from a dataset object or a ``save_to_disk`` folder (``split``
    chooses one split of a ``DatasetDict``; ``FOLDER::split`` too). A folder that is not a
    dataset folder, a corrupt shard, an unknown or missing split are :class:`RecordError`
    naming the folder or the shard."""
    import datasets

    source, split = split_source(source, split)
    if isinstance(source, (str, os.PathLike)):
        source = _load_dataset_folder(Path(source), split)
        split = None
    if isinstance(source, datasets.DatasetDict):
        name = "DatasetDict"
        if split is None or split not in source:
            raise _split_error(name, list(source), split)
        source = source[split]
    if not isinstance(source, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(source).__name__}")
    return source


def _split_error(source: str, splits: list[str], split: str | None) -> RecordError:
    names = ", ".join(splits) or "(none)"
    if split is None:
        return RecordError(source, None, None,
                           f"a split (FOLDER::SPLIT or --split); the splits are {names}",
                           UNKNOWN_SPLIT, row_kind="row")
    return RecordError(source, None, None, f"one of the splits {names}", UNKNOWN_SPLIT, split,
                       row_kind="row")


def _load_dataset_folder(folder: Path, split: str | None):
    """``datasets.load_from_disk`` of one dataset (a split of a ``DatasetDict`` folder is loaded
    alone), with every failure a :class:`RecordError`."""
    import datasets

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such dataset folder")
    dict_file = folder / "dataset_dict.json"
    if dict_file.is_file():
        try:
            splits = orjson.loads(dict_file.read_bytes())["splits"]
            if not (isinstance(splits, list) and all(isinstance(x, str) for x in splits)):
                raise TypeError("'splits' is not a list of names")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RecordError(str(dict_file), None, "splits",
                              "the DatasetDict index written by save_to_disk", UNREADABLE_FILE,
                              _first_line(exc)) from None
        if split is None or split not in splits:
            raise _split_error(str(folder), splits, split)
        return _load_dataset_folder(folder / split, None)
    if split is not None:
        raise RecordError(str(folder), None, None,
                          "no split: the folder holds one dataset, not a DatasetDict",
                          UNKNOWN_SPLIT, split, row_kind="row")
    if not is_dataset_folder(folder):
        files = sorted(p.name for p in folder.iterdir())
        got = Note("an empty folder" if not files else
                   f"a folder of {len(files)} entries without {' / '.join(DATASET_MARKERS)}")
        raise RecordError(str(folder), None, None,
                          "a dataset folder written by datasets' save_to_disk",
                          UNREADABLE_FILE, got, row_kind="row")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - any failure to load names the bad file
        raise _dataset_error(folder, exc) from None
    finally:
        if bars:
            datasets.enable_progress_bars()


def _dataset_error(folder: Path, exc: BaseException) -> RecordError:
    """The file of a dataset folder that fails to load: the first unreadable shard, else the
    state file."""
    import pyarrow as pa

    state = folder / "state.json"
    try:
        shards = [f["filename"] for f in orjson.loads(state.read_bytes())["_data_files"]]
    except Exception as state_exc:  # noqa: BLE001 - a broken state file is the error
        return RecordError(str(state), None, "_data_files", "the state file save_to_disk writes",
                           UNREADABLE_FILE, _first_line(state_exc), row_kind="row")
    if not shards:  # datasets writes no shard for a dataset without rows and columns
        return RecordError(str(folder), None, None, "at least one record", NO_RECORDS,
                           Note("none (a dataset without data files)"))
    for name in shards:
        shard = folder / name
        try:
            with pa.memory_map(str(shard)) as source:
                pa.ipc.open_stream(source).read_all()
        except Exception as shard_exc:  # noqa: BLE001
            return RecordError(str(shard), None, None, "an Arrow shard written by save_to_disk",
                               UNREADABLE_FILE, _first_line(shard_exc), row_kind="row")
    return RecordError(str(folder), None, None, "a dataset folder datasets can load",
                       UNREADABLE_FILE, _first_line(exc), row_kind="row")


def iter_dataset_rows(source: Any, split: str | None = None) -> Iterator[Row]:
    import pyarrow as pa

    dataset = open_dataset(source, split)
    path, split = split_source(source, split)
    name = _source_name(path)
    check_schema_depth(dataset.data.schema, name)
    json_columns = json_columns_of(dataset.data.schema)
    if isinstance(path, (str, os.PathLike)):
        folder = Path(path)
        if split is not None and (folder / "dataset_dict.json").is_file():
            folder = folder / split
        if (folder / DATASET_SIDECAR).exists():
            json_columns = orjson.loads((folder / DATASET_SIDECAR).read_bytes())
    for start in range(0, len(dataset), PARQUET_BATCH_ROWS):
        try:
            batch = dataset.data.slice(start, PARQUET_BATCH_ROWS).to_pylist()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise _read_error(name, start + 1, min(PARQUET_BATCH_ROWS, len(dataset) - start),
                              exc, "readable Arrow rows") from None
        for offset, row in enumerate(batch):
            yield _arrow_row(name, start + offset + 1, row, json_columns)


def _nonempty(rows: Iterator[Any], source: Any) -> Iterator[Any]:
    """``rows``, or a ``no_records`` error when there are none at all."""
    first = next(rows, _END)
    if first is _END:
        raise RecordError(_source_name(split_source(source)[0]), None, None,
                          "at least one record", NO_RECORDS, Note("none (empty)"))
    yield first
    yield from rows


_END = object()


def primed(items: Iterable[Any]) -> Iterator[Any]:
    """``items`` with its first element already taken, so that what a lazy reader raises at
    its start -- an empty source (``no_records``), an unreadable one, an unknown split, a bad
    first record -- is raised here, before the caller creates or logs anything."""
    it = iter(items)
    first = next(it, _END)
    return it if first is _END else itertools.chain((first,), it)


def iter_rows(source: Any, *, split: str | None = None) -> Iterator[Row]:
    """Raw rows of any supported source (see the module docstring); a source with no rows at
    all is a ``no_records`` error."""
    kind = source_kind(source)
    if kind == "jsonl":
        rows = iter_jsonl_rows(source)
    elif kind == "json-array":
        rows = iter_json_array_rows(source)
    elif kind == "parquet":
        rows = iter_parquet_rows(source)
    else:
        rows = iter_dataset_rows(source, split)
    return _nonempty(rows, source)


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
        return _nonempty(decode_jsonl_range(source, fmt), source)
    return _decode_rows(iter_rows(source, split=split),
                        _source_name(split_source(source)[0]), row_kind_of(kind), fmt)


def decode_jsonl_range(path: str | os.PathLike, fmt: Format | None, start: int = 0,
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
            if _maybe_deep(raw) and row_too_deep(data):
                yield (lineno, None, raw, None, _deep_error(source, lineno, data))
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


def check_output_path(path: str | os.PathLike, *, folder: bool = False,
                      option: str | None = None) -> Path:
    """Check, before any work is done, that ``path`` can be written; returns it as a ``Path``.

    ``folder``: the output is a folder (a dataset folder, a run folder), else a file. Raises
    :class:`~prefkit.data.errors.OutputPathError` (a ``ValueError``: exit code 2 in the CLI;
    its message starts with ``option`` when given) when a file is expected where a folder is
    (or the reverse), when a parent on the way is a file, or when no file can be created where
    the output goes (a folder that does not exist and cannot be made, no permission, a
    read-only file system). Creates nothing."""
    target = Path(path)
    if str(path) == "" or target.name == "":
        raise OutputPathError(path, "expected a file or folder name", option)
    if target.exists():
        if folder and not target.is_dir():
            raise OutputPathError(path, "it is a file; expected a folder", option)
        if not folder and target.is_dir():
            raise OutputPathError(path, "it is a folder; expected a file name", option)
    probe = target if folder and target.is_dir() else target.parent
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(path, f"{probe} is a file, not a folder", option)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise OutputPathError(path, f"cannot create files in {probe} "
                                    f"({exc.strerror or _first_line(exc)})", option) from None
    return target


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""OS errors only a write raises: no space left, disk quota exceeded, file too large, read-only
file system."""


@contextmanager
def naming_output(path: str | os.PathLike) -> Iterator[None]:
    """Inside: an OS error only a write raises (:data:`WRITE_ERRNOS`) that names no file is
    about ``path``, the output being written, and comes out naming it (a failed ``write()``
    carries no file name; the CLI then reports ``PATH: No space left on device``, exit 2)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in WRITE_ERRNOS:
            exc.filename = os.fspath(path)
        raise


FIGURE_SUFFIX = ".png"


def figure_path(text: str | os.PathLike, default_name: str, option: str | None = None) -> Path:
    """Where a figure option (``--plot`` and the like) writes, one rule for every command:

    - a folder -- an existing one, or a path written with a trailing ``/`` (made when the
      figure is written) -- gets ``default_name`` inside it;
    - a path ending ``.png`` (any case) is the file itself;
    - anything else (``plot.pdf``, a bare ``plot`` that is not a folder) is an
      :class:`~prefkit.data.errors.OutputPathError` naming ``option``, the path and this rule
      (exit code 2 in the CLI): nothing is guessed.

    The result is checked with :func:`check_output_path` before any work; nothing is
    created."""
    raw = os.fspath(text)
    path = Path(raw)
    if path.is_dir() or raw.endswith(("/", os.sep)):
        path = path / default_name
    elif path.suffix.lower() != FIGURE_SUFFIX:
        raise OutputPathError(raw, f"expected a file name ending {FIGURE_SUFFIX}, or a folder "
                                   f"(an existing one, or a name ending with '/'), which gets "
                                   f"{default_name}", option)
    return check_output_path(path, option=option)


def _check_replaceable(target: Path) -> None:
    """A dataset output may replace an existing dataset folder or an empty folder, never a
    folder of other files."""
    if target.is_dir() and not is_dataset_folder(target) and any(target.iterdir()):
        raise OutputPathError(target, "the folder exists and is not a dataset folder; refusing "
                                      "to replace it (choose a new folder name)")


def write_records(records: Iterable[Record], path: str | os.PathLike, format: str = "prefkit",
                  *, keep_empty: bool = True) -> WriteReport:
    """Write records in ``format`` to ``path`` (kind of file from the extension, see
    :func:`output_kind`). Records the format cannot hold are counted in the report, never
    silently lost. The file appears atomically (written to a temporary name, then renamed).
    With ``keep_empty=False`` nothing is created (and an existing ``path`` is left as it was)
    when no record was written; ``report.written == 0`` says so.

    The path is checked first (:func:`check_output_path`); a dataset folder replaces an
    existing dataset folder only."""
    fmt = get_format(format)
    kind = output_kind(path)
    target = check_output_path(path, folder=kind == "hf")
    if kind == "hf":
        _check_replaceable(target)
    report = WriteReport(str(path), fmt.name)
    rows = encoded_rows(records, fmt, report)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(path, exc.strerror or _first_line(exc)) from None
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    writer = {"jsonl": write_jsonl_rows, "json-array": write_json_array_rows,
              "parquet": write_parquet_rows, "hf": write_dataset_rows}[kind]
    try:
        with naming_output(path):
            writer(rows, tmp)
            if report.written or keep_empty:
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
    Parquet file next to it (so memory stays bounded, and a full disk is the output's disk).
    Columns stored as JSON text are listed in a small side file in the folder (datasets drops
    Arrow schema metadata)."""
    import datasets
    import pyarrow.parquet as pq

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=".prefkit-") as tmp:
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


def to_dataset(records: Iterable[Record], format: str = "trl-preference", *,
               report: WriteReport | None = None):
    """A ``datasets.Dataset`` of records in a format (e.g. to hand to TRL's trainers).

    Columns come from every row (a field only later records have is a column, null where a
    record lacks it). Records the format cannot hold (a tie in chosen/rejected columns) are
    counted in ``report`` (a :class:`WriteReport`, as :func:`write_records` returns) when one is
    passed, else named with their count in a ``UserWarning``: never lost silently. A column
    Arrow cannot type as one column (text prompts mixed with message lists) is a
    :class:`RecordError` naming the column and the record (a ``Dataset`` has no place for the
    JSON-text form :func:`write_records` uses in files, and TRL would read such text as a plain
    prompt): convert the records to one form, or write them to a file."""
    import datasets

    fmt = get_format(format)
    own = report is None
    report = WriteReport("<dataset>", fmt.name) if own else report
    rows: list[dict] = []
    positions: list[int] = []  # the 1-based input position of each row, for errors
    for position, record in enumerate(records, 1):
        for row in encoded_rows((record,), fmt, report):
            rows.append(row)
            positions.append(position)
    columns = _columns(rows)
    for name in mixed_columns(rows):
        index = _first_conflict(columns[name])
        raise RecordError(
            "to_dataset", positions[index], name,
            "one kind of value per column in every record (text prompts and message lists "
            "cannot share an Arrow column): convert the records to one form, or write them "
            "with write_records, which stores such a column as JSON text",
            WRONG_TYPE, columns[name][index], row_kind="record")
    if own and report.dropped:
        import warnings

        warnings.warn(f"to_dataset: {_dropped_text(report)}", stacklevel=2)
    return datasets.Dataset.from_dict(columns)


def _dropped_text(report: WriteReport) -> str:
    """``3 records the format F cannot hold left out: tie 3 (e.g. id1, id2, id3)``."""
    parts = [f"{reason} {count} (e.g. {', '.join(report.examples.get(reason, []))})"
             for reason, count in report.dropped.items()]
    total = sum(report.dropped.values())
    return (f"{total} record{'s' * (total != 1)} the format {report.format} cannot hold "
            f"left out: {'; '.join(parts)}")


def _first_conflict(values: list) -> int:
    """Index of the first value Arrow cannot type together with the values before it
    (binary search: a prefix that fails stays failing)."""
    import pyarrow as pa

    lo, hi = 0, len(values)  # values[:lo] types, values[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pa.array(values[:mid])
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            hi = mid
    return hi - 1
