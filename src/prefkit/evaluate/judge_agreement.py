"""Does a judge agree with people? Accuracy, Cohen's kappa and the biases, from labels people
gave (e.g. exported from a ``prefkit serve`` campaign) -- the check AlpacaEval users ask for
before trusting a new judge (tatsu-lab/alpaca_eval #450). (An evaluation of a judge, so it
lives in ``evaluate``, above ``judges``; it was ``prefkit.judges.validate``.)

Each labelled pair is judged in both orders (Balanced Position Calibration,
:mod:`prefkit.judges.bias`); the judge's label is the calibrated winner ``a`` / ``b`` / ``tie``.
People's ``both_bad`` counts as a tie. Reported per judge (:func:`agreement_report`):

- ``accuracy``: over the pairs that the person *and* the judge decided (neither a tie), the share
  where they chose the same response. Ties are counted (``human_ties``, ``judge_ties``) and
  excluded, as in MT-Bench's agreement without ties;
- ``accuracy_ci``: its 95% Wilson interval;
- ``cohen_kappa``: chance-corrected agreement over all ``ok`` pairs on the three labels
  (a, b, tie) -- :func:`prefkit.evaluate.agreement.cohen_kappa`;
- ``unparsed`` / ``failed``: pairs whose judgments were not both ``ok`` (excluded from every
  rate, never scored);
- the position report (``consistency`` = 1 - flip rate, ``p_prefer_first``), the length report
  (``longer_wins``, ``length_correlation``) and, for a judge with a model ``family`` and pairs
  whose ``metadata["models"]`` are known, self-preference against the people's own-share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..data.records import Comparison, Outcome
from ..judges.base import JudgeRequest
from ..judges.bias import (
    PairJudgment,
    length_report,
    position_report,
    self_preference_report,
)

__all__ = ["agreement_report", "human_label", "requests_from_labels", "thresholds_failed"]


def human_label(record: Comparison) -> str:
    """``a``, ``b`` or ``tie`` (``both_bad`` is a tie)."""
    return {Outcome.A: "a", Outcome.B: "b"}.get(record.outcome, "tie")


def requests_from_labels(records: Sequence[Comparison]) -> list[JudgeRequest]:
    """The compare request of each labelled pair (``a`` shown first), with the models that
    wrote the responses when ``metadata["models"]`` holds two names."""
    from ..data.records import text_content

    out = []
    for record in records:
        models = record.metadata.get("models") if record.metadata else None
        if not (isinstance(models, list | tuple) and len(models) == 2):
            models = None
        out.append(JudgeRequest("compare", text_content(record.prompt),
                                (text_content(record.response_a),
                                 text_content(record.response_b)),
                                models=tuple(models) if models else None))
    return out


def agreement_report(pairs: Sequence[PairJudgment], records: Sequence[Comparison], *,
                     is_own: Callable[[str | None], bool] | None = None) -> dict[str, Any]:
    """The module docstring's figures for one judge's ``pairs`` (same order as ``records``)."""
    from .agreement import cohen_kappa
    from .winrate import wilson_interval

    if len(pairs) != len(records):
        raise ValueError(f"{len(pairs)} judged pairs for {len(records)} labels")
    both = [(human_label(r), p.winner) for p, r in zip(pairs, records, strict=True) if p.ok]
    decided = [(h, j) for h, j in both if h != "tie" and j != "tie"]
    correct = sum(h == j for h, j in decided)
    accuracy = correct / len(decided) if decided else None
    report: dict[str, Any] = {
        "labels": len(records), "judged": len(both),
        "unparsed": sum(p.status == "unparsed" for p in pairs),
        "failed": sum(p.status == "failed" for p in pairs),
        "accuracy": accuracy, "decided": len(decided), "correct": correct,
        "accuracy_ci": list(wilson_interval(correct, len(decided))) if decided else None,
        "human_ties": sum(h == "tie" for h, _ in both),
        "judge_ties": sum(j == "tie" for _, j in both),
        "cohen_kappa": cohen_kappa(both),
        "position": position_report(pairs),
        "length": length_report(pairs),
    }
    if is_own is not None:
        reference = [{"a": 1.0, "b": 0.0, "tie": 0.5}[human_label(r)] for r in records]
        report["self_preference"] = self_preference_report(pairs, is_own, reference=reference)
    return report


def thresholds_failed(report: dict[str, Any], *, min_accuracy: float | None = None,
                      min_kappa: float | None = None, min_consistency: float | None = None
                      ) -> list[str]:
    """The thresholds ``report`` is below (an undefined figure fails its threshold)."""
    failed = []
    checks = (("accuracy", report.get("accuracy"), min_accuracy),
              ("cohen_kappa", report.get("cohen_kappa"), min_kappa),
              ("consistency", report.get("position", {}).get("consistency"), min_consistency))
    for name, value, minimum in checks:
        if minimum is not None and (value is None or value < minimum):
            shown = "undefined" if value is None else f"{value:.4f}"
            failed.append(f"{name} {shown} < {minimum}")
    return failed
