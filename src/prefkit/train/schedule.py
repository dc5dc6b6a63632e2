"""Learning-rate schedules with linear warm-up (the usual Hugging Face formulas).

With ``i`` the number of optimizer steps already taken (0 for the first step), ``W`` warm-up
steps and ``T`` total steps, the learning rate of step ``i + 1`` is ``lr * f(i)`` with

* warm-up (``i < W``): ``f(i) = i / W`` (so the very first step runs at lr 0 when ``W > 0``)
* constant: ``f(i) = 1``
* linear:   ``f(i) = max(0, (T - i) / (T - W))``
* cosine:   ``f(i) = 0.5 * (1 + cos(pi * (i - W) / (T - W)))`` (clipped at ``i >= T``)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["lr_factor", "make_scheduler", "warmup_steps_for"]


def warmup_steps_for(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warm-up length: ``warmup_steps`` if set, else ``ceil(warmup_ratio * total_steps)``."""
    if warmup_steps > 0:
        return warmup_steps
    return math.ceil(warmup_ratio * total_steps)


def lr_factor(kind: str, step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate for the optimizer step after ``step`` steps."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {kind!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` (stepped once per optimizer step)."""
    fn: Callable[[int], float] = lambda i: lr_factor(kind, i, warmup, total)  # noqa: E731
    return LambdaLR(optimizer, fn)
