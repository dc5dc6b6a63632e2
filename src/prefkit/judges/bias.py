"""Position, length and self-preference bias of pairwise judges, and how to remove position bias.

**Balanced Position Calibration** (Wang et al., "Large Language Models are not Fair
Evaluators", arXiv 2305.17926): judge each pair in both orders and average::

    p(a beats b) = ( p_first(a, b) + 1 - p_first(b, a) ) / 2

where ``p_first(x, y)`` is the judge's P(first better) with ``x`` shown first (1 / 0.5 / 0 for
hard verdicts). A judge that prefers the first position with any probability ``q`` on equal
responses gets ``(q + 1 - q) / 2 = 1/2`` exactly in expectation. A pair whose two judgments are
not both ``ok`` is not ``ok`` (``unparsed`` if either is unparsed, else ``failed``): it is
counted in the report and left out of every rate.

Reported (:func:`position_report`, :func:`length_report`, :func:`self_preference_report`):

- ``p_prefer_first``: among single-order ``ok`` verdicts that are not ties, the share that chose
  the response shown first (0.5 = no position bias);
- ``flip_rate``: among pairs judged ``ok`` in both orders, the share whose preferred response
  changed with the order (a tie in one order and a winner in the other counts as a flip;
  MT-Bench's "inconsistency"); ``consistency = 1 - flip_rate``;
- ``longer_wins``: among decided, calibrated pairs with different word lengths, the share won by
  the longer response, and the Pearson correlation of ``p - 1/2`` with the word-length
  difference ``len_a - len_b``;
- self-preference: for a judge of model family ``F``, among pairs where exactly one response
  was written by an ``F`` model, the share the judge gave to its own family's response, next to
  the same share under a reference (people's labels or gold) when given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Judge, JudgeRequest, Judgment, JudgmentCache, ajudge_all, run_sync

__all__ = [
    "PairJudgment", "ajudge_both_orders", "judge_both_orders", "length_report",
    "position_report", "self_preference_report",
]


@dataclass(frozen=True)
class PairJudgment:
    """A pair judged in both orders: ``forward`` with ``a`` shown first, ``backward`` with
    ``b`` first. ``p_a``: the calibrated P(a beats b) (None unless both are ok)."""

    request: JudgeRequest
    forward: Judgment
    backward: Judgment

    @property
    def status(self) -> str:
        statuses = {self.forward.status, self.backward.status}
        if statuses == {"ok"}:
            return "ok"
        return "unparsed" if "unparsed" in statuses else "failed"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def p_a(self) -> float | None:
        if not self.ok:
            return None
        assert self.forward.p_first is not None and self.backward.p_first is not None
        return 0.5 * (self.forward.p_first + 1.0 - self.backward.p_first)

    @property
    def winner(self) -> str | None:
        """``a``, ``b`` or ``tie`` by the calibrated probability (None unless ok)."""
        p = self.p_a
        if p is None:
            return None
        return "a" if p > 0.5 else "b" if p < 0.5 else "tie"

    @property
    def flipped(self) -> bool | None:
        """Whether the preferred response changed with the order (None unless ok)."""
        if not self.ok:
            return None
        forward = {"first": "a", "second": "b", "tie": "tie"}[self.forward.verdict or ""]
        backward = {"first": "b", "second": "a", "tie": "tie"}[self.backward.verdict or ""]
        return forward != backward


async def ajudge_both_orders(judge: Judge, requests: Sequence[JudgeRequest], *,
                             cache: JudgmentCache | None = None, concurrency: int = 8,
                             on_done: Callable[[int, Judgment], None] | None = None
                             ) -> list[PairJudgment]:
    """Each compare request judged as given and swapped (one batch of ``2 n`` requests)."""
    for i, r in enumerate(requests):
        if r.task != "compare":
            raise ValueError(f"request {i}: both orders only apply to compare requests")
    both = [*requests, *(r.swapped() for r in requests)]
    out = await ajudge_all(judge, both, cache=cache, concurrency=concurrency, on_done=on_done)
    n = len(requests)
    return [PairJudgment(requests[i], out[i], out[n + i]) for i in range(n)]


def judge_both_orders(judge: Judge, requests: Sequence[JudgeRequest], **options: Any
                      ) -> list[PairJudgment]:
    """:func:`ajudge_both_orders` from synchronous code."""
    return run_sync(ajudge_both_orders(judge, requests, **options))


def _share(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def position_report(pairs: Sequence[PairJudgment]) -> dict[str, Any]:
    """``p_prefer_first``, ``flip_rate``, ``consistency`` and counts (module docstring)."""
    singles = [j for p in pairs for j in (p.forward, p.backward) if j.ok and j.verdict != "tie"]
    flips = [bool(p.flipped) for p in pairs if p.ok]
    flip_rate = _share(flips)
    return {"p_prefer_first": _share([j.verdict == "first" for j in singles]),
            "flip_rate": flip_rate,
            "consistency": None if flip_rate is None else 1.0 - flip_rate,
            "pairs": len(pairs), "pairs_ok": len(flips),
            "unparsed": sum(p.status == "unparsed" for p in pairs),
            "failed": sum(p.status == "failed" for p in pairs)}


def _words(text: str) -> int:
    return len(text.split())


def length_report(pairs: Sequence[PairJudgment]) -> dict[str, Any]:
    """``longer_wins`` and ``length_correlation`` over calibrated pairs (module docstring)."""
    decided, diffs, prefs = [], [], []
    for p in pairs:
        if not p.ok:
            continue
        a, b = (_words(t) for t in p.request.responses)
        assert p.p_a is not None
        diffs.append(a - b)
        prefs.append(p.p_a - 0.5)
        if a != b and p.winner in ("a", "b"):
            decided.append((p.winner == "a") == (a > b))
    corr = None
    if len(diffs) > 2 and np.std(diffs) > 0 and np.std(prefs) > 0:
        corr = float(np.corrcoef(diffs, prefs)[0, 1])
    return {"longer_wins": _share(decided), "length_correlation": corr,
            "decided_pairs": len(decided)}


def self_preference_report(pairs: Sequence[PairJudgment], is_own: Callable[[str | None], bool],
                           reference: Sequence[float | None] | None = None) -> dict[str, Any]:
    """Among ok pairs with exactly one own-family response (by ``request.models``): the share
    the judge gave to it (``judge_own_share``; ties count one half) and, with ``reference``
    (P(a beats b) per pair from people or gold, None where unknown), the same share under it
    (``reference_own_share``) and the difference (``self_preference``)."""
    judged, ref = [], []
    for i, p in enumerate(pairs):
        models = p.request.models
        if not p.ok or models is None:
            continue
        own = [is_own(m) for m in models]
        if own.count(True) != 1:
            continue
        assert p.p_a is not None
        mine = p.p_a if own[0] else 1.0 - p.p_a
        judged.append(mine)
        if reference is not None and reference[i] is not None:
            r = float(reference[i])  # type: ignore[arg-type]
            ref.append(r if own[0] else 1.0 - r)
    out: dict[str, Any] = {"own_pairs": len(judged), "judge_own_share": _share(judged)}
    if reference is not None:
        out["reference_own_share"] = _share(ref)
        if judged and ref:
            out["self_preference"] = float(np.mean(judged) - np.mean(ref))
    return out
