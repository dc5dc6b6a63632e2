"""Votes to a correct ranking: prefkit's best arena loop (Plackett-Luce MAP + expected
information gain matchmaking) vs the K-Sort-Arena-style loop (TrueSkill k-wise updates + UCB
matchmaking, arXiv 2408.14468), on simulated voters.

Each configuration (items, k items per vote, label noise) hides true log-strengths ``s ~ N(0,
1)``; every vote is drawn from them (k = 2: Bradley-Terry with the label flipped with
probability ``noise``; k > 2: a Plackett-Luce ranking by Gumbel-max, replaced by a random
permutation with probability ``noise``). A loop's cost is the number of votes until Kendall's
tau between its estimate and ``s`` reaches 0.9 and stays there
(:func:`prefkit.rank.simulate.simulate_convergence`), the median over seeds (the same truths
for every loop). For k = 2 the K-Sort loop is TrueSkill pairwise + UCB. Reference rows: online
Elo (FastChat's K = 4) + random pairs and Bradley-Terry MAP + random pairs.

Two rules for "stays there", both from the same runs:

- ``hold`` (the goal's rule): the first check from which tau stays >= 0.9 at every check until
  the vote count has doubled (``hold=2``; budget ``600 * n_items / (1 - noise)^2`` votes);
- ``three_checks``: tau >= 0.9 at three checks in a row (``n_items // 2`` votes apart) -- the
  rule of the 2026-11-30 run. TrueSkill never settles (its dynamics add variance at every
  update), so its ranking passes three checks on a lucky stretch and falls back below 0.9;
  this rule counts that as converged.

``ratio`` = peer votes / prefkit votes (> 1: prefkit needs fewer votes), the median over
configurations (a peer median that did not converge within the budget counts as the budget: a
lower bound, flagged); ``agree`` = both loops reach the true ranking (prefkit in the median
run of every configuration, the peer in some run of every configuration). Goal: ratio >= 1.5.

Because votes-to-target vary 3-10x between truths and voter draws, two more figures go with it:
``paired`` -- the geometric mean over configurations and seeds of the per-run ratio (same truth,
same seed; a run that never converged counts as ``max_votes``), with a 95% bootstrap interval
over seeds; and ``oracle_ratio`` -- the same ratio for an oracle matchmaker that knows the
hidden strengths (``bench/_oracle_match.py``, on the same Plackett-Luce rater).
``bench/arena_design_ceiling.py`` bounds what any matchmaking can save.

    python bench/arena_convergence.py [--quick] [--json] [--png PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402
from _oracle_match import oracle_match  # noqa: E402

PREFKIT = ("pl", "infogain")
PEER = ("trueskill", "ucb")
PEER_STATIC = ("trueskill_static", "ucb")
ORACLE = ("pl", "oracle_match")
COMBOS = [("elo", "random"), ("bt", "random"), PEER, PEER_STATIC, PREFKIT, ("pl", oracle_match)]
# seeds 1000+: held out (matchmaking and prior were chosen on seeds 0-23); 24 seeds at 20
# items because votes-to-target varies 3-10x between truths, so fewer seeds give a noisy
# median (the 2026-11-30 run used 1000-1009); 12 at 50 items (runs there cost ~5x more)
NOISES = (0.0, 0.1, 0.2)
FULL = [{"n_items_list": (20,), "ks": (2, 4), "noises": NOISES, "seeds": range(1000, 1024)},
        {"n_items_list": (50,), "ks": (2, 4), "noises": NOISES, "seeds": range(1000, 1012)}]
QUICK = [{"n_items_list": (20,), "ks": (2, 4), "noises": (0.0,), "seeds": range(1000, 1008)}]


HOLD = 2.0


def compare(table: list[dict], votes: str, per_seed: str, peer_combo=PEER) -> dict:
    """prefkit vs the peer (and the oracle) on one convergence rule: the table's ``votes`` /
    ``per_seed`` columns."""
    def cell(key, combo):
        return next(r for r in table if (r["n_items"], r["k"], r["noise"]) == key
                    and (r["method"], r["strategy"]) == combo)

    def ratio_of(peer_row, row):
        # a median that never converged counts as the budget (a lower bound for the peer)
        if row[votes] is None:
            return None, False
        peer_votes = peer_row[votes] if peer_row[votes] is not None else peer_row["max_votes"]
        return round(peer_votes / row[votes], 3), peer_row[votes] is None

    configs, log_ratios = [], []
    for row in table:
        if (row["method"], row["strategy"]) != PREFKIT:
            continue
        key = (row["n_items"], row["k"], row["noise"])
        peer, oracle = cell(key, peer_combo), cell(key, ORACLE)
        ratio, lower_bound = ratio_of(peer, row)
        configs.append({"n_items": key[0], "k": key[1], "noise": key[2],
                        "prefkit": row[votes], "peer": peer[votes], "oracle": oracle[votes],
                        "peer_converged": peer["converged"] if votes == "votes" else None,
                        "ratio": ratio, "ratio_is_lower_bound": lower_bound,
                        "oracle_ratio": ratio_of(peer, oracle)[0]})
        capped = [[row["max_votes"] if v is None else v for v in r[per_seed]]
                  for r in (peer, row)]
        log_ratios.append(np.log(np.array(capped[0]) / np.array(capped[1])))

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "ratio": median(c["ratio"] for c in configs),
        "ratio_by_k": {f"k={k}": median(c["ratio"] for c in configs if c["k"] == k)
                       for k in sorted({c["k"] for c in configs})},
        "paired": _paired_summary(log_ratios, [c["k"] for c in configs]),
        "oracle_ratio": median(c["oracle_ratio"] for c in configs),
        "configs": configs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 items, k in (2, 4), noise 0, 8 seeds")
    parser.add_argument("--json", action="store_true", help="one-line JSON")
    parser.add_argument("--png", default=str(Path(tempfile.gettempdir())
                                             / "prefkit_arena_convergence.png"))
    args = parser.parse_args()
    from prefkit.rank.simulate import convergence_table, plot_convergence

    preset = QUICK if args.quick else FULL
    start = time.perf_counter()
    table = [row for part in preset
             for row in convergence_table(**part, combos=COMBOS, hold=HOLD,
                                          processes=min(2, os.cpu_count() or 1))]
    seconds = time.perf_counter() - start
    png = plot_convergence(table, args.png)
    hold = compare(table, "votes", "votes_per_seed")
    three = compare(table, "votes_three_checks", "votes_three_checks_per_seed")
    static = compare(table, "votes", "votes_per_seed", PEER_STATIC)
    static_three = compare(table, "votes_three_checks", "votes_three_checks_per_seed",
                           PEER_STATIC)
    ratio = hold["ratio"]
    result = {
        "bench": "arena_convergence",
        "setup": {"parts": [{key: list(value) for key, value in part.items()}
                            for part in preset],
                  "target_tau": 0.9, "quick": args.quick, "hold": HOLD,
                  "max_votes": f"300 * {HOLD} * n_items / (1 - noise)^2",
                  "check_every": "n_items // 2", "processes": min(2, os.cpu_count() or 1)},
        "prefkit": {"what": "Plackett-Luce MAP (alpha 0.1, warm-started refits) + expected "
                            "information gain (D-optimal) matchmaking on its Laplace posterior",
                    "votes": [c["prefkit"] for c in hold["configs"]]},
        "peer": {"what": "K-Sort-Arena style: TrueSkill k-wise update + UCB matchmaking "
                         "(pivot = least compared, opponents by -|mu diff| + "
                         "sqrt(2 ln t / (1e-5 + n_pair)), K-Sort's reference constants)",
                 "votes": [c["peer"] for c in hold["configs"]]},
        "ratio": ratio,
        "ratio_by_k": hold["ratio_by_k"],
        "paired": hold["paired"],
        "oracle_ratio": hold["oracle_ratio"],
        "hold_rule": hold,
        "three_checks_rule": three,
        "vs_static_trueskill": {
            "what": "the same UCB loop with TrueSkill's dynamics off (tau = 0: skills assumed "
                    "constant; not K-Sort's setting) -- how much of the ratio is the rater",
            "hold_rule": static, "three_checks_rule": static_three},
        # both loops reach the true ranking (prefkit in the median run of every
        # configuration, the peer in some run of every configuration)
        "agree": all(c["prefkit"] is not None for c in hold["configs"])
        and all(r["converged"] > 0 for r in table if (r["method"], r["strategy"]) == PEER),
        "agree_three_checks": all(
            c["prefkit"] is not None for c in three["configs"])
        and all(any(v is not None for v in r["votes_three_checks_per_seed"]) for r in table
                if (r["method"], r["strategy"]) == PEER),
        "goal": {"ratio_min": 1.5, "met": ratio is not None and ratio >= 1.5},
        "table": table,
        "png": str(png),
        "seconds": round(seconds, 1),
        "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def _paired_summary(log_ratios: list[np.ndarray], ks: list[int], rounds: int = 2000) -> dict:
    """Geometric mean of the per-run ratios (one array of seeds per configuration) overall and
    per ``k``, with 95% bootstrap intervals from resampling each configuration's seeds."""
    rng = np.random.default_rng(0)
    out = {}
    for name, keep in [("all", list(range(len(ks))))] + [
            (f"k={k}", [i for i, ki in enumerate(ks) if ki == k]) for k in sorted(set(ks))]:
        runs = [log_ratios[i] for i in keep]
        total = sum(len(r) for r in runs)
        boot = sum(r[rng.integers(0, len(r), size=(rounds, len(r)))].sum(axis=1)
                   for r in runs) / total
        lo, hi = np.quantile(boot, [0.025, 0.975])
        out[name] = {"geomean": round(float(np.exp(np.concatenate(runs).mean())), 3),
                     "ci95": [round(float(np.exp(lo)), 3), round(float(np.exp(hi)), 3)]}
    return out


if __name__ == "__main__":
    main()
