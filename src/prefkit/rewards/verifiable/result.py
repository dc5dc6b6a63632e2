"""The outcome of one verifiable check: a value and a status, so a reward of 0 for a wrong
answer can be told apart from a 0 for an answer that could not be read or a checker that ran
out of time (the online loop logs the counts of each status)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["STATUSES", "CheckResult", "count_statuses"]

#: every status a checker returns: ``ok`` (right), ``wrong`` (read and wrong), ``unparsed``
#: (no answer could be read), ``timeout`` (the time limit ran out), ``error`` (the checker
#: itself failed: a bad reference, a crashed child process).
STATUSES = ("ok", "wrong", "unparsed", "timeout", "error")


@dataclass(frozen=True)
class CheckResult:
    """``value`` (the reward: 1.0 / 0.0 for a binary check, a fraction for partial credit such
    as passed tests / all tests), ``status`` (one of :data:`STATUSES`) and a human ``detail``."""

    value: float
    status: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @classmethod
    def ok(cls, detail: str = "", value: float = 1.0) -> CheckResult:
        return cls(value, "ok", detail)

    @classmethod
    def wrong(cls, detail: str = "", value: float = 0.0) -> CheckResult:
        return cls(value, "wrong", detail)

    @classmethod
    def unparsed(cls, detail: str = "") -> CheckResult:
        return cls(0.0, "unparsed", detail)

    @classmethod
    def timeout(cls, detail: str = "") -> CheckResult:
        return cls(0.0, "timeout", detail)

    @classmethod
    def error(cls, detail: str = "") -> CheckResult:
        return cls(0.0, "error", detail)

    def to_dict(self) -> dict:
        return {"value": self.value, "status": self.status, "detail": self.detail}


def count_statuses(results: Iterable[CheckResult]) -> dict[str, int]:
    """``{status: count}`` over every status in :data:`STATUSES` (zeros included, so a log
    line always has the same keys)."""
    counts = Counter(r.status for r in results)
    return {s: counts.get(s, 0) for s in STATUSES}
