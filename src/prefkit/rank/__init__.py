"""Arena and ranking engine: plain functions on numpy/scipy, data in -> parameters out.

Models are integers ``0..n-1``; pairwise votes are aggregated into :class:`PairCounts` first
(:func:`aggregate_pairwise`), so fits cost the same for a thousand or a hundred million votes.
"""

from .aggregate import A_WINS, B_WINS, BOTH_BAD, TIE, PairCounts, aggregate_pairwise
from .bootstrap import bootstrap_bt, ci_ranks, percentile_intervals
from .bt import BTResult, bt_probabilities, fit_bradley_terry, to_elo
from .leaderboard import Leaderboard, bt_leaderboard, win_rate_matrices
from .sandwich import bt_sandwich_covariance, normal_intervals
from .style import (
    ARENA_RANK,
    CHATBOT_ARENA_FEATURES,
    FASTCHAT,
    STYLE_CONVENTIONS,
    StyleSettings,
    bootstrap_bt_style,
    fit_bt_style,
    style_covariates,
    style_sandwich_covariance,
)

__all__ = [
    "A_WINS", "B_WINS", "BOTH_BAD", "TIE", "PairCounts", "aggregate_pairwise",
    "bootstrap_bt", "ci_ranks", "percentile_intervals",
    "BTResult", "bt_probabilities", "fit_bradley_terry", "to_elo",
    "Leaderboard", "bt_leaderboard", "win_rate_matrices",
    "bt_sandwich_covariance", "normal_intervals",
    "ARENA_RANK", "CHATBOT_ARENA_FEATURES", "FASTCHAT", "STYLE_CONVENTIONS", "StyleSettings",
    "bootstrap_bt_style", "fit_bt_style", "style_covariates", "style_sandwich_covariance",
]
