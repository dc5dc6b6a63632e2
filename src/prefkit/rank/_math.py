"""The two special functions the leaderboard path needs, in numpy and the standard library:
importing ``scipy.special`` takes longer than rating a million votes."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def expit(x: np.ndarray) -> np.ndarray:
    """The logistic function ``1 / (1 + e^-x)``, without overflow: ``e^-|x|`` only."""
    x = np.asarray(x, dtype=float)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def normal_quantile(p: float) -> float:
    """``Phi^-1(p)``, the standard normal quantile (1.959964 for 0.975)."""
    return NormalDist().inv_cdf(p)
