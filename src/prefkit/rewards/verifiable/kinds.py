"""The named checkers of ``verifiable:KIND[:ARG]`` rewards: top-level ``(reference,
completion) -> CheckResult`` callables (picklable, so a process-pool reward executor can ship
them), and :func:`verifiable_reward` building the reward source.

========  ===================================================  =============================
KIND      checks                                               reference
========  ===================================================  =============================
math      :func:`~.math_answer.check_math`                     the answer (LaTeX or plain)
exact     :func:`~.checks.check_exact`                         an answer or a list of aliases
choice    :func:`~.checks.check_choice`                        the letter (``B``, ``(B)``)
regex     :func:`~.checks.check_regex` with ARG as pattern     none
json      :func:`~.checks.check_json_schema`                   the JSON schema
code      :func:`~.sandbox.run_code_tests` on the last         the tests (a string or a list)
          fenced code block
rg        reasoning-gym's ``score_answer`` (:mod:`.gym`)       the task's entry
========  ===================================================  =============================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .checks import check_choice, check_exact, check_json_schema, check_regex
from .math_answer import check_math
from .result import CheckResult
from .source import VerifiableReward, extract_code

__all__ = ["KINDS", "RegexCheck", "verifiable_reward"]


def math_check(reference: Any, completion: str) -> CheckResult:
    return check_math(str(reference), completion)


def exact_check(reference: Any, completion: str) -> CheckResult:
    refs = [str(r) for r in reference] if isinstance(reference, list) else str(reference)
    return check_exact(refs, completion)


def choice_check(reference: Any, completion: str) -> CheckResult:
    return check_choice(str(reference), completion)


def json_check(reference: Any, completion: str) -> CheckResult:
    return check_json_schema(reference, completion)


def code_check(reference: Any, completion: str) -> CheckResult:
    from .sandbox import run_code_tests

    return run_code_tests(extract_code(completion), reference)


@dataclass(frozen=True)
class RegexCheck:
    """``check_regex(pattern, completion)``; the reference is not used."""

    pattern: str
    search: bool = False

    def __call__(self, reference: Any, completion: str) -> CheckResult:
        return check_regex(self.pattern, completion, search=self.search)


#: KIND -> checker (``regex`` and ``rg`` take an argument and are built by verifiable_reward)
KINDS: dict[str, Callable[[Any, str], CheckResult]] = {
    "math": math_check, "exact": exact_check, "choice": choice_check, "json": json_check,
    "code": code_check,
}


def verifiable_reward(kind: str, arg: str = "", *, references: Mapping[str, Any] | None = None,
                      workers: int = 1, values: Mapping[str, float] | None = None
                      ) -> VerifiableReward:
    """The reward source of ``verifiable:KIND[:ARG]`` (module docstring's table);
    ``references``: ``{prompt key: reference}`` (:func:`~.source.read_references`)."""
    name = f"verifiable:{kind}" + (f":{arg}" if arg else "")
    if kind == "regex":
        if not arg:
            raise ValueError("verifiable:regex needs a pattern: verifiable:regex:PATTERN")
        return VerifiableReward(RegexCheck(arg), None, name=name, values=values or {},
                                workers=workers)
    if kind not in KINDS:
        raise ValueError(f"unknown verifiable reward {kind!r}: expected one of "
                         f"{', '.join([*KINDS, 'regex', 'rg'])}")
    if arg:
        raise ValueError(f"verifiable:{kind} takes no argument, got {arg!r}")
    if not references:
        raise ValueError(f"{name} needs reference answers: a prompts file with an 'answer' "
                         "(or 'reference', 'tests', 'solution') field per row")
    return VerifiableReward(KINDS[kind], references, name=name, values=values or {},
                            workers=workers)
