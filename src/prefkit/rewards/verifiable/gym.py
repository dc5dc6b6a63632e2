"""reasoning-gym tasks (PyPI ``reasoning-gym``: procedurally generated, CPU, offline) as
prompts plus a checker.

:func:`reasoning_gym_source` draws ``n`` entries of a task with a seed (the same entries for
the same task, n, seed and options) and returns a :class:`GymTask`: the prompts (the task's
question plus an instruction to put the final answer in ``<answer>...</answer>``), the entries
as references, and a :class:`~.source.VerifiableReward` whose checker is the task's own
``score_answer`` (1.0 right, partial credit where the task gives it):

* the answer is the last ``<answer>...</answer>``, else the last ``\\boxed{}``, else the last
  "answer is X", else the whole completion; an empty one is ``unparsed``;
* ``ok`` when the score is 1, else ``wrong`` with the score as its value.

:meth:`GymTask.write_jsonl` writes the prompts with their ``answer`` and ``metadata`` (the
``prefkit train online --prompts FILE --reward verifiable:rg:TASK`` route): the reward reads
the entries back from that file.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .extract import extract_boxed
from .result import CheckResult
from .source import VerifiableReward, prompt_key

__all__ = ["ANSWER_INSTRUCTION", "GymTask", "check_gym", "reasoning_gym_source"]

ANSWER_INSTRUCTION = "\nGive your final answer inside <answer></answer> tags."
_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def gym_answer(completion: str) -> str:
    """The answer part of a completion (module docstring)."""
    tags = _TAG.findall(completion)
    if tags:
        return tags[-1].strip()
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed
    phrases = _ANSWER_IS.findall(completion)
    if phrases:
        return phrases[-1].splitlines()[0].strip().rstrip(".")
    return completion.strip()


def _dataset(task: str, n: int, seed: int, options: dict | None = None) -> Any:
    import reasoning_gym

    try:
        return reasoning_gym.create_dataset(task, size=n, seed=seed, **(options or {}))
    except (KeyError, ValueError) as exc:
        from reasoning_gym.factory import DATASETS

        if task not in DATASETS:
            raise ValueError(f"unknown reasoning-gym task {task!r}; tasks: "
                             f"{', '.join(sorted(DATASETS)[:12])}, ...") from None
        raise ValueError(f"reasoning-gym task {task!r}: {exc}") from None


def check_gym(entry: dict, completion: str, *, task: str) -> CheckResult:
    """The task's own ``score_answer`` on the completion's answer (module docstring)."""
    answer = gym_answer(completion)
    if not answer:
        return CheckResult.unparsed("empty answer")
    score = float(_scorer(task).score_answer(answer, entry))
    if score >= 1.0:
        return CheckResult.ok(answer[:80], value=score)
    return CheckResult.wrong(f"{answer[:80]!r} scored {score:g}", value=score)


@functools.cache
def _scorer(task: str) -> Any:
    """A one-entry dataset of ``task`` (default options) to call ``score_answer`` on: it reads
    the answer and the entry (its ``answer`` and ``metadata``), not the dataset's items."""
    return _dataset(task, 1, 0)


@dataclass
class _GymCheck:
    task: str

    def __call__(self, entry: Any, completion: str) -> CheckResult:
        return check_gym(entry, completion, task=self.task)


@dataclass
class GymTask:
    """A reasoning-gym task's prompts, entries and reward (module docstring)."""

    task: str
    prompts: list[str]
    entries: list[dict]
    reward: VerifiableReward

    def write_jsonl(self, path: str | Path) -> Path:
        """One row per prompt: ``{"prompt", "answer", "metadata"}``."""
        path = Path(path)
        with path.open("w") as f:
            for prompt, entry in zip(self.prompts, self.entries, strict=True):
                f.write(json.dumps({"prompt": prompt, "answer": entry["answer"],
                                    "metadata": entry["metadata"]}, default=list) + "\n")
        return path


def gym_reward(task: str, entries: dict[str, dict], *, workers: int = 1) -> VerifiableReward:
    """A reward over ``{prompt key: entry}`` scored by ``task``'s ``score_answer``."""
    return VerifiableReward(_GymCheck(task), entries, name=f"verifiable:rg:{task}",
                            workers=workers)


DEFAULT_ENTRIES = 1000
"""Entries drawn for ``rg:TASK`` when the spec gives no ``N``."""


def reasoning_gym_source(task: str, n: int, seed: int = 0, *, options: dict | None = None,
                         instruction: str = ANSWER_INSTRUCTION) -> GymTask:
    """``n`` entries of reasoning-gym's ``task`` (module docstring)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dataset = _dataset(task, n, seed, options)
    entries = [dict(dataset[i]) for i in range(n)]
    prompts = [e["question"] + instruction for e in entries]
    return GymTask(task, prompts, entries,
                   gym_reward(task, {prompt_key(p): e for p, e in zip(prompts, entries,
                                                                        strict=True)}))


def entries_from_rows(references: dict[str, Any], rows_metadata: dict[str, Any]
                      ) -> dict[str, dict]:
    """``{prompt key: entry}`` from a prompts file's answers and metadata."""
    return {key: {"question": key, "answer": answer, "metadata": rows_metadata.get(key, {})}
            for key, answer in references.items()}


def gym_reward_for(task: str, *, n: int = DEFAULT_ENTRIES, seed: int = 0,
                   prompts_path: str | None = None, workers: int = 1) -> VerifiableReward:
    """The reward of ``verifiable:rg:TASK[:N[:SEED]]``: the entries of a prompts file written
    by :meth:`GymTask.write_jsonl` (its ``answer`` and ``metadata`` fields) when given and
    present, else the ``n`` entries drawn with ``seed`` (the prompts of
    ``reasoning_gym_source(task, n, seed)``)."""
    from .source import read_references

    if prompts_path is not None:
        answers = read_references(prompts_path, fields=("answer",))
        metadata = read_references(prompts_path, fields=("metadata",))
        if answers and metadata:
            _scorer(task)  # an unknown task fails here, before training
            return gym_reward(task, entries_from_rows(answers, metadata), workers=workers)
    reward = reasoning_gym_source(task, n, seed).reward
    reward.workers = workers
    return reward
