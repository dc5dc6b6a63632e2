""":class:`VerifiableReward`: a reward source (:mod:`prefkit.rewards.sources`' interface)
built from a checker, with the status counts of its last call.

``check(reference, completion) -> CheckResult`` is applied to every sample; the reference of a
prompt comes from ``references`` -- a mapping from the prompt (text, or a conversation keyed
by its JSON) or a function of the prompt; ``None`` for checkers that need none (a regex). A
prompt without a reference scores ``error`` (all of them without: a ValueError naming the
first, since nothing could be scored). ``values`` overrides the value of a status (e.g.
``{"timeout": -1.0}``); by default a sample's value is its result's.

:func:`read_references` reads the references of a prompts file: the ``answer`` (or
``reference``, ``tests``, ``solution``) field of each row, keyed by its ``prompt``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .result import STATUSES, CheckResult, count_statuses

__all__ = ["REFERENCE_FIELDS", "VerifiableReward", "extract_code", "prompt_key",
           "read_references"]

#: the fields of a prompts row that hold its reference, first present wins
REFERENCE_FIELDS = ("answer", "reference", "tests", "solution")


def prompt_key(prompt: Any) -> str:
    """The lookup key of a prompt: its text, or a conversation's JSON (keys sorted)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


@dataclass
class VerifiableReward:
    """Rewards ``[P, G]`` from ``check(reference, completion)`` (module docstring).
    ``workers`` > 1 checks the samples of a call on that many threads (each thread has its own
    checker child process, so time limits stay per sample)."""

    check: Callable[[Any, str], CheckResult]
    references: Mapping[str, Any] | Callable[[Any], Any] | None = None
    name: str = "verifiable"
    values: Mapping[str, float] = field(default_factory=dict)
    workers: int = 1
    last_results: list[list[CheckResult]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.values) - set(STATUSES)
        if unknown:
            raise ValueError(f"values for unknown statuses {sorted(unknown)}; statuses are "
                             f"{', '.join(STATUSES)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def reference_of(self, prompt: Any) -> tuple[bool, Any]:
        if self.references is None:
            return True, None
        if callable(self.references):
            ref = self.references(prompt)
            return ref is not None, ref
        key = prompt_key(prompt)
        return key in self.references, self.references.get(key)

    def _one(self, item: tuple[bool, Any, str]) -> CheckResult:
        found, ref, completion = item
        if not found:
            return CheckResult.error("no reference for this prompt")
        try:
            return self.check(ref, completion)
        except Exception as exc:  # noqa: BLE001 -- a checker bug must not stop training
            return CheckResult.error(f"checker raised {type(exc).__name__}: {exc}"[:300])

    def results(self, prompts: Sequence[Any], completions: Sequence[Sequence[str]]
                ) -> list[list[CheckResult]]:
        """Every sample's :class:`CheckResult` (also kept as ``last_results``)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion groups")
        refs = [self.reference_of(p) for p in prompts]
        if prompts and not any(found for found, _ in refs):
            raise ValueError(f"reward {self.name}: no reference answer for any prompt (first: "
                             f"{str(prompts[0])[:80]!r}); give the prompts file's 'answer' "
                             "field or references=")
        items = [(found, ref, c) for (found, ref), cs in zip(refs, completions, strict=True)
                 for c in cs]
        if self.workers > 1 and len(items) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                flat = list(pool.map(self._one, items))
        else:
            flat = [self._one(item) for item in items]
        out, i = [], 0
        for cs in completions:
            out.append(flat[i:i + len(cs)])
            i += len(cs)
        self.last_results = out
        return out

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None):
        import torch

        sizes = {len(c) for c in completions}
        if len(sizes) > 1:
            raise ValueError(f"every prompt needs the same number of completions, got "
                             f"{sorted(sizes)}")
        results = self.results(prompts, completions)
        values = [[self.values.get(r.status, r.value) for r in rs] for rs in results]
        return torch.tensor(values, dtype=torch.float32).reshape(len(prompts),
                                                                 sizes.pop() if sizes else 0)

    def status_counts(self) -> dict[str, int]:
        """``{status: count}`` of the last call (every status, zeros included)."""
        return count_statuses(r for rs in self.last_results for r in rs)


_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The last fenced code block of a completion (```python ... ```), else the whole text."""
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else completion


def read_references(path: str, fields: Sequence[str] = REFERENCE_FIELDS) -> dict[str, Any]:
    """``{prompt key: reference}`` from a prompts file's rows (module docstring); rows without
    any of ``fields`` are left out. A ``.txt`` prompts file has none: ``{}``."""
    from ...data.io import iter_rows

    if path.split("::", 1)[0].endswith(".txt"):
        return {}
    out: dict[str, Any] = {}
    for row in iter_rows(path):
        if row.error is not None:
            raise row.error
        data = row.data
        if not isinstance(data, dict) or "prompt" not in data:
            continue
        for name in fields:
            if data.get(name) is not None:
                out[prompt_key(data["prompt"])] = data[name]
                break
    return out
