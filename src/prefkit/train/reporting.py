"""Where the loop's numbers go: ``metrics.jsonl``, a console line, a rich progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["JsonlWriter", "ProgressBar", "format_record", "keep_records_up_to"]


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the line parseable
    return v


def _record(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None for a blank line or one that is not a whole JSON
    object (a line torn by a run killed while writing, or by a full disk)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def keep_records_up_to(path: str | Path, key: str, last: int) -> None:
    """Rewrite the JSON-lines file ``path`` keeping the records whose ``key`` is at most
    ``last`` (a record without ``key`` counts as 0), in order; blank and torn lines (not a whole
    JSON object) and records whose ``key`` is not a number go too. A resumed run calls this
    before appending, so the records of the steps or iterations it replays are not there twice.
    A missing file stays missing."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        record = _record(line)
        position = None if record is None else record.get(key, 0)
        if isinstance(position, int | float) and position <= last:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class JsonlWriter:
    """Appends one JSON object per line to ``path`` (main process only).

    A fresh run (``truncate_after_step`` None) starts an empty file; a resumed one keeps the
    lines up to its checkpoint's step (:func:`keep_records_up_to`)."""

    def __init__(self, path: str | Path, *, truncate_after_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None:
            keep_records_up_to(self.path, "step", truncate_after_step)
        else:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")


def format_record(record: dict[str, Any], max_steps: int) -> str:
    """A compact one-line rendering of a logged record."""
    parts = [f"step {record.get('step')}/{max_steps}"]
    for k, v in record.items():
        if k == "step":
            continue
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    return " | ".join(parts)


class ProgressBar:
    """A rich progress bar with ETA on stderr; a no-op when disabled or stderr is not a TTY.

    Console lines go through :meth:`print` so they do not tear the bar.
    """

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._progress = None
        self.enabled = enabled and sys.stderr.isatty()
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task("train", total=total, completed=initial, info="")
        self._progress.start()

    def update(self, step: int, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)

    def print(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
