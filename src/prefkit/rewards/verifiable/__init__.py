"""Verifiable rewards: checkers that return a value AND a status, and reward sources built
from them (RL with verifiable rewards).

* :mod:`.result` -- :class:`CheckResult` (value, status ``ok`` / ``wrong`` / ``unparsed`` /
  ``timeout`` / ``error``, detail);
* :mod:`.extract` -- the final answer of a completion (last ``\\boxed{}``, "answer is X",
  last number) and multiple-choice letters;
* :mod:`.math_answer` -- :func:`check_math` (math-verify with stricter rules against its
  false positives, in a killable child process: a time limit that works in threads,
  processes and asyncio);
* :mod:`.checks` -- exact match, multiple choice, regex / format, JSON schema;
* :mod:`.sandbox` -- :func:`run_code_tests`: code against unit tests in a subprocess sandbox;
* :mod:`.gym` -- reasoning-gym tasks as prompts + checker;
* :mod:`.source` -- :class:`VerifiableReward`, the reward source with ``status_counts()``.

Importing this package is light: math-verify, sympy, jsonschema and reasoning-gym are
imported by the functions that use them (or only inside the checker child).
"""

from .checks import check_choice, check_exact, check_json_schema, check_regex
from .extract import extract_answer, extract_boxed, extract_choice
from .math_answer import DEFAULT_MATH_TIMEOUT, check_math
from .result import STATUSES, CheckResult, count_statuses

__all__ = ["DEFAULT_MATH_TIMEOUT", "STATUSES", "CheckResult", "check_choice", "check_exact",
           "check_json_schema", "check_math", "check_regex", "count_statuses",
           "extract_answer", "extract_boxed", "extract_choice"]
