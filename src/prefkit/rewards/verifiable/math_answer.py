"""``check_math``: a completion's final answer against a reference, with a time limit that
holds in any caller (main thread, other threads, worker processes, asyncio).

The answer is read from the completion (:func:`~.extract.extract_answer`: the last
``\\boxed{}``, "the answer is X", the last number); the comparison (:mod:`.math_compare`:
math-verify plus stricter rules against its known false positives) runs in this thread's
checker child process (:mod:`.child`) with math-verify's own signal-based timeout switched
off. A comparison still running at the deadline is killed with its process: ``timeout``.
"""

from __future__ import annotations

from .child import call_in_child
from .extract import extract_answer
from .result import CheckResult

__all__ = ["DEFAULT_MATH_TIMEOUT", "check_math"]

#: seconds one comparison may take (parsing both sides included)
DEFAULT_MATH_TIMEOUT = 5.0
_MODULE = __name__.rsplit(".", 1)[0] + ".math_compare"


def check_math(reference: str, prediction: str, *, timeout: float = DEFAULT_MATH_TIMEOUT,
               extract: bool = True) -> CheckResult:
    """``ok`` / ``wrong`` / ``unparsed`` / ``timeout`` / ``error`` for a completion against a
    reference answer (module docstring). ``extract=False``: ``prediction`` is the answer
    itself (no extraction)."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    answer = extract_answer(prediction) if extract else prediction.strip()
    if not answer:
        return CheckResult.unparsed("no answer found (no \\boxed{}, 'answer is', or number)")
    return call_in_child(f"{_MODULE}:compare", [str(reference), answer], timeout=timeout,
                         preload=(_MODULE,))
