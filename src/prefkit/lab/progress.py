"""Stage progress of a lab run: one line per event, and where the run is (for an interrupt).

:func:`prefkit.lab.pipeline.run_lab` reports each stage through a :class:`LabProgress`: a stage
that runs writes ``NAME: DETAIL ...`` when it starts and ``NAME: done in 4.2 s (SUMMARY)`` when
it ends; a stage read from the cache writes ``NAME: cached``. Every line starts with the time
since the run began (``lab 01:07 |``). :attr:`LabProgress.current` is the stage in progress, so
an interrupted run can say where it stopped; :attr:`LabProgress.stage_dir` is the folder of its
cached stages.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["LabProgress", "StageInfo", "to_stream"]


class StageInfo:
    """What a running stage may add to its closing line (``summary``)."""

    def __init__(self) -> None:
        self.summary = ""


class LabProgress:
    """Progress lines of a lab run, passed to ``write`` (default: dropped)."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write
        self._start = time.perf_counter()
        self.current: str | None = None
        self.stage_dir: str | None = None
        self.finished: list[str] = []

    def line(self, text: str) -> None:
        """Write ``text`` with the elapsed-time prefix."""
        if self._write is not None:
            seconds = int(time.perf_counter() - self._start)
            self._write(f"lab {seconds // 60:02d}:{seconds % 60:02d} | {text}")

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[StageInfo]:
        """Run a stage: its start line, then (if it ends without an exception) its done line
        with the :class:`StageInfo` summary the body set. While it runs it is :attr:`current`."""
        info = StageInfo()
        self.current = name
        self.line(f"{name}: {detail} ..." if detail else f"{name} ...")
        start = time.perf_counter()
        yield info
        took = time.perf_counter() - start
        self.line(f"{name}: done in {took:.1f} s" + (f" ({info.summary})" if info.summary
                                                      else ""))
        self.finished.append(name)
        self.current = None

    def cached(self, name: str, detail: str = "") -> None:
        """A stage read from the cache."""
        self.line(f"{name}: cached" + (f" ({detail})" if detail else ""))
        self.finished.append(name)

    def where(self) -> str:
        """Where the run is: the stage in progress, else after the last finished one."""
        if self.current is not None:
            return f"during {self.current}"
        return f"after {self.finished[-1]}" if self.finished else "before the first stage"


def to_stream(stream: TextIO | None = None) -> Callable[[str], None]:
    """A ``write`` for :class:`LabProgress` that prints each line to ``stream`` (default: the
    ``sys.stderr`` of the moment this is called, so the lines still show while the lab silences
    the trainers' own output), flushed."""
    out = stream if stream is not None else sys.stderr

    def write(text: str) -> None:
        print(text, file=out, flush=True)

    return write
