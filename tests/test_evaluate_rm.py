"""prefkit.evaluate.rm / calibration: hand-computed values on tiny examples."""

import json
import math

import numpy as np
import pytest
from scipy.special import expit

from prefkit.evaluate import (
    best_of_k_accuracy,
    evaluate_pairs,
    evaluate_sets,
    expected_calibration_error,
    gold_agreement,
    length_correlation,
    length_rule_accuracy,
    pairwise_accuracy,
    pairwise_calibration,
    plot_reliability,
    reliability_bins,
    rewardbench_scores,
    subset_accuracies,
)


def make_pairs(spec):
    """spec: [(subset, n, n_correct)] -> chosen, rejected, subsets (correct = 1 > 0.5)."""
    chosen, rejected, subsets = [], [], []
    for subset, n, n_correct in spec:
        chosen += [1.0] * n_correct + [0.0] * (n - n_correct)
        rejected += [0.5] * n
        subsets += [subset] * n
    return np.array(chosen), np.array(rejected), subsets


# --------------------------------------------------------------------------- accuracy


def test_accuracy_ties_wrong_vs_half():
    chosen = [2.0, 1.0, 3.0, 0.0]
    rejected = [1.0, 1.0, 4.0, -1.0]  # win, tie, loss, win
    assert pairwise_accuracy(chosen, rejected) == 0.5
    assert pairwise_accuracy(chosen, rejected, ties="wrong") == 0.5
    assert pairwise_accuracy(chosen, rejected, ties="half") == 0.625
    with pytest.raises(ValueError, match="ties"):
        pairwise_accuracy(chosen, rejected, ties="coin")


def test_subset_accuracies_order_and_counts():
    out = subset_accuracies([1, 0, 1, 1, 1], [0, 0, 0, 2, 0], ["b", "a", "b", "a", "a"],
                            ties="half")
    assert list(out) == ["b", "a"]
    assert out["b"] == {"accuracy": 1.0, "n": 2}
    assert out["a"]["n"] == 3
    assert out["a"]["accuracy"] == pytest.approx(1.5 / 3)


# --------------------------------------------------------------------------- RewardBench


SPEC = [
    ("alpacaeval-easy", 4, 3),  # 0.75
    ("mt-bench-easy", 2, 0),  # 0.0   -> Chat = (4*.75 + 2*0) / 6 = 0.5
    ("math-prm", 2, 2),  # 1.0
    ("hep-go", 2, 1),  # 0.5
    ("hep-rust", 4, 1),  # 0.25  -> code = (1 + 1) / 6 = 1/3; Reasoning = (1 + 1/3) / 2
    ("my-subset", 2, 0),  # not in the map -> "other"
]


def test_rewardbench_sections_reasoning_weighting_and_other():
    chosen, rejected, subsets = make_pairs(SPEC)
    out = rewardbench_scores(chosen, rejected, subsets)
    assert out["subsets"]["alpacaeval-easy"] == {"accuracy": 0.75, "n": 4}
    assert set(out["sections"]) == {"Chat", "Reasoning"}
    assert out["sections"]["Chat"]["score"] == pytest.approx(0.5)
    assert out["sections"]["Chat"]["n"] == 6
    assert out["sections"]["Reasoning"]["score"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["sections"]["Reasoning"]["subsets"] == ["math-prm", "hep-go", "hep-rust"]
    assert out["sections"]["Reasoning"]["n"] == 8
    assert out["overall"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert out["other"] == {"my-subset": {"accuracy": 0.0, "n": 2}}


def test_rewardbench_reasoning_equal_code_counts_is_math_plus_mean_code_over_two():
    chosen, rejected, subsets = make_pairs([("math-prm", 3, 1), ("hep-cpp", 4, 4),
                                            ("hep-js", 4, 2)])
    out = rewardbench_scores(chosen, rejected, subsets)
    assert out["sections"]["Reasoning"]["score"] == pytest.approx((1 / 3 + (1 + 0.5) / 2) / 2)


def test_rewardbench_plain_count_weighting_and_custom_sections():
    chosen, rejected, subsets = make_pairs(SPEC)
    plain = rewardbench_scores(chosen, rejected, subsets, balance={})
    assert plain["sections"]["Reasoning"]["score"] == pytest.approx((2 + 1 + 1) / 8)
    custom = rewardbench_scores(chosen, rejected, subsets, sections={"A": ["my-subset",
                                                                           "hep-go"]})
    assert custom["sections"] == {"A": {"score": 0.25, "n": 4,
                                        "subsets": ["my-subset", "hep-go"]}}
    assert custom["overall"] == 0.25
    assert set(custom["other"]) == {"alpacaeval-easy", "mt-bench-easy", "math-prm",
                                    "hep-rust"}
    with pytest.raises(ValueError, match="hep-go"):
        rewardbench_scores(chosen, rejected, subsets, sections={"A": ["hep-go"],
                                                                "B": ["hep-go"]})


def test_rewardbench_no_known_subsets_has_no_overall():
    out = rewardbench_scores([1, 0], [0, 1], ["x", "y"])
    assert out["sections"] == {} and out["overall"] is None
    assert set(out["other"]) == {"x", "y"}


# --------------------------------------------------------------------------- best-of-K


def test_best_of_k_ties_fraction_and_wrong():
    rewards = [[3, 1, 2], [1, 5, 5], [2, 2, 2], [0, 1, 9]]
    best = [0, 1, 2, 0]  # 1, 1/2, 1/3, 0
    assert best_of_k_accuracy(rewards, best) == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert best_of_k_accuracy(rewards, best, ties="wrong") == 0.25


def test_best_of_k_mask_ignores_padded_responses():
    rewards = [[3, 1, 2], [2, 1, np.nan]]
    mask = [[True, True, True], [True, True, False]]
    assert best_of_k_accuracy(rewards, [0, 0], mask) == 1.0
    with pytest.raises(ValueError, match=r"rewards\[1, 2\]"):
        best_of_k_accuracy(rewards, [0, 0])
    with pytest.raises(ValueError, match="masked"):
        best_of_k_accuracy(rewards, [0, 2], mask)
    with pytest.raises(ValueError, match="outside"):
        best_of_k_accuracy(rewards, [0, 3], mask)


# --------------------------------------------------------------------------- calibration


PROBS = [0.1, 0.15, 0.3, 0.35, 0.38, 0.62, 0.7, 0.9, 0.95, 1.0]
LABELS = [0, 0, 1, 0, 0, 1, 0, 1, 1, 1]


def test_reliability_bins_by_hand():
    bins = reliability_bins(PROBS, LABELS, n_bins=5)
    assert [b["count"] for b in bins] == [2, 3, 0, 2, 3]  # p = 1.0 in the last bin
    assert [b["lo"] for b in bins] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert bins[4]["hi"] == 1.0
    expected = [(0.125, 0.0), (1.03 / 3, 1 / 3), (None, None), (0.66, 0.5), (0.95, 1.0)]
    for b, (mean_prob, acc) in zip(bins, expected, strict=True):
        if mean_prob is None:
            assert b["mean_prob"] is None and b["accuracy"] is None
        else:
            assert b["mean_prob"] == pytest.approx(mean_prob)
            assert b["accuracy"] == pytest.approx(acc)


def test_ece_by_hand():
    # (2*0.125 + 3*0.01 + 0 + 2*0.16 + 3*0.05) / 10
    assert expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx(0.075)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
    with pytest.raises(ValueError, match=r"probs\[1\]"):
        expected_calibration_error([0.5, 1.5], [0, 1])


def test_pairwise_calibration_symmetrised():
    out = pairwise_calibration([2.0, 0.0, 1.0], [0.0, 0.0, 3.0])
    # entries (p, 1) and (1 - p, 0): bins 1, 5, 8 each hold two entries with accuracy 0.5
    assert out["n_pairs"] == 3
    assert [b["count"] for b in out["bins"]] == [0, 2, 0, 0, 0, 2, 0, 0, 2, 0]
    assert out["ece"] == pytest.approx(2 / 3 * (expit(2.0) - 0.5))
    assert out["mean_confidence"] == pytest.approx((2 * expit(2.0) + 0.5) / 3)


def test_pairwise_calibration_mirror_symmetry():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=200), rng.normal(size=200)
    bins = pairwise_calibration(chosen, rejected, n_bins=10)["bins"]
    for b in range(10):
        mirror = bins[9 - b]
        assert bins[b]["count"] == mirror["count"]
        if bins[b]["count"]:
            assert bins[b]["accuracy"] == pytest.approx(1 - mirror["accuracy"])
            assert bins[b]["mean_prob"] == pytest.approx(1 - mirror["mean_prob"])


def test_plot_reliability_writes_png(tmp_path):
    path = plot_reliability(reliability_bins(PROBS, LABELS, n_bins=5), tmp_path / "rel.png")
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- length


def test_length_rules_and_flag():
    chosen_len = [10, 20, 30, 5, 7, 7, 1, 2]
    rejected_len = [5, 10, 40, 1, 7, 3, 5, 6]
    subsets = ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    out = length_rule_accuracy(chosen_len, rejected_len, subsets)
    assert out["subsets"]["a"]["longer_wins"] == pytest.approx(2 / 3)
    assert out["subsets"]["a"]["shorter_wins"] == pytest.approx(1 / 3)
    assert out["subsets"]["b"]["longer_wins"] == pytest.approx(2.5 / 3)  # tie counts 0.5
    assert out["subsets"]["c"]["shorter_wins"] == 1.0
    assert out["flagged"] == ["b", "c"]
    assert out["overall"] == {"n": 8, "longer_wins": 4.5 / 8, "shorter_wins": 3.5 / 8,
                              "solved_by_length_rule": False}
    loose = length_rule_accuracy(chosen_len, rejected_len, subsets, flag_threshold=0.5)
    assert loose["overall"]["solved_by_length_rule"]
    assert length_rule_accuracy([3], [2])["subsets"] == {}


def test_length_correlation():
    out = length_correlation([1, 2, 3, 4], [10, 20, 30, 50])
    assert out["pearson"] == pytest.approx(65 / math.sqrt(5 * 875))
    assert out["spearman"] == pytest.approx(1.0)
    assert length_correlation([1, 2, 3], [5, 5, 5])["pearson"] is None


# --------------------------------------------------------------------------- gold


def test_gold_agreement_kappa_by_hand():
    rm = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0]
    gold = [1, 1, 0, 0, 0, 1, 1, 1, 1, 0]
    out = gold_agreement(rm, gold)
    # p_o = 0.8; p_e = 0.6*0.6 + 0.4*0.4 = 0.52; kappa = 0.28 / 0.48
    assert out["agreement"] == pytest.approx(0.8)
    assert out["cohen_kappa"] == pytest.approx(0.28 / 0.48)
    assert out["n"] == 10
    assert gold_agreement([True, True], [True, True])["cohen_kappa"] is None
    with pytest.raises(ValueError, match="0 or 1"):
        gold_agreement([1, 2], [1, 0])


# --------------------------------------------------------------------------- validation


def test_nan_raises_naming_first_bad_index():
    with pytest.raises(ValueError, match=r"chosen\[1\] is not finite"):
        pairwise_accuracy([1.0, np.nan, np.nan], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"rejected\[0\]"):
        evaluate_pairs([1.0], [np.inf])
    with pytest.raises(ValueError, match=r"rejected_lengths\[2\]"):
        length_rule_accuracy([1, 2, 3], [1, 2, np.nan])
    with pytest.raises(ValueError, match="rows"):
        pairwise_accuracy([1.0, 2.0], [0.0])
    with pytest.raises(ValueError, match="subsets"):
        subset_accuracies([1.0, 2.0], [0.0, 0.0], ["a"])
    with pytest.raises(ValueError, match="empty"):
        pairwise_accuracy([], [])


# --------------------------------------------------------------------------- reports


def test_evaluate_pairs_report_is_json_ready():
    chosen, rejected, subsets = make_pairs(SPEC)
    n = len(chosen)
    lengths_c = np.arange(n) + 10.0
    lengths_r = np.full(n, 12.0)
    gold = np.ones(n, dtype=bool)
    report = evaluate_pairs(chosen, rejected, subsets=subsets, chosen_lengths=lengths_c,
                            rejected_lengths=lengths_r, gold=gold, n_bins=5)
    json.dumps(report, allow_nan=False)
    assert report["n"] == n
    assert report["accuracy"] == round(7 / 16, 4)
    assert report["n_ties"] == 0
    assert report["rewardbench"]["overall"] == round(7 / 12, 4)
    assert len(report["calibration"]["bins"]) == 5
    assert report["gold"]["agreement"] == round(7 / 16, 4)
    assert report["gold"]["cohen_kappa"] == 0.0  # gold constant: p_e = p_o
    assert set(report["length"]) == {"correlation", "rules"}
    with pytest.raises(ValueError, match="both"):
        evaluate_pairs(chosen, rejected, chosen_lengths=lengths_c)


def test_evaluate_sets_report():
    rewards = [[3, 1, 2], [1, 5, 5], [2, 2, 2], [0, 1, 9]]
    lengths = [[9, 1, 2], [1, 8, 3], [5, 5, 7], [4, 1, 1]]  # longest is best in 3 of 4
    report = evaluate_sets(rewards, [0, 1, 2, 0], lengths)
    json.dumps(report, allow_nan=False)
    assert report["n_sets"] == 4 and report["k"] == 3
    assert report["best_of_k_accuracy"] == round((1 + 0.5 + 1 / 3) / 4, 4)
    assert report["best_of_k_accuracy_ties_wrong"] == 0.25
    assert report["chance"] == round(1 / 3, 4)
    assert report["length"]["longest_is_best"] == 1.0
    assert report["length"]["shortest_is_best"] == 0.0
    assert report["length"]["solved_by_length_rule"] is True
