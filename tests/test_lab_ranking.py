"""The lab's ranking accuracy is computed from each policy's own log-probs, with the number of
held-out pairs, a Wilson interval and the pairs re-ordered relative to SFT."""

from __future__ import annotations

import random

import numpy as np

from prefkit.evaluate.winrate import wilson_interval
from prefkit.lab import pipeline
from prefkit.lab.base_model import build_base_model
from prefkit.lab.tasks import SortTask

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, sft_examples=64,
            steps=3, batch_size=16, row_length=128)


def test_two_policies_two_ranking_accuracies(tmp_path):
    """Pairs on which two policies disagree, ordered as the first prefers: the first must score
    1.0 and the second 0.0 -- impossible unless each policy's own log-probs are used."""
    task = SortTask(max_len=4)
    first, tok, _ = build_base_model(task, tmp_path, **TINY)
    second, _, _ = build_base_model(task, tmp_path, **{**TINY, "seed": 1})
    rng = random.Random(0)
    prompts = [task.sample_prompt(rng) for _ in range(256)]
    answers = [(task.demonstration(p, rng, 0.5), task.demonstration(p, rng, 0.5))
               for p in prompts]
    pairs = [(p, a, b) for p, (a, b) in zip(prompts, answers, strict=True) if a != b]
    margin = {}
    for name, model in (("first", first), ("second", second)):
        lc, lr = pipeline._heldout_logps(model, tok, pairs)
        margin[name] = lc - lr
    disagree = np.flatnonzero(np.sign(margin["first"]) * np.sign(margin["second"]) < 0)
    assert len(disagree) >= 5
    ordered = [pairs[i] if margin["first"][i] > 0 else (pairs[i][0], pairs[i][2], pairs[i][1])
               for i in disagree]
    stats_first, right_first = pipeline._ranking(first, tok, ordered)
    stats_second, _ = pipeline._ranking(second, tok, ordered, sft_right=right_first)
    n = len(ordered)
    assert stats_first["ranking_accuracy"] == 1.0 and stats_second["ranking_accuracy"] == 0.0
    assert stats_first["ranking_pairs"] == stats_second["ranking_pairs"] == n
    assert stats_first["ranking_flips_vs_sft"] is None  # no SFT ordering given
    assert stats_second["ranking_flips_vs_sft"] == [0, n]  # every pair re-ordered, for the worse
    lo, hi = wilson_interval(n, n)
    assert stats_first["ranking_accuracy_ci"] == [round(lo, 4), round(hi, 4)]
    assert stats_second["ranking_accuracy_ci"] == [0.0, round(1 - lo, 4)]
    assert right_first.tolist() == [True] * n


def test_no_heldout_pairs():
    stats, right = pipeline._ranking(None, None, [])
    assert stats == {"ranking_accuracy": None, "ranking_accuracy_ci": None, "ranking_pairs": 0,
                     "ranking_flips_vs_sft": None}
    assert right.shape == (0,)
