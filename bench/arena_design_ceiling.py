"""How much can matchmaking save at best? The ideal-design ceiling behind arena_convergence.

``bench/arena_convergence.py`` counts votes until a loop's ranking reaches Kendall tau 0.9.
This script asks what the best possible choice of comparisons could save over the
K-Sort-style UCB matchmaker (TrueSkill + UCB, arXiv 2408.14468) and over prefkit's
(Plackett-Luce + information gain), with everything known that no arena knows: the hidden
strengths.

For each truth (the same ``s ~ N(0, 1)`` as ``arena_convergence``, 20 items, noise 0) and each
``k``: run both loops to convergence and record which ``k``-subsets they asked for; then, in
the Laplace (Fisher information) approximation of the rater the convergence runs use
(Plackett-Luce with the Gaussian prior ``alpha = 0.1``), a design -- a share ``x_T`` of the
votes for every ``k``-subset ``T`` -- with ``V`` votes has posterior covariance
``Sigma = (alpha I + V sum_T x_T J_T)^-1``, ``J_T`` the exact expected Plackett-Luce
information of a ranking of ``T`` at the true strengths, and an expected number of wrongly
ordered pairs::

    D(V, x) = sum_{i<j} Phi(-|s_i - s_j| / sqrt(Sigma_ii + Sigma_jj - 2 Sigma_ij))

Tau 0.9 without ties is ``D <= 0.05 C(n, 2)``. For each design, ``votes`` is the smallest
``V`` with ``D(V, x) <= 0.05 C(n, 2)``: for the designs the two loops realized (their subset
frequencies up to convergence), for uniformly random subsets, and for the optimal design
(``x`` minimizing ``D`` by gradient descent on a softmax, the smallest ``V`` by bisection).
``ceiling = votes(UCB's design) / votes(optimal design)``: the most any matchmaker could save
over K-Sort's design, in this approximation, knowing the truth. ``agree``: the recording
wrappers reproduced the loops' own vote counts (the recorded designs are the loops').

Only 20 items: the dense formulation holds every ``k``-subset (C(50, 4) = 230,300 would
not fit). Prints one JSON object.

    python bench/arena_design_ceiling.py [--seeds 1000:1008] [--ks 2,4] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

N_ITEMS = 20
ALPHA = 0.1  # the Gaussian prior precision of the convergence runs' BT / PL raters
TAU_TARGET = 0.9


def pl_expected_information(s: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """``[m, n, n]``: the expected Fisher information of a Plackett-Luce ranking of each subset
    ``[m, k]`` at log-strengths ``s`` -- the sum over the ``k!`` orders of their probability
    times the information of that order's choice stages (``diag(w) - w w^T`` on the items
    left, ``w`` their choice probabilities)."""
    m, k = subsets.shape
    n = len(s)
    rows = np.arange(m)[:, None]
    expected = np.zeros((m, n, n))
    for perm in itertools.permutations(range(k)):
        order = subsets[:, perm]
        theta = s[order]
        log_p = np.zeros(m)
        info = np.zeros((m, n, n))
        for r in range(k - 1):
            left = theta[:, r:]
            log_p += theta[:, r] - np.log(np.exp(left).sum(axis=1))
            w = softmax(left, axis=1)
            idx = order[:, r:]
            info[rows, idx, idx] += w
            info[rows[:, :, None], idx[:, :, None], idx[:, None, :]] -= (
                w[:, :, None] * w[:, None, :])
        expected += np.exp(log_p)[:, None, None] * info
    return expected


class _Design:
    """Expected discordance of designs over all ``k``-subsets for one truth (torch)."""

    def __init__(self, s: np.ndarray, k: int):
        import torch

        self.torch = torch
        n = len(s)
        self.subsets = np.array(list(itertools.combinations(range(n), k)))
        self.index = {tuple(t): i for i, t in enumerate(self.subsets.tolist())}
        self.info = torch.tensor(pl_expected_information(s, self.subsets))
        self.iu = np.triu_indices(n, 1)
        self.gap = torch.tensor(np.abs(s[:, None] - s[None, :])[self.iu])
        self.prior = ALPHA * torch.eye(n, dtype=torch.float64)
        self.target = (1.0 - TAU_TARGET) / 2.0 * len(self.gap)

    def discordance(self, votes_per_subset):
        torch = self.torch
        cov = torch.linalg.inv(self.prior + torch.einsum("m,mij->ij", votes_per_subset,
                                                         self.info))
        i, j = self.iu
        var = cov.diagonal()[i] + cov.diagonal()[j] - 2.0 * cov[i, j]
        return torch.special.ndtr(-self.gap / var.clamp_min(1e-12).sqrt()).sum()

    def votes(self, shares) -> float:
        """Smallest total ``V`` with ``D(V, shares) <= target`` (bisection in log V)."""
        shares = shares / shares.sum()
        lo, hi = 1.0, 1e7
        with self.torch.no_grad():
            for _ in range(45):
                mid = (lo * hi) ** 0.5
                lo, hi = (lo, mid) if self.discordance(mid * shares) <= self.target else (mid, hi)
        return hi

    def optimal_votes(self, start_shares, upper: float, steps: int = 300) -> float:
        """Smallest ``V`` for which gradient descent finds shares reaching the target,
        bisecting between ``upper / 4`` and ``upper`` (``upper`` must be feasible)."""
        torch = self.torch
        logits = torch.log(start_shares / start_shares.sum() + 1e-3).requires_grad_(True)
        lo, hi = upper / 4.0, upper
        for _ in range(12):
            mid = (lo * hi) ** 0.5
            opt = torch.optim.Adam([logits], lr=0.05)
            for _ in range(steps):
                opt.zero_grad()
                self.discordance(mid * torch.softmax(logits, 0)).backward()
                opt.step()
            with torch.no_grad():
                reached = self.discordance(mid * torch.softmax(logits, 0)) <= self.target
            lo, hi = (lo, mid) if reached else (mid, hi)
        return hi


def _recording(match, log: list):
    def strategy(state):
        items = match(state)
        log.append(tuple(sorted(int(i) for i in items)))
        return items
    return strategy


def _ucb(state):
    from prefkit.rank.matchmaking import LOGIT_PER_TS_POINT, ucb_match

    # the TrueSkill rater's posterior in logits: the same pivots and opponents as
    # strategy="ucb" on raw TrueSkill points
    return ucb_match(state.mu, np.sqrt(np.diag(state.cov)), state.pair_counts, state.k,
                     state.rng, t=state.t, scale=LOGIT_PER_TS_POINT)


def _infogain(state):
    from prefkit.rank.matchmaking import information_gain_match

    return information_gain_match(state.mu, state.cov, state.k, state.rng)


def one_truth(job: tuple[int, int]) -> dict:
    import torch

    from prefkit.rank.simulate import simulate_convergence, simulated_truth

    torch.set_num_threads(1)
    seed, k = job
    start = time.perf_counter()
    design = _Design(simulated_truth(N_ITEMS, seed), k)
    out = {"seed": seed, "k": k}
    shares = {}
    for name, method, match, builtin in (("ksort_ucb", "trueskill", _ucb, "ucb"),
                                         ("prefkit_infogain", "pl", _infogain, "infogain")):
        log: list = []
        run = simulate_convergence(N_ITEMS, k=k, method=method,
                                   strategy=_recording(match, log), seed=seed)
        own = simulate_convergence(N_ITEMS, k=k, method=method, strategy=builtin, seed=seed)
        used = log[: run["votes"] or len(log)]
        x = np.zeros(len(design.subsets))
        for t in used:
            x[design.index[t]] += 1.0
        shares[name] = torch.tensor(x)
        out[name] = {"votes_in_simulation": run["votes"], "same_as_builtin":
                     run["votes"] == own["votes"],
                     "votes_of_design": round(design.votes(shares[name]))}
    shares["uniform"] = torch.ones(len(design.subsets), dtype=torch.float64)
    out["uniform"] = {"votes_of_design": round(design.votes(shares["uniform"]))}
    best = min(shares, key=lambda name: out[name]["votes_of_design"])
    optimal = design.optimal_votes(shares[best] + 1.0, upper=out[best]["votes_of_design"])
    out["optimal"] = {"votes_of_design": round(optimal)}
    out["ceiling_vs_ucb"] = round(out["ksort_ucb"]["votes_of_design"] / optimal, 3)
    out["prefkit_vs_ucb_design"] = round(out["ksort_ucb"]["votes_of_design"]
                                         / out["prefkit_infogain"]["votes_of_design"], 3)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1000:1008", help="START:STOP (held-out seeds)")
    parser.add_argument("--ks", default="2,4")
    parser.add_argument("--json", action="store_true", help="one-line JSON")
    args = parser.parse_args()
    first, stop = (int(x) for x in args.seeds.split(":"))
    ks = [int(k) for k in args.ks.split(",")]
    jobs = [(seed, k) for k in ks for seed in range(first, stop)]
    start = time.perf_counter()
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        runs = list(pool.map(one_truth, jobs))
    summary = {}
    for k in ks:
        mine = [r for r in runs if r["k"] == k]
        ceiling = [r["ceiling_vs_ucb"] for r in mine]
        summary[f"k={k}"] = {
            "ceiling_vs_ucb_median": round(statistics.median(ceiling), 3),
            "ceiling_vs_ucb_max": max(ceiling),
            "prefkit_vs_ucb_design_median": round(statistics.median(
                r["prefkit_vs_ucb_design"] for r in mine), 3),
        }
    result = {
        "bench": "arena_design_ceiling",
        "setup": {"n_items": N_ITEMS, "ks": ks, "noise": 0.0, "seeds": [first, stop],
                  "target_tau": TAU_TARGET, "prior_alpha": ALPHA},
        "prefkit": {"what": "Plackett-Luce MAP + information gain (the design it realized)"},
        "peer": {"what": "K-Sort style TrueSkill + UCB (the design it realized)"},
        "summary": summary,
        "goal_context": {"issue_goal_ratio": 1.5,
                         "ceiling_below_goal": all(v["ceiling_vs_ucb_median"] < 1.5
                                                   for v in summary.values())},
        "agree": all(r[name]["same_as_builtin"] for r in runs
                     for name in ("ksort_ucb", "prefkit_infogain")),
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
