"""Bradley-Terry fit + 100 bootstrap rounds on 1,000,000 votes among 100 models (5% ties):
prefkit vs the FastChat-style fit.

The peer is the straightforward Chatbot-Arena recipe (as measured in peer-baselines.md): one
row per decisive vote with weight 2 (+1 in model_a's column, -1 in model_b's, y = 1 if model_a
won), a tie as two rows of weight 1 (y = 1 and y = 0) -- FastChat's weighting --, scikit-learn
``LogisticRegression(fit_intercept=False, C=inf, lbfgs, tol=1e-10)``, and a bootstrap that
resamples vote rows with replacement and refits. prefkit aggregates the votes into per-pair
counts, fits by Newton's method and bootstraps by multinomial resampling of the counts. Both
fit the same likelihood (ties as half wins); they agree when every point rating is within 0.5
Elo points. With --quick the peer runs 10 bootstrap rounds and its time is scaled to 100.

    python bench/arena_bt.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402


def votes(n_items: int, n_votes: int, tie_rate: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n_items)
    a = rng.integers(0, n_items, n_votes)
    b = (a + rng.integers(1, n_items, n_votes)) % n_items
    win = rng.random(n_votes) < expit(s[a] - s[b])
    outcome = np.where(rng.random(n_votes) < tie_rate, 2, np.where(win, 0, 1))
    return s, a, b, outcome


def peer_fit(a, b, outcome, n_items):
    """FastChat-style logistic regression on the one-hot battle matrix (natural-log units)."""
    from sklearn.linear_model import LogisticRegression

    tie = outcome == 2
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="100k votes, 10 peer bootstrap rounds (scaled to 100)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from prefkit.rank import aggregate_pairwise, bootstrap_bt, fit_bradley_terry, to_elo

    n_items, rounds = 100, 100
    n_votes = 100_000 if args.quick else 1_000_000
    peer_rounds = 10 if args.quick else rounds
    s, a, b, outcome = votes(n_items, n_votes)

    start = time.perf_counter()
    counts = aggregate_pairwise(a, b, outcome, n_items)
    fit = fit_bradley_terry(counts)
    boot = bootstrap_bt(counts, rounds, initial_params=fit.params)
    t_ours = time.perf_counter() - start
    ours_low, ours_high = np.percentile(boot.samples, [2.5, 97.5], axis=0)

    start = time.perf_counter()
    peer_params = peer_fit(a, b, outcome, n_items)
    t_peer_fit = time.perf_counter() - start
    start = time.perf_counter()
    peer_samples = peer_bootstrap(a, b, outcome, n_items, peer_rounds)
    t_peer_boot = (time.perf_counter() - start) * rounds / peer_rounds
    t_peer = t_peer_fit + t_peer_boot

    elo_ours, elo_peer = to_elo(fit.params), to_elo(peer_params)
    diff = float(np.max(np.abs(elo_ours - elo_peer)))
    peer_low, peer_high = np.percentile(peer_samples, [2.5, 97.5], axis=0)
    scale = 400 / np.log(10)
    result = {
        "bench": "arena_bt",
        "votes": n_votes, "models": n_items, "tie_rate": 0.05, "bootstrap_rounds": rounds,
        "prefkit": {"seconds": round(t_ours, 3),
                    "ci_width_median_elo": round(float(np.median(ours_high - ours_low)) * scale,
                                                 2)},
        "peer": {"seconds": round(t_peer, 2), "fit_seconds": round(t_peer_fit, 2),
                 "bootstrap_seconds": round(t_peer_boot, 2),
                 "bootstrap_rounds_run": peer_rounds,
                 "ci_width_median_elo": round(float(np.median(peer_high - peer_low)) * scale, 2),
                 "what": "sklearn LogisticRegression on the one-hot battle matrix, "
                         "bootstrap by resampling rows"},
        "ratio": round(t_peer / t_ours, 1),
        "agree": diff <= 0.5,
        "max_abs_elo_diff": round(diff, 4),
        "goal": {"prefkit_seconds_max": 2.0, "ratio_min": 100, "elo_diff_max": 0.5},
        "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
