"""Bradley-Terry leaderboard with 95% intervals (sandwich, and 100 bootstrap rounds) from one
Parquet file of 1,000,000 votes among 100 models (5% ties): prefkit vs LMArena's arena-rank,
end to end; and prefkit vs the scikit-learn FastChat-style fit as a second row.

Row 1 (``peer``): each side runs in a fresh process from the same Parquet file -- process
start, read, aggregate, fit, intervals: ``prefkit arena rank FILE --ci sandwich|bootstrap``
against arena-rank 0.1.1 (``PairDataset.from_pandas`` + ``BradleyTerry.compute_ratings_and_cis``
with its defaults; its bootstrap pool under the spawn start method, see ``_arena_rank_child.py``).
Agreement (``_arena_race.py``): ratings within 0.01 Elo of arena-rank's converged optimum,
sandwich widths within 2%, bootstrap bounds within 2% on arena-rank's own resamples.

Row 2 (``second_peer``): in one process on the vote arrays, the straightforward Chatbot-Arena
recipe -- one row per decisive vote with weight 2, a tie as two rows of weight 1 (FastChat's
weighting), scikit-learn ``LogisticRegression(fit_intercept=False, C=inf, lbfgs, tol=1e-10)``,
a bootstrap that resamples vote rows and refits -- against prefkit's aggregate + Newton +
multinomial count bootstrap.

    python bench/arena_bt.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _arena_data import write_battles  # noqa: E402
from _arena_race import GOAL, race, summary  # noqa: E402
from _common import machine  # noqa: E402


def peer_fit(a, b, outcome, n_items):
    """FastChat-style logistic regression on the one-hot battle matrix (natural-log units)."""
    from sklearn.linear_model import LogisticRegression

    tie = outcome >= 2
    rows_a = np.concatenate([a, a[tie]])
    rows_b = np.concatenate([b, b[tie]])
    y = np.concatenate([np.where(tie, 1, outcome == 0).astype(int), np.zeros(tie.sum(), int)])
    # FastChat counts a decisive vote twice and a tie as one win for each side
    weight = np.concatenate([np.where(tie, 1.0, 2.0), np.ones(tie.sum())])
    x = np.zeros((len(rows_a), n_items))
    x[np.arange(len(rows_a)), rows_a] = 1.0
    x[np.arange(len(rows_a)), rows_b] = -1.0
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=1000)
    model.fit(x, y, sample_weight=weight)
    coef = model.coef_[0]
    return coef - coef.mean()


def peer_bootstrap(a, b, outcome, n_items, rounds, seed=0):
    rng = np.random.default_rng(seed)
    out = np.empty((rounds, n_items))
    for r in range(rounds):
        idx = rng.integers(0, len(a), len(a))
        out[r] = peer_fit(a[idx], b[idx], outcome[idx], n_items)
    return out


def sklearn_row(path: Path, rounds: int, peer_rounds: int) -> dict:
    """prefkit's functions vs the scikit-learn FastChat-style fit, in this process."""
    import sklearn.linear_model  # noqa: F401 - imported before the clock starts

    from prefkit.data.battles import load_battle_arrays
    from prefkit.rank import aggregate_pairwise, bootstrap_bt, fit_bradley_terry, to_elo

    arrays = load_battle_arrays(path)
    a, b, outcome, n_items = arrays.a, arrays.b, arrays.outcome, len(arrays.models)
    start = time.perf_counter()
    counts = aggregate_pairwise(a, b, outcome, n_items)
    fit = fit_bradley_terry(counts)
    boot = bootstrap_bt(counts, rounds, initial_params=fit.params)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    peer_params = peer_fit(a, b, outcome, n_items)
    t_peer_fit = time.perf_counter() - start
    start = time.perf_counter()
    peer_samples = peer_bootstrap(a, b, outcome, n_items, peer_rounds)
    t_peer_boot = (time.perf_counter() - start) * rounds / peer_rounds
    t_peer = t_peer_fit + t_peer_boot
    diff = float(np.max(np.abs(to_elo(fit.params) - to_elo(peer_params))))
    scale = 400 / np.log(10)
    ours_low, ours_high = np.percentile(boot.samples, [2.5, 97.5], axis=0)
    peer_low, peer_high = np.percentile(peer_samples, [2.5, 97.5], axis=0)
    return {
        "what": "sklearn LogisticRegression on the one-hot battle matrix (FastChat-style), "
                "bootstrap by resampling rows; in one process on the vote arrays",
        "prefkit_seconds": round(t_ours, 3),
        "peer_seconds": round(t_peer, 2), "peer_fit_seconds": round(t_peer_fit, 2),
        "peer_bootstrap_seconds_scaled": round(t_peer_boot, 2),
        "peer_bootstrap_rounds_run": peer_rounds,
        "ci_width_median_elo": {
            "prefkit": round(float(np.median(ours_high - ours_low)) * scale, 2),
            "peer": round(float(np.median(peer_high - peer_low)) * scale, 2)},
        "ratio": round(t_peer / t_ours, 1),
        "max_abs_elo_diff": round(diff, 4),
        "agree": diff <= 0.01,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20k votes, 20 models, 4 bootstrap rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n_items, n_votes, rounds = (20, 20_000, 4) if args.quick else (100, 1_000_000, 100)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "votes.parquet"
        write_battles(path, n_items, n_votes, tie_rate=0.05)
        runs = race(path, rounds=rounds, style=False,
                    repeats={"sandwich": 3, "bootstrap": 1} if args.quick else None)
        second = sklearn_row(path, rounds, rounds)
    result = {
        "bench": "arena_bt", "votes": n_votes, "models": n_items, "tie_rate": 0.05,
        "bootstrap_rounds": rounds, **summary(runs), "runs": runs,
        "second_peer": second,
        "goal": {**GOAL, "second_peer_ratio_min": 100},
        "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
