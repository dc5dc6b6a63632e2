"""AI feedback: LLM judges, reward-model and simulated judges, their biases and caches.

:mod:`prefkit.judges.base` holds the interface (:class:`JudgeRequest` -> :class:`Judgment`);
the backends, templates, bias corrections, juries and the cache live in their own modules and
are imported on first use (PEP 562), so ``import prefkit.judges`` stays light.
"""

from __future__ import annotations

from ..importing import lazy_exports
from .base import (
    FunctionJudge,
    Judge,
    JudgeRequest,
    Judgment,
    ajudge_all,
    cache_key,
    failure_reasons,
    judge_all,
    status_counts,
)

_WHERE = {
    "SQLiteCache": "cache",
    "OpenAIJudge": "http",
}

__all__ = [  # noqa: RUF022 (the lazy names are added below)
    "FunctionJudge", "Judge", "JudgeRequest", "Judgment", "ajudge_all", "cache_key",
    "failure_reasons", "judge_all", "status_counts",
]
__all__ += list(_WHERE)


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
