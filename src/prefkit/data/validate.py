"""`prefkit data validate`: check every record of a feedback file.

Checks: malformed JSON, non-UTF-8 bytes, missing or empty fields, wrong types, identical
chosen/rejected (or response A/B, output_1/output_2, model_a/model_b), unknown outcome values,
ranking indices out of range or repeated, scores outside their scale, and duplicate records (a
line identical to an earlier valid line, or an ``id`` used before). Every error names the file,
line (or row), field and what was expected.

With ``skip_invalid`` the good lines go to ``output_path`` and the rejected lines, byte for byte,
to ``rejected_path``. Memory stays flat as files grow (duplicates are found with a fixed-size
Bloom filter and an exact second pass over candidates only; see :mod:`prefkit.data.dedupe`).
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import orjson

from .dedupe import DuplicateFinder
from .errors import DUPLICATE_RECORD, RecordError
from .formats import Format, detect_format
from .io import iter_decoded, row_kind_of, source_kind

CHUNK = 16384


@dataclass
class ValidationReport:
    source: str
    format: str | None = None
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    kinds: Counter = field(default_factory=Counter)
    error_counts: Counter = field(default_factory=Counter)
    errors: list[RecordError] = field(default_factory=list)
    max_errors: int = 100
    output_path: str | None = None
    rejected_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.invalid == 0

    def add_error(self, error: RecordError) -> None:
        self.invalid += 1
        self.error_counts[error.code] += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "format": self.format,
            "ok": self.ok,
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "kinds": dict(self.kinds),
            "error_counts": dict(self.error_counts),
            "errors": [e.to_dict() for e in sorted(self.errors, key=lambda e: e.line or 0)],
            "errors_listed": len(self.errors),
            "output": self.output_path,
            "rejected": self.rejected_path,
        }


def dedupe_key(record, raw: bytes | None, data: dict | None) -> Any:
    """Identity of a record for duplicate detection: its explicit id, else its exact bytes
    (the line without surrounding whitespace, or the canonical JSON of a Parquet/Arrow row)."""
    if record.id is not None:
        return ("id", record.id)
    if raw is not None:
        return raw.strip()
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def _line_bytes(raw: bytes | None, data: dict | None) -> bytes:
    if raw is not None:
        return raw if raw.endswith(b"\n") else raw + b"\n"
    return orjson.dumps(data) + b"\n"


def _duplicate_error(source: str, row_kind: str, line: int, record, first: int):
    if record.id is not None:
        return RecordError(source, line, "id", f"a unique id (first used at {row_kind} "
                           f"{first})", DUPLICATE_RECORD, record.id, row_kind=row_kind)
    return RecordError(source, line, None, f"a record not identical to {row_kind} {first}",
                       DUPLICATE_RECORD, row_kind=row_kind)


def validate_file(
    source: Any,
    format: str | Format | None = None,
    *,
    split: str | None = None,
    skip_invalid: bool = False,
    output_path: str | os.PathLike | None = None,
    rejected_path: str | os.PathLike | None = None,
    check_duplicates: bool = True,
    max_errors: int = 100,
) -> ValidationReport:
    """Validate every record of ``source``; see the module docstring. With ``skip_invalid``
    writes valid rows to ``output_path`` and rejected rows to ``rejected_path`` when given."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    row_kind = row_kind_of(source_kind(source))
    report = ValidationReport(name, max_errors=max_errors)
    if isinstance(format, (str, Format)):
        report.format = format if isinstance(format, str) else format.name
    finder = DuplicateFinder() if check_duplicates else None
    files = ExitStack()
    out = files.enter_context(open(output_path, "wb")) if skip_invalid and output_path else None
    rej = (files.enter_context(open(rejected_path, "wb"))
           if skip_invalid and rejected_path else None)
    report.output_path = str(output_path) if out else None
    report.rejected_path = str(rejected_path) if rej else None
    pending: list[tuple] = []
    held: dict[int, tuple] = {}  # candidate duplicates, resolved after the pass
    kinds = report.kinds
    get_kind = attrgetter("kind")

    def flush() -> None:
        flagged: set[int] = set()
        if finder is not None and pending:
            flagged = set(finder.add_chunk(
                [p[0] for p in pending], [hash(dedupe_key(p[1], p[2], p[3])) for p in pending]))
        if flagged:
            for p in pending:
                if p[0] in flagged:
                    held[p[0]] = p
            kept = [p for p in pending if p[0] not in flagged]
        else:
            kept = pending
        kinds.update(map(get_kind, [p[1] for p in kept]))
        if out is not None:
            out.writelines(_line_bytes(p[2], p[3]) for p in kept)
        pending.clear()

    rows = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # records hold no cycles; collecting while buffering chunks costs ~30%
    try:
        for item in iter_decoded(source, format, split=split):
            rows += 1
            if item[4] is not None:
                report.add_error(item[4])
                if rej is not None:
                    rej.write(_line_bytes(item[2], item[3]))
                continue
            if report.format is None:
                report.format = detect_format(item[3]).name
            pending.append(item)
            if len(pending) >= CHUNK:
                flush()
        flush()
        duplicates: dict[int, int] = {}
        if finder is not None and finder.candidates:
            duplicates = finder.resolve(_keys(source, format, split))
        for line, (_, record, raw, data, _) in sorted(held.items()):
            if line in duplicates:
                report.add_error(_duplicate_error(name, row_kind, line, record, duplicates[line]))
                if rej is not None:
                    rej.write(_line_bytes(raw, data))
                continue
            kinds[record.kind] += 1
            if out is not None:
                out.write(_line_bytes(raw, data))
        report.rows = rows
        report.valid = rows - report.invalid
    finally:
        files.close()
        if gc_was_enabled:
            gc.enable()
    return report


def _keys(source: Any, format, split) -> Iterator[tuple[int, Any]]:
    for line, record, raw, data, error in iter_decoded(source, format, split=split):
        if error is None:
            yield line, dedupe_key(record, raw, data)
