"""Lab tasks with verifiable answers: multi-step arithmetic, sorting and counting.

Each task is a :class:`~prefkit.lab.tasks.Task` (prompts, demonstrations of adjustable quality,
a word vocabulary for :func:`prefkit.models.tokenizer.word_level_tokenizer`) whose answer is
right or wrong, with nothing in between:

* ``solve(prompt)`` computes the true answer (a value), ``reference(prompt)`` writes it;
* ``check(prompt, response)`` parses the response and compares VALUES: a :class:`Check` with
  the parsed ``answer`` (``None`` when it does not parse) and a ``status`` -- ``"ok"``,
  ``"wrong"`` (parsed, another value) or ``"unparsed"`` (not an answer of this task's format,
  extra words included);
* ``gold_reward(prompt, response)`` is the checker: 1.0 when ``ok``, else 0.0;
* ``answer(prompt, response)`` is the parsed value, the vote of majority voting
  (:func:`prefkit.evaluate.passk.maj_at_k`).

Numbers in arithmetic and counting answers are written digit by digit with an optional
leading ``-`` (``-12`` is ``"- 1 2"``), so a vocabulary of ten digits covers every value.
Difficulty knobs (``steps``, list lengths, symbol counts) set how far a small SFT model starts
below the ceiling; demonstrations of quality ``q < 1`` make the mistakes described in each
class, so an SFT model imitating them is right about as often as ``q`` allows or less.

Registered in :data:`prefkit.lab.tasks.TASKS` as ``arith``, ``sort_exact`` and ``count``.
:func:`verifiable_monitor` turns a task into per-iteration statistics of online training
(accuracy, unparsed share, pass@k, maj@k per prompt).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .tasks import TASKS, Task

__all__ = [
    "OK",
    "UNPARSED",
    "VERIFIABLE_TASKS",
    "WRONG",
    "ArithmeticTask",
    "Check",
    "CountTask",
    "ExactSortTask",
    "VerifiableTask",
    "format_int",
    "parse_int",
    "verifiable_monitor",
]

OK, WRONG, UNPARSED = "ok", "wrong", "unparsed"
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Check:
    """The verdict of a checker: ``status`` (``"ok"`` / ``"wrong"`` / ``"unparsed"``) and the
    parsed ``answer`` (``None`` when unparsed). Its ``value`` is the reward (1.0 for ``ok``,
    else 0.0) and ``detail`` the answer as text, as in
    :class:`prefkit.rewards.verifiable.CheckResult` (not imported here: the lab's tasks load
    without torch), so a lab check passes wherever a value and a status are read."""

    status: str
    answer: Hashable | None

    @property
    def value(self) -> float:
        """The reward: 1.0 for ``ok``, 0.0 otherwise."""
        return 1.0 if self.status == OK else 0.0

    @property
    def detail(self) -> str:
        """The parsed answer as text (empty when unparsed)."""
        return "" if self.answer is None else repr(self.answer)


def format_int(value: int) -> str:
    """``-12`` -> ``"- 1 2"``: digits as words, a leading ``-`` word when negative."""
    digits = " ".join(str(abs(value)))
    return f"- {digits}" if value < 0 else digits


def parse_int(text: str) -> int | None:
    """The inverse of :func:`format_int` (leading zeros allowed: ``"0 7"`` is 7); ``None``
    unless the text is an optional ``-`` followed by one or more single-digit words."""
    words = text.split()
    sign = 1
    if words and words[0] == "-":
        sign, words = -1, words[1:]
    if not words or any(w not in DIGITS for w in words):
        return None
    return sign * int("".join(words))


class VerifiableTask(Task):
    """A task whose answers are checked exactly (module docstring). Subclasses define
    ``solve``, ``reference``, ``parse`` and the :class:`~prefkit.lab.tasks.Task` methods."""

    def solve(self, prompt: str) -> Hashable:
        """The true answer to ``prompt`` as a value."""
        raise NotImplementedError

    def reference(self, prompt: str) -> str:
        """The true answer written as a response."""
        raise NotImplementedError

    def parse(self, response: str) -> Hashable | None:
        """The value a response states, ``None`` when it is not in the answer format."""
        raise NotImplementedError

    def check(self, prompt: str, response: str) -> Check:
        """Parse ``response`` and compare its value with :meth:`solve`."""
        value = self.parse(response)
        if value is None:
            return Check(UNPARSED, None)
        return Check(OK if value == self.solve(prompt) else WRONG, value)

    def answer(self, prompt: str, response: str) -> Hashable | None:
        """The parsed value of ``response`` (its vote in majority voting)."""
        return self.check(prompt, response).answer

    def gold_reward(self, prompt: str, response: str) -> float:
        """The checker as a reward: 1.0 when the answer is right, else 0.0."""
        return self.check(prompt, response).value

    def demonstration(self, prompt: str, rng: random.Random, quality: float = 1.0) -> str:
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        if rng.random() < quality:
            return self.reference(prompt)
        return self._mistake(prompt, rng)

    def _mistake(self, prompt: str, rng: random.Random) -> str:
        raise NotImplementedError


def _words_after(prompt: str, head: str, what: str) -> list[str]:
    words = prompt.split()
    if not words or words[0] != head:
        raise ValueError(f"not {what} prompt: {prompt!r}")
    return words[1:]


# ---------------------------------------------------------------------------------------------
# arithmetic


ARITH_OPS: tuple[str, ...] = ("+", "-", "*")


def evaluate_expression(words: list[str]) -> int:
    """Value of ``a op b op c ...`` (single-digit operands, ``+ - *``) with the usual
    precedence: products first, then sums and differences left to right."""
    terms: list[int] = [int(words[0])]
    signs: list[int] = [1]
    for op, operand in zip(words[1::2], words[2::2], strict=True):
        if op == "*":
            terms[-1] *= int(operand)
        else:
            terms.append(int(operand))
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms, strict=True))


def _left_to_right(words: list[str]) -> int:
    value = int(words[0])
    for op, operand in zip(words[1::2], words[2::2], strict=True):
        b = int(operand)
        value = value + b if op == "+" else value - b if op == "-" else value * b
    return value


@dataclass(frozen=True)
class ArithmeticTask(VerifiableTask):
    """``"calc: 3 + 4 * 2 - 5 ="`` -> ``"6"`` (``*`` before ``+``/``-``; digit words).

    Exactly ``steps`` operators, each drawn from ``ops``, between operands drawn from
    ``0..max_operand`` (at most 9: one word each). Demonstrations of quality ``q`` are right
    with probability ``q``; otherwise half the time the expression evaluated left to right
    (ignoring precedence, which may happen to be right) and half the time the right value
    off by 1 or 2 either way.
    """

    name: ClassVar[str] = "arith"
    steps: int = 2
    max_operand: int = 9
    ops: str = "+-*"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 1 <= self.max_operand <= 9:
            raise ValueError(f"max_operand must be in 1..9, got {self.max_operand}")
        if not self.ops or any(o not in ARITH_OPS for o in self.ops):
            raise ValueError(f"ops must be a non-empty string of {''.join(ARITH_OPS)!r}")

    def _expression(self, prompt: str) -> list[str]:
        words = _words_after(prompt, "calc:", "an arithmetic")
        if len(words) < 4 or words[-1] != "=" or len(words) % 2:
            raise ValueError(f"not an arithmetic prompt: {prompt!r}")
        return words[:-1]

    def sample_prompt(self, rng: random.Random) -> str:
        words = [str(rng.randint(0, self.max_operand))]
        for _ in range(self.steps):
            words += [rng.choice(self.ops), str(rng.randint(0, self.max_operand))]
        return "calc: " + " ".join(words) + " ="

    def solve(self, prompt: str) -> int:
        return evaluate_expression(self._expression(prompt))

    def reference(self, prompt: str) -> str:
        return format_int(self.solve(prompt))

    def parse(self, response: str) -> int | None:
        return parse_int(response)

    def _mistake(self, prompt: str, rng: random.Random) -> str:
        if rng.random() < 0.5:
            return format_int(_left_to_right(self._expression(prompt)))
        return format_int(self.solve(prompt) + rng.choice((-2, -1, 1, 2)))

    def vocabulary(self) -> list[str]:
        return ["calc:", *DIGITS, *ARITH_OPS, "="]


# ---------------------------------------------------------------------------------------------
# sort (exact)


@dataclass(frozen=True)
class ExactSortTask(VerifiableTask):
    """``"sort: 7 3 9 1"`` -> ``"1 3 7 9"``, right only when the whole list is.

    Prompts hold ``min_len..max_len`` distinct numbers from ``0..max_value`` (one word
    each). A response parses when every word is a number of ``0..max_value``; it is right
    when it is the sorted list. Demonstrations of quality ``q`` are right with probability
    ``q``; otherwise the sorted list with one random adjacent pair swapped, or with one
    number left out (half the time each).
    """

    name: ClassVar[str] = "sort_exact"
    min_len: int = 4
    max_len: int = 7
    max_value: int = 19

    def __post_init__(self) -> None:
        if not 2 <= self.min_len <= self.max_len <= self.max_value + 1:
            raise ValueError("need 2 <= min_len <= max_len <= max_value + 1")

    def _numbers(self, prompt: str) -> list[int]:
        return [int(w) for w in _words_after(prompt, "sort:", "a sort")]

    def sample_prompt(self, rng: random.Random) -> str:
        n = rng.randint(self.min_len, self.max_len)
        return "sort: " + " ".join(str(x) for x in rng.sample(range(self.max_value + 1), n))

    def solve(self, prompt: str) -> tuple[int, ...]:
        return tuple(sorted(self._numbers(prompt)))

    def reference(self, prompt: str) -> str:
        return " ".join(str(x) for x in self.solve(prompt))

    def parse(self, response: str) -> tuple[int, ...] | None:
        words = response.split()
        numbers = {str(i) for i in range(self.max_value + 1)}
        if not words or any(w not in numbers for w in words):
            return None
        return tuple(int(w) for w in words)

    def _mistake(self, prompt: str, rng: random.Random) -> str:
        out = list(self.solve(prompt))
        i = rng.randrange(len(out) - 1)
        if rng.random() < 0.5:
            out[i], out[i + 1] = out[i + 1], out[i]
        else:
            del out[i]
        return " ".join(str(x) for x in out)

    def vocabulary(self) -> list[str]:
        return ["sort:", *(str(i) for i in range(self.max_value + 1))]


# ---------------------------------------------------------------------------------------------
# count


COUNT_SYMBOLS: tuple[str, ...] = ("a", "b", "c", "d", "e", "f", "g", "h")


@dataclass(frozen=True)
class CountTask(VerifiableTask):
    """``"count: b in a b a c b"`` -> ``"2"`` (digit words).

    The list holds ``min_len..max_len`` symbols drawn uniformly from the first ``n_symbols``
    of ``a b c d e f g h``; the symbol to count is drawn from the same ones (it may not
    occur: the answer is then 0). Demonstrations of quality ``q`` are right with probability
    ``q``, otherwise off by one (up or down, never below 0).
    """

    name: ClassVar[str] = "count"
    min_len: int = 6
    max_len: int = 12
    n_symbols: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError("need 1 <= min_len <= max_len")
        if not 1 <= self.n_symbols <= len(COUNT_SYMBOLS):
            raise ValueError(f"n_symbols must be in 1..{len(COUNT_SYMBOLS)}")

    def _parts(self, prompt: str) -> tuple[str, list[str]]:
        words = _words_after(prompt, "count:", "a count")
        if len(words) < 2 or words[1] != "in":
            raise ValueError(f"not a count prompt: {prompt!r}")
        return words[0], words[2:]

    def sample_prompt(self, rng: random.Random) -> str:
        symbols = COUNT_SYMBOLS[: self.n_symbols]
        n = rng.randint(self.min_len, self.max_len)
        items = [rng.choice(symbols) for _ in range(n)]
        return f"count: {rng.choice(symbols)} in " + " ".join(items)

    def solve(self, prompt: str) -> int:
        target, items = self._parts(prompt)
        return items.count(target)

    def reference(self, prompt: str) -> str:
        return format_int(self.solve(prompt))

    def parse(self, response: str) -> int | None:
        return parse_int(response)

    def _mistake(self, prompt: str, rng: random.Random) -> str:
        value = self.solve(prompt)
        return format_int(value + 1 if value == 0 or rng.random() < 0.5 else value - 1)

    def vocabulary(self) -> list[str]:
        return ["count:", "in", *COUNT_SYMBOLS, *DIGITS, "-"]


# ---------------------------------------------------------------------------------------------
# per-iteration statistics of online training


def verifiable_monitor(task: VerifiableTask, ks: Sequence[int] = (1,)
                       ) -> Callable[[Any], dict[str, list[list[float]]]]:
    """A ``monitor`` for :func:`prefkit.train.online.train_online`: from a rollout's
    ``prompts`` and ``completions`` (groups of any size), per prompt, its ``accuracy`` (share
    of right samples), ``unparsed`` share, and ``pass@k`` / ``maj@k`` for each ``k`` in ``ks``
    (:mod:`prefkit.evaluate.passk`, votes = the parsed values) -- one value per prompt
    (``[[v], [v], ...]``), so the loop's mean over the values is the mean over prompts. A
    prompt with fewer than ``k`` samples has no value for that ``k`` (an empty list)."""
    from ..evaluate.passk import maj_at_k, pass_at_k

    def monitor(rollout: Any) -> dict[str, list[list[float]]]:
        out: dict[str, list[list[float]]] = {"accuracy": [], "unparsed": []}
        for k in ks:
            out[f"pass@{k}"], out[f"maj@{k}"] = [], []
        for prompt, group in zip(rollout.prompts, rollout.completions, strict=True):
            checks = [task.check(prompt, c) for c in group]
            right = [c.status == OK for c in checks]
            n = len(checks)
            out["accuracy"].append([sum(right) / n])
            out["unparsed"].append([sum(c.status == UNPARSED for c in checks) / n])
            for k in ks:
                fits = n >= k
                out[f"pass@{k}"].append([float(pass_at_k(n, sum(right), k))] if fits else [])
                out[f"maj@{k}"].append([maj_at_k([c.answer for c in checks], right, k)]
                                       if fits else [])
        return out

    return monitor


VERIFIABLE_TASKS: dict[str, type[VerifiableTask]] = {
    "arith": ArithmeticTask, "sort_exact": ExactSortTask, "count": CountTask,
}
TASKS.update(VERIFIABLE_TASKS)
