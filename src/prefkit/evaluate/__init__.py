"""Evaluation: reward-model benchmarks (RewardBench format), calibration, length probes.

Pure functions on numpy arrays — score your data first, then pass the numbers in.
"""

from prefkit.evaluate.calibration import (
    expected_calibration_error,
    pairwise_calibration,
    plot_reliability,
    reliability_bins,
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

__all__ = [
    "REWARDBENCH_V1_BALANCE",
    "REWARDBENCH_V1_SECTIONS",
    "best_of_k_accuracy",
    "evaluate_pairs",
    "evaluate_sets",
    "expected_calibration_error",
    "gold_agreement",
    "length_correlation",
    "length_rule_accuracy",
    "pairwise_accuracy",
    "pairwise_calibration",
    "plot_reliability",
    "reliability_bins",
    "rewardbench_scores",
    "subset_accuracies",
]
