"""Reward-model evaluation as pure functions on arrays: data in, numbers out.

Inputs are per-example rewards (``chosen[i]``, ``rejected[i]`` for pair ``i``, or a
``[N, K]`` matrix for K-response sets) plus optional labels (subset names, lengths, gold
preferences). Nothing here loads a model; score the data first, then call these.

Conventions
-----------
- A pair is correct when ``r_chosen > r_rejected``. Exact ties count 0 (``ties="wrong"``,
  RewardBench v1, strict ``>``) or 0.5 (``ties="half"``).
- RewardBench v1 sections: see :data:`REWARDBENCH_V1_SECTIONS` and :func:`rewardbench_scores`.
- Every function validates its inputs: equal lengths and finite rewards; the first NaN/inf
  raises ``ValueError`` naming its index.
- Undefined statistics (a correlation of a constant, kappa when both raters are constant)
  are returned as ``None`` so that reports stay valid JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from prefkit.evaluate.calibration import (
    as_binary,
    as_finite,
    pairwise_calibration,
    same_length,
)

TIES = ("wrong", "half")

REWARDBENCH_V1_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
             "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                  "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python",
                  "hep-rust"),
}
"""RewardBench v1 section -> subsets (the 23 core-set subsets)."""

REWARDBENCH_V1_BALANCE: dict[str, tuple[str, ...]] = {
    "math-prm": ("hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
"""Subsets whose weight in their section equals the total count of a group of others.

RewardBench v1 up-weights ``math-prm`` (447 prompts) to 984 = 6 x 164, the total of the
``hep-*`` code subsets, so Reasoning = (acc_math + count-weighted mean acc_code) / 2."""


# --------------------------------------------------------------------------- helpers


def _pair_rewards(chosen: Any, rejected: Any) -> tuple[np.ndarray, np.ndarray]:
    c = as_finite(chosen, "chosen")
    r = as_finite(rejected, "rejected")
    same_length(chosen=c, rejected=r)
    return c, r


def _pair_scores(c: np.ndarray, r: np.ndarray, ties: str) -> np.ndarray:
    """Per-pair credit: 1 if ``c > r``, 0 if ``c < r``, 0 or 0.5 on an exact tie."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    tie_credit = 0.5 if ties == "half" else 0.0
    return (c > r).astype(float) + tie_credit * (c == r)


def _labels(subsets: Any, n: int, name: str = "subsets") -> list[str]:
    labels = [str(s) for s in subsets]
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} rows but there are {n} examples")
    return labels


def _groups(labels: list[str]) -> dict[str, np.ndarray]:
    """Label -> row indices, in order of first appearance."""
    index: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        index.setdefault(label, []).append(i)
    return {label: np.asarray(rows) for label, rows in index.items()}


def _nullable(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _rounded(obj: Any, digits: int = 4) -> Any:
    """Round every float in a nested dict/list (ints, str, bool, None untouched)."""
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), digits)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------- pairs


def pairwise_accuracy(chosen: Any, rejected: Any, *, ties: str = "wrong") -> float:
    """Share of pairs the reward model orders correctly::

        acc = (1/N) * sum_i [ 1(r_c,i > r_r,i) + t * 1(r_c,i == r_r,i) ]

    with ``t = 0`` for ``ties="wrong"`` (RewardBench v1) and ``t = 0.5`` for ``"half"``.
    """
    c, r = _pair_rewards(chosen, rejected)
    return float(_pair_scores(c, r, ties).mean())


def subset_accuracies(chosen: Any, rejected: Any, subsets: Any, *,
                      ties: str = "wrong") -> dict[str, dict[str, Any]]:
    """Per-subset :func:`pairwise_accuracy`: ``{subset: {"accuracy", "n"}}``, subsets in
    order of first appearance (labels are converted with ``str``)."""
    c, r = _pair_rewards(chosen, rejected)
    scores = _pair_scores(c, r, ties)
    groups = _groups(_labels(subsets, len(c)))
    return {s: {"accuracy": float(scores[rows].mean()), "n": len(rows)}
            for s, rows in groups.items()}


def _section_weights(present: list[str], per: Mapping[str, Mapping[str, Any]],
                     balance: Mapping[str, Sequence[str]]) -> list[float]:
    weights = []
    for s in present:
        group = [g for g in balance.get(s, ()) if g in present]
        weights.append(float(sum(per[g]["n"] for g in group)) if group else float(per[s]["n"]))
    return weights


def _section_scores(per: Mapping[str, Mapping[str, Any]],
                    sections: Mapping[str, Sequence[str]],
                    balance: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, members in sections.items():
        present = [s for s in members if s in per]
        if not present:
            continue
        weights = np.asarray(_section_weights(present, per, balance))
        accuracy = np.asarray([per[s]["accuracy"] for s in present])
        out[name] = {
            "score": float(weights @ accuracy / weights.sum()),
            "n": int(sum(per[s]["n"] for s in present)),
            "subsets": present,
        }
    return out


def _check_sections(sections: Mapping[str, Sequence[str]]) -> None:
    seen: dict[str, str] = {}
    for name, members in sections.items():
        for s in members:
            if s in seen:
                raise ValueError(f"subset {s!r} is in sections {seen[s]!r} and {name!r}")
            seen[s] = name


def rewardbench_scores(chosen: Any, rejected: Any, subsets: Any, *, ties: str = "wrong",
                       sections: Mapping[str, Sequence[str]] | None = None,
                       balance: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """RewardBench-style scores: per subset, per section and overall.

    - ``subsets``: ``{subset: {"accuracy", "n"}}`` for every subset in the data.
    - ``sections``: ``{section: {"score", "n", "subsets"}}`` for each section with at least
      one subset present. A section score is the weighted mean of its subsets' accuracies,
      ``sum_s w_s acc_s / sum_s w_s``, with ``w_s = n_s`` (the example count) except for
      the subsets in ``balance``: ``w_s = sum of n_g`` over the group ``g`` listed for
      ``s`` that is present. The default (RewardBench v1) balances ``math-prm`` against the
      ``hep-*`` code subsets, so that::

          Reasoning = (acc_math-prm + sum_code n_c acc_c / sum_code n_c) / 2

      which is ``(math + mean(code)) / 2`` when the code subsets have equal counts (164
      each in v1, where math-prm's 447 prompts are counted as 984). Pass ``balance={}``
      for plain count weighting.
    - ``overall``: the unweighted mean of the section scores present (``None`` if none).
      RewardBench v1's "Prior Sets" (half weight) are not included.
    - ``other``: subsets not in any section, reported per subset; they do not enter
      ``overall``.

    ``sections`` defaults to :data:`REWARDBENCH_V1_SECTIONS` (a subset may belong to one
    section only); ``balance`` defaults to :data:`REWARDBENCH_V1_BALANCE`.
    """
    sections = REWARDBENCH_V1_SECTIONS if sections is None else sections
    balance = REWARDBENCH_V1_BALANCE if balance is None else balance
    _check_sections(sections)
    per = subset_accuracies(chosen, rejected, subsets, ties=ties)
    section_scores = _section_scores(per, sections, balance)
    mapped = {s for members in sections.values() for s in members}
    scores = [v["score"] for v in section_scores.values()]
    return {
        "subsets": per,
        "sections": section_scores,
        "overall": float(np.mean(scores)) if scores else None,
        "other": {s: v for s, v in per.items() if s not in mapped},
        "ties": ties,
    }


# --------------------------------------------------------------------------- K-response sets


def _as_sets(rewards: Any, best: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate ``[N, K]`` rewards, the ``[N]`` best index and an optional ``[N, K]`` mask."""
    R = np.asarray(rewards, dtype=float)
    if R.ndim != 2:
        raise ValueError(f"rewards must be 2-D [N, K], got shape {R.shape}")
    valid = np.ones(R.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if valid.shape != R.shape:
        raise ValueError(f"mask has shape {valid.shape} but rewards has {R.shape}")
    R = as_finite(np.where(valid, R, 0.0), "rewards", ndim=2)  # masked entries may be NaN
    b = np.asarray(best)
    if b.ndim != 1 or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"best must be a 1-D integer array, got {b.dtype} {b.shape}")
    same_length(rewards=R, best=b)
    bad = (b < 0) | (b >= R.shape[1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"best[{i}] = {b[i]} is outside [0, {R.shape[1]})")
    masked_best = ~valid[np.arange(len(b)), b]
    if masked_best.any():
        i = int(np.flatnonzero(masked_best)[0])
        raise ValueError(f"best[{i}] = {b[i]} points at a masked response")
    return R, b, valid


def _set_scores(R: np.ndarray, b: np.ndarray, valid: np.ndarray, ties: str) -> np.ndarray:
    """Per-set credit for picking the argmax: 1 if ``best`` is the unique max, ``1/m`` when
    it shares the max with ``m - 1`` others (``ties="fraction"``) or 0 (``"wrong"``)."""
    if ties not in ("fraction", "wrong"):
        raise ValueError(f"ties must be 'fraction' or 'wrong', got {ties!r}")
    masked = np.where(valid, R, -np.inf)
    at_max = valid & (masked == masked.max(axis=1, keepdims=True))
    m = at_max.sum(axis=1)
    hit = at_max[np.arange(len(b)), b]
    if ties == "fraction":
        return hit / m
    return (hit & (m == 1)).astype(float)


def best_of_k_accuracy(rewards: Any, best: Any, mask: Any = None, *,
                       ties: str = "fraction") -> float:
    """Share of K-response sets where the highest reward goes to the true best response::

        acc = (1/N) * sum_i 1(best_i in argmax_k r_ik) / |argmax_k r_ik|

    ``rewards`` is ``[N, K]``; ``best[i]`` the index of the true best response of set i;
    ``mask`` (``[N, K]`` bool, optional) marks real responses when sets have fewer than K
    (masked entries are ignored and may be NaN). Ties at the maximum: by default the true
    best earns ``1/m`` when ``m`` responses share the max (``ties="fraction"``: the
    expected accuracy of a random tie-break, as in RewardBench v2 best-of-4); with
    ``ties="wrong"`` any tie at the max counts 0 (a constant reward model then scores 0
    rather than chance).
    """
    R, b, valid = _as_sets(rewards, best, mask)
    return float(_set_scores(R, b, valid, ties).mean())


# --------------------------------------------------------------------------- length


def length_correlation(rewards: Any, lengths: Any) -> dict[str, Any]:
    """Pearson and Spearman correlation between rewards and response lengths.

    Returns ``{"pearson", "spearman", "n"}``; a coefficient is ``None`` when undefined
    (fewer than 2 points or a constant input). A strong positive value suggests the reward
    model pays for length.
    """
    x = as_finite(rewards, "rewards")
    y = as_finite(lengths, "lengths")
    n = same_length(rewards=x, lengths=y)
    if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": None, "spearman": None, "n": n}
    return {
        "pearson": _nullable(stats.pearsonr(x, y)[0]),
        "spearman": _nullable(stats.spearmanr(x, y)[0]),
        "n": n,
    }


def _rule_summary(longer: np.ndarray, threshold: float) -> dict[str, Any]:
    longer_wins = float(longer.mean())
    shorter_wins = 1.0 - longer_wins
    return {
        "n": len(longer),
        "longer_wins": longer_wins,
        "shorter_wins": shorter_wins,
        "solved_by_length_rule": bool(max(longer_wins, shorter_wins) >= threshold),
    }


def length_rule_accuracy(chosen_lengths: Any, rejected_lengths: Any, subsets: Any = None, *,
                         flag_threshold: float = 0.8) -> dict[str, Any]:
    """How well the length-only rulers "longer wins" and "shorter wins" do on the pairs.

    Per pair, "longer wins" earns ``1(len_c > len_r) + 0.5 * 1(len_c == len_r)`` and
    "shorter wins" the complement, so the two accuracies sum to 1. A (sub)set is flagged
    ``solved_by_length_rule`` when either ruler reaches ``flag_threshold``: its accuracy
    then says little about the reward model beyond length preference.

    Returns ``{"overall": {...}, "subsets": {subset: {...}}, "flagged": [subsets],
    "flag_threshold"}`` with entries ``{"n", "longer_wins", "shorter_wins",
    "solved_by_length_rule"}``; ``subsets`` is empty when no labels are given.
    """
    lc = as_finite(chosen_lengths, "chosen_lengths")
    lr = as_finite(rejected_lengths, "rejected_lengths")
    n = same_length(chosen_lengths=lc, rejected_lengths=lr)
    longer = (lc > lr) + 0.5 * (lc == lr)
    per: dict[str, dict[str, Any]] = {}
    if subsets is not None:
        for s, rows in _groups(_labels(subsets, n)).items():
            per[s] = _rule_summary(longer[rows], flag_threshold)
    return {
        "overall": _rule_summary(longer, flag_threshold),
        "subsets": per,
        "flagged": [s for s, v in per.items() if v["solved_by_length_rule"]],
        "flag_threshold": float(flag_threshold),
    }


# --------------------------------------------------------------------------- gold


def gold_agreement(rm_prefers_chosen: Any, gold_prefers_chosen: Any) -> dict[str, Any]:
    """Agreement of the reward model's binary preferences with gold ones, and Cohen's kappa::

        p_o   = (1/N) sum_i 1(rm_i == gold_i)
        p_e   = P(rm=1) P(gold=1) + P(rm=0) P(gold=0)
        kappa = (p_o - p_e) / (1 - p_e)

    ``kappa`` is ``None`` when ``p_e == 1`` (both raters constant and equal).
    """
    a = as_binary(rm_prefers_chosen, "rm_prefers_chosen")
    g = as_binary(gold_prefers_chosen, "gold_prefers_chosen")
    n = same_length(rm_prefers_chosen=a, gold_prefers_chosen=g)
    p_o = float(np.mean(a == g))
    pa, pg = float(a.mean()), float(g.mean())
    p_e = pa * pg + (1 - pa) * (1 - pg)
    kappa = None if np.isclose(p_e, 1.0) else (p_o - p_e) / (1 - p_e)
    return {"agreement": p_o, "cohen_kappa": kappa, "n": n}


# --------------------------------------------------------------------------- reports


def _length_report(c: np.ndarray, r: np.ndarray, chosen_lengths: Any, rejected_lengths: Any,
                   subsets: Any) -> dict[str, Any]:
    lc = as_finite(chosen_lengths, "chosen_lengths")
    lr = as_finite(rejected_lengths, "rejected_lengths")
    same_length(chosen=c, chosen_lengths=lc, rejected_lengths=lr)
    return {
        "correlation": length_correlation(np.concatenate([c, r]), np.concatenate([lc, lr])),
        "rules": length_rule_accuracy(lc, lr, subsets),
    }


def evaluate_pairs(chosen_rewards: Any, rejected_rewards: Any, *, subsets: Any = None,
                   chosen_lengths: Any = None, rejected_lengths: Any = None, gold: Any = None,
                   n_bins: int = 10, scale: float = 1.0, digits: int = 4) -> dict[str, Any]:
    """One JSON-ready report for a reward model scored on (chosen, rejected) pairs.

    Keys: ``n``, ``accuracy`` (ties wrong), ``accuracy_ties_half``, ``n_ties``,
    ``mean_margin`` (mean of ``r_c - r_r``), ``calibration`` (:func:`pairwise_calibration`
    with its reliability bins), and when the inputs are given: ``rewardbench``
    (:func:`rewardbench_scores`, from ``subsets``), ``length`` (``correlation`` of rewards
    with lengths over both responses of every pair, and the ``rules`` of
    :func:`length_rule_accuracy`; needs both length arrays), ``gold``
    (:func:`gold_agreement` of ``r_c > r_r`` with ``gold``, a bool per pair: does the gold
    preference favour the chosen response?). Floats are rounded to ``digits`` places.
    """
    c, r = _pair_rewards(chosen_rewards, rejected_rewards)
    report: dict[str, Any] = {
        "n": len(c),
        "accuracy": float(_pair_scores(c, r, "wrong").mean()),
        "accuracy_ties_half": float(_pair_scores(c, r, "half").mean()),
        "n_ties": int(np.sum(c == r)),
        "mean_margin": float(np.mean(c - r)),
        "calibration": pairwise_calibration(c, r, n_bins, scale=scale),
    }
    if subsets is not None:
        report["rewardbench"] = rewardbench_scores(c, r, subsets)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        report["length"] = _length_report(c, r, chosen_lengths, rejected_lengths, subsets)
    if gold is not None:
        report["gold"] = gold_agreement(c > r, gold)
    return _rounded(report, digits)


def _set_length_report(R: np.ndarray, b: np.ndarray, valid: np.ndarray, lengths: Any,
                       flag_threshold: float) -> dict[str, Any]:
    L = np.asarray(lengths, dtype=float)
    if L.shape != R.shape:
        raise ValueError(f"lengths has shape {L.shape} but rewards has {R.shape}")
    L = as_finite(np.where(valid, L, 0.0), "lengths", ndim=2)
    longest = float(_set_scores(L, b, valid, "fraction").mean())
    shortest = float(_set_scores(-L, b, valid, "fraction").mean())
    return {
        "correlation": length_correlation(R[valid], L[valid]),
        "longest_is_best": longest,
        "shortest_is_best": shortest,
        "solved_by_length_rule": bool(max(longest, shortest) >= flag_threshold),
    }


def evaluate_sets(rewards: Any, best: Any, lengths: Any = None, *, mask: Any = None,
                  flag_threshold: float = 0.8, digits: int = 4) -> dict[str, Any]:
    """One JSON-ready report for a reward model scored on K-response sets.

    ``rewards`` and ``lengths`` are ``[N, K]``, ``best`` ``[N]`` (index of the true best),
    ``mask`` optional ``[N, K]`` bool of real responses. Keys: ``n_sets``, ``k``,
    ``best_of_k_accuracy`` (ties at the max earn ``1/m``), ``best_of_k_accuracy_ties_wrong``,
    ``chance`` (``mean_i 1/K_i``, the accuracy of a random pick) and, with ``lengths``,
    ``length``: the reward/length correlation over all real responses and the accuracy of
    the rulers "the longest is best" / "the shortest is best" (length ties earn ``1/m``),
    flagged ``solved_by_length_rule`` when either reaches ``flag_threshold``.
    """
    R, b, valid = _as_sets(rewards, best, mask)
    report: dict[str, Any] = {
        "n_sets": R.shape[0],
        "k": R.shape[1],
        "best_of_k_accuracy": float(_set_scores(R, b, valid, "fraction").mean()),
        "best_of_k_accuracy_ties_wrong": float(_set_scores(R, b, valid, "wrong").mean()),
        "chance": float(np.mean(1.0 / valid.sum(axis=1))),
    }
    if lengths is not None:
        report["length"] = _set_length_report(R, b, valid, lengths, flag_threshold)
    return _rounded(report, digits)
