"""Bradley-Terry MLE on 300,000 tie-free comparisons: prefkit vs choix.

Both get the same votes in their native form: choix a list of (winner, loser) pairs (building
it is not timed), prefkit integer arrays (model_a, model_b, outcome). prefkit's time includes
aggregating the votes into per-pair counts. They agree when the centred parameters match to
1e-6. Models: 100, true strengths ~ N(0, 1), model_b uniform among the other 99.

    python bench/arena_choix.py [--quick] [--json]
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


def votes(n_items: int, n_votes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n_items)
    a = rng.integers(0, n_items, n_votes)
    b = (a + rng.integers(1, n_items, n_votes)) % n_items
    outcome = np.where(rng.random(n_votes) < expit(s[a] - s[b]), 0, 1)
    return s, a, b, outcome


def best_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import choix

    from prefkit.rank import aggregate_pairwise, fit_bradley_terry

    n_items, n_votes = 100, 300_000
    repeats = 2 if args.quick else 5
    s, a, b, outcome = votes(n_items, n_votes)
    pairs = [(int(x), int(y)) if o == 0 else (int(y), int(x))
             for x, y, o in zip(a, b, outcome, strict=True)]

    def ours():
        return fit_bradley_terry(aggregate_pairwise(a, b, outcome, n_items)).params

    def theirs():
        return choix.ilsr_pairwise(n_items, pairs, alpha=0.0, tol=1e-10)

    ours()  # warm up imports and caches for both
    t_ours, ours_params = best_time(ours, repeats)
    t_peer, peer_params = best_time(theirs, max(1, repeats // 2))
    diff = float(np.max(np.abs(ours_params - (peer_params - peer_params.mean()))))
    result = {
        "bench": "arena_choix",
        "votes": n_votes,
        "models": n_items,
        "prefkit": {"seconds": round(t_ours, 4), "what": "aggregate + Newton BT MLE"},
        "peer": {"seconds": round(t_peer, 4), "what": "choix.ilsr_pairwise (tol 1e-10)"},
        "ratio": round(t_peer / t_ours, 1),
        "agree": diff <= 1e-6,
        "max_abs_param_diff": diff,
        "goal": {"ratio_min": 50},
        "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
