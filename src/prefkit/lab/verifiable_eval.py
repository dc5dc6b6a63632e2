"""Held-out accuracy of a policy on a verifiable lab task, and its gain over the SFT policy.

A policy answers each of ``n`` held-out prompts ``k`` times (sampled, one seed for every
policy); the task's checker (:meth:`~prefkit.lab.verifiable_tasks.VerifiableTask.check`) marks
each answer right or not. Per prompt ``i`` the accuracy is ``a_i = c_i / k`` (``c_i`` right
answers), the unbiased pass@1; the policy's accuracy is their mean over prompts, with a 95%
percentile bootstrap interval over prompts (:func:`prefkit.evaluate.passk.passk_report`, which
also gives pass@k and maj@k from the same samples).

The gain over SFT is paired by prompt: ``d_i = a_i(policy) - a_i(SFT)`` on the same prompts,
gain = mean ``d_i``, and its interval is the percentile bootstrap of the mean of ``d_i``
(:func:`prefkit.evaluate.passk.bootstrap_interval`). Resampling the prompts of the differences
resamples both policies' values of a prompt together -- the paired bootstrap -- so the
prompt-to-prompt difficulty that both policies share cancels, and the interval is much
narrower than one built from two independent accuracies.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Graded", "accuracy_summary", "grade"]


@dataclass(frozen=True)
class Graded:
    """One policy's answers to the held-out prompts, checked: per prompt, whether each answer
    is right, its parsed value (``None`` when unparsed; the vote of maj@k) and whether it
    parsed."""

    correct: list[list[bool]]
    answers: list[list[Hashable | None]]
    unparsed: list[list[bool]]

    def accuracy_per_prompt(self) -> np.ndarray:
        """``c_i / k_i`` per prompt (the unbiased pass@1 of each prompt)."""
        return np.array([sum(row) / len(row) for row in self.correct], dtype=np.float64)


def grade(task: Any, prompts: Sequence[str], completions: Sequence[Sequence[str]]) -> Graded:
    """Check every completion of ``completions[i]`` (answers to ``prompts[i]``) with
    ``task.check``."""
    checks = [[task.check(p, c) for c in cs] for p, cs in zip(prompts, completions, strict=True)]
    return Graded(correct=[[c.status == "ok" for c in row] for row in checks],
                  answers=[[c.answer for c in row] for row in checks],
                  unparsed=[[c.status == "unparsed" for c in row] for row in checks])


def accuracy_summary(graded: Graded, sft: Graded | None = None, *, level: float = 0.95,
                     n_boot: int = 2000, seed: int = 0, digits: int = 4) -> dict[str, Any]:
    """The flat numbers of the lab's results (module docstring): ``accuracy`` and
    ``accuracy_ci`` (pass@1 over prompts), ``pass@k`` / ``maj@k`` for the samples per prompt
    ``k`` (when ``k > 1``) with their intervals, the ``unparsed`` share, ``eval_samples``
    (``k``) and, given ``sft`` (the SFT policy graded on the same prompts), ``accuracy_gain``
    and its paired interval ``accuracy_gain_ci``. Rounded to ``digits``."""
    from ..evaluate.passk import bootstrap_interval, passk_report

    k = min(len(row) for row in graded.correct)
    ks = [1, k] if k > 1 else [1]
    rep = passk_report(graded.correct, ks, answers=graded.answers, level=level,
                       n_boot=n_boot, seed=seed)

    def r(x: float) -> float:
        return round(float(x), digits)

    acc = rep["pass@k"][1]
    out: dict[str, Any] = {"accuracy": r(acc["mean"]),
                           "accuracy_ci": [r(acc["ci_low"]), r(acc["ci_high"])]}
    if sft is not None:
        own, base = graded.accuracy_per_prompt(), sft.accuracy_per_prompt()
        if own.shape != base.shape:
            raise ValueError(f"{own.size} graded prompts but {base.size} SFT prompts")
        diff = own - base
        lo, hi = bootstrap_interval(diff, level=level, n_boot=n_boot, seed=seed)
        out |= {"accuracy_gain": r(diff.mean()), "accuracy_gain_ci": [r(lo), r(hi)]}
    if k > 1:
        for metric in ("pass", "maj"):
            row = rep[f"{metric}@k"][k]
            out[f"{metric}@{k}"] = r(row["mean"])
            out[f"{metric}@{k}_ci"] = [r(row["ci_low"]), r(row["ci_high"])]
    out["unparsed"] = r(np.mean([np.mean(row) for row in graded.unparsed]))
    out["eval_samples"] = k
    return out
