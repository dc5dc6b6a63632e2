"""Style-controlled Bradley-Terry with 100 bootstrap rounds on 1,000,000 votes: prefkit vs a
FastChat-style fit.

Votes among 100 models carry 4 style counts per side (tokens, headers, lists, bold); the true
outcome depends on the ratings and on the style covariates (as Chatbot Arena's style control
models it: ``sigmoid(theta_a - theta_b + x^T gamma)``, ``x = z-scored (a - b) / (a + b + 1)``).
Both fits maximize the same penalized likelihood (ties as y = 0.5, L2 0.5 on ratings and
style coefficients, FastChat's choice). The peer follows FastChat's ``compute_style_control``
recipe: scipy L-BFGS-B with the analytic gradient on the vote rows, bootstrap by resampling rows
and refitting. prefkit: Newton's method on the rows (exact Hessian, vectorized), bootstrap by
multinomial row weights with warm starts. They agree when point ratings are within 0.5 Elo.
The peer runs ``--peer-rounds`` rounds (default 10) and its time is scaled to 100.

    python bench/arena_style.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

ALPHA = 0.5


def votes(n_items: int, n_votes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n_items)
    a = rng.integers(0, n_items, n_votes)
    b = (a + rng.integers(1, n_items, n_votes)) % n_items
    counts_a = rng.poisson([300, 2, 3, 4], size=(n_votes, 4))
    counts_b = rng.poisson([300, 2, 3, 4], size=(n_votes, 4))
    raw = (counts_a - counts_b) / (counts_a + counts_b + 1)
    x = (raw - raw.mean(0)) / raw.std(0)
    z = s[a] - s[b] + x @ np.array([0.5, 0.1, 0.2, 0.05])
    tie = rng.random(n_votes) < 0.05
    y = np.where(tie, 0.5, (rng.random(n_votes) < expit(z)).astype(float))
    return a, b, y, counts_a, counts_b


def peer_fit(n_items, a, b, y, x, x0=None):
    """FastChat-style: L-BFGS-B on the rows with the analytic gradient."""
    d = x.shape[1]

    def loss_grad(params):
        theta, gamma = params[:n_items], params[n_items:]
        z = theta[a] - theta[b] + x @ gamma
        p = expit(z)
        loss = -np.sum(y * np.log(p + 1e-300) + (1 - y) * np.log(1 - p + 1e-300))
        loss += 0.5 * ALPHA * params @ params
        r = p - y
        g_theta = np.bincount(a, r, n_items) - np.bincount(b, r, n_items)
        grad = np.concatenate([g_theta, x.T @ r]) + ALPHA * params
        return loss, grad

    start = np.zeros(n_items + d) if x0 is None else x0
    res = minimize(loss_grad, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000, "gtol": 1e-8, "ftol": 1e-14})
    return res.x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k votes")
    parser.add_argument("--peer-rounds", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from prefkit.rank import bootstrap_bt_style, fit_bt_style, style_covariates, to_elo

    n_items, rounds = 100, 100
    n_votes = 100_000 if args.quick else 1_000_000
    peer_rounds = args.peer_rounds or (3 if args.quick else 10)
    a, b, y, counts_a, counts_b = votes(n_items, n_votes)

    start = time.perf_counter()
    x, _, _ = style_covariates(counts_a, counts_b)
    fit = fit_bt_style(n_items, a, b, y, x, alpha=ALPHA)
    samples = bootstrap_bt_style(n_items, a, b, y, x, rounds=rounds, alpha=ALPHA, initial=fit)
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    raw = (counts_a - counts_b) / (counts_a + counts_b + 1)
    x_peer = (raw - raw.mean(0)) / raw.std(0)
    peer = peer_fit(n_items, a, b, y, x_peer)
    t_peer_fit = time.perf_counter() - start
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    peer_samples = []
    for _ in range(peer_rounds):
        idx = rng.integers(0, n_votes, n_votes)
        peer_samples.append(peer_fit(n_items, a[idx], b[idx], y[idx], x_peer[idx])[:n_items])
    t_peer_boot = (time.perf_counter() - start) * rounds / peer_rounds
    t_peer = t_peer_fit + t_peer_boot

    theta_peer = peer[:n_items] - peer[:n_items].mean()
    diff = float(np.max(np.abs(to_elo(fit.params) - to_elo(theta_peer))))
    scale = 400 / np.log(10)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    result = {
        "bench": "arena_style",
        "votes": n_votes, "models": n_items, "features": 4, "bootstrap_rounds": rounds,
        "prefkit": {"seconds": round(t_ours, 2), "fit_iterations": fit.n_iter,
                    "style_coef": [round(float(c), 4) for c in fit.style_coef],
                    "ci_width_median_elo": round(float(np.median(high - low)) * scale, 2)},
        "peer": {"seconds": round(t_peer, 1), "fit_seconds": round(t_peer_fit, 2),
                 "bootstrap_seconds_scaled": round(t_peer_boot, 1),
                 "bootstrap_rounds_run": peer_rounds,
                 "style_coef": [round(float(c), 4) for c in peer[n_items:]],
                 "what": "L-BFGS-B on vote rows (FastChat style control), bootstrap by "
                         "resampling rows"},
        "ratio": round(t_peer / t_ours, 1),
        "agree": diff <= 0.5,
        "max_abs_elo_diff": round(diff, 4),
        "goal": {"prefkit_seconds_max": 60},
        "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
