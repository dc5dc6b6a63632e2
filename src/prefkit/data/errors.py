"""Errors for bad feedback data: each names the file, the line (or row), the field and what was
expected, so a user can fix the input without guessing."""

from __future__ import annotations

from typing import Any

# Error classes (``code``), one per kind of problem `prefkit data validate` reports.
MALFORMED_JSON = "malformed_json"
NON_UTF8 = "non_utf8"
MISSING_FIELD = "missing_field"
EMPTY_FIELD = "empty_field"
WRONG_TYPE = "wrong_type"
IDENTICAL_RESPONSES = "identical_responses"
UNKNOWN_OUTCOME = "unknown_outcome"
RANKING_OUT_OF_RANGE = "ranking_index_out_of_range"
RANKING_REPEATED = "ranking_index_repeated"
OUT_OF_SCALE = "out_of_scale"
DUPLICATE_RECORD = "duplicate_record"
UNKNOWN_FORMAT = "unknown_format"
TOO_DEEP = "too_deep"
"""JSON nested deeper than :data:`prefkit.data.io.MAX_NESTING` levels."""
UNREADABLE_FILE = "unreadable_file"
"""A corrupt Parquet file or Arrow shard, or a folder that is not a dataset folder."""
UNKNOWN_SPLIT = "unknown_split"
"""A ``FOLDER::split`` (or ``--split``) the dataset folder does not have, or none given."""
NO_RECORDS = "no_records"
"""An empty file, array or dataset: nothing to read."""

ERROR_CODES = (
    MALFORMED_JSON, NON_UTF8, MISSING_FIELD, EMPTY_FIELD, WRONG_TYPE, IDENTICAL_RESPONSES,
    UNKNOWN_OUTCOME, RANKING_OUT_OF_RANGE, RANKING_REPEATED, OUT_OF_SCALE, DUPLICATE_RECORD,
    UNKNOWN_FORMAT, TOO_DEEP, UNREADABLE_FILE, UNKNOWN_SPLIT, NO_RECORDS,
)


class Note(str):
    """A description in place of a value (``got=Note("an empty folder")``): shown as is, without
    quotes, up to 200 characters."""

    def __repr__(self) -> str:
        return str(self)


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, Note):
        limit = max(limit, 200)
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a {type(value).__name__} nested too deep to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FieldError(ValueError):
    """A problem with one field of one record, before its location is known."""

    def __init__(self, field: str, expected: str, got: Any = ..., code: str = WRONG_TYPE):
        self.field = field
        self.expected = expected
        self.got = got
        self.code = code
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"field '{self.field}': expected {self.expected}"
        if self.got is not ...:
            text += f", got {_short(self.got)}"
        return text


class RecordError(ValueError):
    """A problem with one record at a known place: ``source`` (file) and ``line`` (1-based line
    of a JSONL file, or row number of a Parquet file / dataset)."""

    def __init__(
        self,
        source: str,
        line: int | None,
        field: str | None,
        expected: str,
        code: str,
        got: Any = ...,
        row_kind: str = "line",
    ):
        self.source = source
        self.line = line
        self.field = field
        self.expected = expected
        self.code = code
        self.got = got
        self.row_kind = row_kind
        super().__init__(str(self))

    def __reduce__(self):  # picklable across worker processes
        return (RecordError, (self.source, self.line, self.field, self.expected, self.code,
                              self.got, self.row_kind))

    @classmethod
    def from_field(cls, err: FieldError, source: str, line: int | None, row_kind: str = "line"):
        return cls(source, line, err.field, err.expected, err.code, err.got, row_kind)

    @property
    def where(self) -> str:
        if self.line is None:
            return self.source
        if self.row_kind == "line":
            return f"{self.source}:{self.line}"
        return f"{self.source} {self.row_kind} {self.line}"

    def __str__(self) -> str:
        text = f"{self.where}: [{self.code}] "
        if self.field:
            text += f"field '{self.field}': "
        text += f"expected {self.expected}"
        if self.got is not ...:
            text += f", got {_short(self.got)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.source,
            self.row_kind: self.line,
            "field": self.field,
            "code": self.code,
            "expected": self.expected,
            "message": str(self),
        }
        if self.got is not ...:
            out["got"] = _short(self.got, 200)
        return out


class OutputPathError(ValueError):
    """An output path that cannot be written (a missing folder that cannot be made, a path
    under a file, no permission, a folder where a file is expected or the reverse); ``option``
    names the command-line option that gave it, when there is one."""

    def __init__(self, path: Any, reason: str, option: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.option = option
        prefix = f"{option}: " if option else ""
        super().__init__(f"{prefix}cannot write {self.path}: {reason}")


class Unrepresentable(ValueError):
    """A record that a target format cannot hold (e.g. a tie in TRL's chosen/rejected columns).
    ``reason`` is a short label used in conversion reports."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
