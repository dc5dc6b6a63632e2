"""Evaluation: reward-model benchmarks (RewardBench format), calibration, length probes, and
policy evaluation (win rates with CIs, length-controlled win rate, KL estimates, ranking
accuracy with its Wilson interval, over-optimization curves, pass@k and maj@k), and agreement
between annotators (Krippendorff's alpha, Fleiss' and Cohen's kappa, position bias).

Pure functions on numpy arrays — score your data first, then pass the numbers in.
"""

from __future__ import annotations

from ..importing import lazy_exports

_WHERE = {
    "expected_calibration_error": "calibration",
    "pairwise_calibration": "calibration",
    "plot_reliability": "calibration",
    "reliability_bins": "calibration",
    "best_of_n_curve": "policy",
    "best_of_n_kl_bound": "policy",
    "idealized_ranking_accuracy": "policy",
    "kl_estimate": "policy",
    "overoptimization_curve": "policy",
    "ranking_accuracy": "policy",
    "ranking_accuracy_interval": "policy",
    "REWARDBENCH_V1_BALANCE": "rm",
    "REWARDBENCH_V1_SECTIONS": "rm",
    "best_of_k_accuracy": "rm",
    "evaluate_pairs": "rm",
    "evaluate_sets": "rm",
    "gold_agreement": "rm",
    "length_correlation": "rm",
    "length_rule_accuracy": "rm",
    "pairwise_accuracy": "rm",
    "rewardbench_scores": "rm",
    "subset_accuracies": "rm",
    "length_controlled_win_rate": "winrate",
    "wilson_interval": "winrate",
    "win_rate": "winrate",
    "krippendorff_alpha": "agreement",
    "fleiss_kappa": "agreement",
    "cohen_kappa": "agreement",
    "vs_majority": "agreement",
    "position_bias": "agreement",
    "labels_per_hour": "agreement",
    "SWITCH_SEED": "alpaca",
    "alpaca_switched": "alpaca",
    "annotations_from_judgments": "alpaca",
    "judge_pairs": "alpaca",
    "pair_outputs": "alpaca",
    "read_annotations": "alpaca",
    "read_model_outputs": "alpaca",
    "winrate_report": "alpaca",
    "write_annotations": "alpaca",
    "bootstrap_interval": "passk",
    "maj_at_k": "passk",
    "pass_at_k": "passk",
    "passk_report": "passk",
}
"""Public name -> the submodule defining it: imported on first use (PEP 562), so that
``prefkit.data.stats`` can use the agreement maths without loading scipy.stats and matplotlib."""

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
