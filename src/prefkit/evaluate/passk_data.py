"""Read sampled answers for :mod:`prefkit.evaluate.passk`, checked: JSON Lines (or any source
:func:`prefkit.data.io.iter_rows` reads: a JSON array, Parquet, a dataset folder).

One record per prompt::

    {"prompt": "calc: 3 + 4 * 2 =", "samples": ["1 1", "1 4", "1 1"], "reference": "1 1"}
    {"prompt": "...", "samples": [...], "correct": [true, false, true], "task": "arith"}

* ``prompt``: a string; ``samples``: a non-empty list of strings;
* whether each sample is right: ``correct`` (booleans, one per sample) or ``reference`` (a
  string: a sample is right when it equals the reference after collapsing whitespace), or
  neither when a ``check`` function is given (it scores every sample);
* ``answers`` (optional): each sample's answer for majority voting, a string or null (no
  vote); by default the answer is the sample with its whitespace collapsed;
* ``task`` (optional): a task name, for per-task figures.

``correct`` wins over ``reference`` when a line has both. Every problem is a
:class:`~prefkit.data.errors.RecordError` naming the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.errors import MISSING_FIELD, WRONG_TYPE, Note, RecordError
from ..data.io import iter_rows, row_kind_of, source_kind

__all__ = ["SampleSet", "read_samples"]

Checker = Callable[[str, str], tuple[Hashable | None, bool]]
"""``check(prompt, sample) -> (answer or None, correct)``."""


@dataclass
class SampleSet:
    """Per prompt: its text, each sample's correctness and answer, its task and source line."""

    prompts: list[str] = field(default_factory=list)
    correct: list[list[bool]] = field(default_factory=list)
    answers: list[list[Hashable | None]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _string_list(source: str, line: int, kind: str, data: dict, key: str, *,
                 nullable: bool = False) -> list:
    value = data[key]
    kinds = "strings or nulls" if nullable else "strings"
    ok = isinstance(value, list) and all(
        isinstance(v, str) or (nullable and v is None) for v in value)
    if not ok:
        raise RecordError(source, line, key, f"a list of {kinds}", WRONG_TYPE, value,
                          row_kind=kind)
    return value


def read_samples(path: str | Path, *, check: Checker | None = None,
                 min_samples: int = 1) -> SampleSet:
    """Read and check the file (module docstring); ``check`` scores the samples instead of
    the lines' ``correct`` / ``reference``; every line needs ``min_samples`` samples."""
    source = str(path)
    kind = row_kind_of(source_kind(path))
    out = SampleSet()
    for row in iter_rows(path):
        if row.error is not None:
            raise row.error
        data, line = row.data, row.line
        assert data is not None

        def bad(key: str, expected: str, got: object = ..., code: str = WRONG_TYPE,
                line: int = line) -> RecordError:
            return RecordError(source, line, key, expected, code, got, row_kind=kind)

        for key in ("prompt", "samples"):
            if key not in data:
                raise bad(key, "a string" if key == "prompt" else "a list of strings",
                          code=MISSING_FIELD)
        prompt = data["prompt"]
        if not isinstance(prompt, str):
            raise bad("prompt", "a string", prompt)
        samples = _string_list(source, line, kind, data, "samples")
        if len(samples) < max(1, min_samples):
            raise bad("samples", f"at least {max(1, min_samples)} samples (the largest k)",
                      Note(f"{len(samples)}"))
        n = len(samples)
        answers: list[Hashable | None] = [_norm(s) for s in samples]
        if check is not None:
            scored = [check(prompt, s) for s in samples]
            answers = [a for a, _ in scored]
            correct = [bool(c) for _, c in scored]
        elif "correct" in data:
            correct = data["correct"]
            if not (isinstance(correct, list) and all(isinstance(c, bool) for c in correct)):
                raise bad("correct", "a list of booleans, one per sample", correct)
            if len(correct) != n:
                raise bad("correct", f"{n} booleans (one per sample)", Note(f"{len(correct)}"))
        elif "reference" in data:
            reference = data["reference"]
            if not isinstance(reference, str):
                raise bad("reference", "a string", reference)
            correct = [a == _norm(reference) for a in answers]
        else:
            raise bad("correct", "'correct' (a list of booleans) or 'reference' (a string)",
                      code=MISSING_FIELD)
        if "answers" in data and check is None:
            answers = _string_list(source, line, kind, data, "answers", nullable=True)
            if len(answers) != n:
                raise bad("answers", f"{n} answers (one per sample)", Note(f"{len(answers)}"))
        flags: dict[Hashable, bool] = {}
        for a, c in zip(answers, correct, strict=True):
            if a is not None and flags.setdefault(a, c) != c:
                raise bad("correct", "the same correctness for equal answers (majority "
                          "voting counts answers)", Note(f"answer {a!r} both right and wrong"))
        task = data.get("task", "")
        if not isinstance(task, str):
            raise bad("task", "a string", task)
        out.prompts.append(prompt)
        out.correct.append(correct)
        out.answers.append(answers)
        out.tasks.append(task)
        out.lines.append(line)
    return out
