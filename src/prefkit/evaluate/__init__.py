"""Evaluation: reward-model benchmarks (RewardBench format), calibration, length probes, and
policy evaluation (win rates with CIs, length-controlled win rate, KL estimates, ranking
accuracy with its Wilson interval, over-optimization curves).

Pure functions on numpy arrays — score your data first, then pass the numbers in.
"""

from prefkit.evaluate.calibration import (
    expected_calibration_error,
    pairwise_calibration,
    plot_reliability,
    reliability_bins,
)
from prefkit.evaluate.policy import (
    best_of_n_curve,
    best_of_n_kl_bound,
    idealized_ranking_accuracy,
    kl_estimate,
    overoptimization_curve,
    ranking_accuracy,
    ranking_accuracy_interval,
)
from prefkit.evaluate.rm import (
    REWARDBENCH_V1_BALANCE,
    REWARDBENCH_V1_SECTIONS,
    best_of_k_accuracy,
    evaluate_pairs,
    evaluate_sets,
    gold_agreement,
    length_correlation,
    length_rule_accuracy,
    pairwise_accuracy,
    rewardbench_scores,
    subset_accuracies,
)
from prefkit.evaluate.winrate import length_controlled_win_rate, wilson_interval, win_rate

__all__ = [
    "REWARDBENCH_V1_BALANCE",
    "REWARDBENCH_V1_SECTIONS",
    "best_of_k_accuracy",
    "best_of_n_curve",
    "best_of_n_kl_bound",
    "evaluate_pairs",
    "evaluate_sets",
    "expected_calibration_error",
    "gold_agreement",
    "idealized_ranking_accuracy",
    "kl_estimate",
    "length_controlled_win_rate",
    "length_correlation",
    "length_rule_accuracy",
    "overoptimization_curve",
    "pairwise_accuracy",
    "pairwise_calibration",
    "plot_reliability",
    "ranking_accuracy",
    "ranking_accuracy_interval",
    "reliability_bins",
    "rewardbench_scores",
    "subset_accuracies",
    "wilson_interval",
    "win_rate",
]
