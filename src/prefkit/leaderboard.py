"""The leaderboard of a votes file: what ``prefkit arena rank VOTES --json`` prints for the
methods ``bt``, ``pl`` and ``bayes`` (figures and style control are added by the command). The
web app's live arena leaderboard calls :func:`rank_votes_file` on the exported votes, so the two
are the same computation, not two copies of it.

Bradley-Terry (:func:`bt_board`) fits aggregated pair counts
(:func:`prefkit.rank.bt_leaderboard`) and adds the observed and predicted win-rate matrices;
K-wise votes are ranked by Plackett-Luce (:func:`pl_board`) or Bayesian skill
(:func:`bayes_board`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["anchor_index", "bayes_board", "bt_board", "kwise_board", "pl_board",
           "rank_votes_file", "rounded_matrix"]


def rank_votes_file(votes: str, *, method: str = "bt", ties: str = "half", bootstrap: int = 100,
                    ci: str = "bootstrap", alpha: float = 0.0,
                    anchor: tuple[str, float] | None = None, min_votes: int = 20,
                    seed: int = 0) -> dict[str, Any]:
    """What ``prefkit arena rank VOTES --json`` prints, with the same defaults (methods bt, pl
    and bayes, no style control or figures): the web app's live leaderboard calls this, so it
    equals the command on the exported votes."""
    if method == "bt":
        from .data.battles import aggregate_battle_file

        counts, models, extra = aggregate_battle_file(votes)
        return bt_board(votes, counts, models, extra, ties=ties, bootstrap=bootstrap, ci=ci,
                        alpha=alpha, anchor=anchor, min_votes=min_votes, seed=seed)[0]
    return kwise_board(votes, method, alpha=alpha, bootstrap=bootstrap, seed=seed,
                       anchor=anchor)[0]


def bt_board(votes: str, counts: Any, models: list[str], extra: dict[str, Any], *,
             ties: str = "half", bootstrap: int = 100, ci: str = "bootstrap", alpha: float = 0.0,
             anchor: tuple[str, float] | None = None, min_votes: int = 20, seed: int = 0
             ) -> tuple[dict[str, Any], Any, np.ndarray, np.ndarray]:
    """The Bradley-Terry leaderboard of the pair ``counts`` (:class:`~prefkit.rank.PairCounts`
    of the file ``votes``, named in errors) among ``models``: ``(result, board, observed,
    predicted)`` -- the JSON object (votes, models, ``extra`` counts, the board, the win-rate
    matrices), the :class:`~prefkit.rank.leaderboard.Leaderboard` and the two win-rate
    matrices. An ``anchor`` naming no model is a ValueError listing the models."""
    from .rank import bt_leaderboard, win_rate_matrices

    if counts.n_items < 2:
        raise ValueError(f"{votes}: votes between at least 2 models are needed")
    anchor_index(anchor, models, votes)
    board = bt_leaderboard(counts, models, ties=ties, alpha=alpha, bootstrap=bootstrap,
                           seed=seed, anchor=anchor, min_votes=min_votes, ci=ci)
    result = {"votes": int(round(counts.n_votes)), "models": len(models), **extra,
              **board.to_dict()}
    observed, predicted = win_rate_matrices(counts, board.params, board.tie_param)
    result["win_rates"] = {"models": models, "observed": rounded_matrix(observed),
                           "predicted": rounded_matrix(predicted)}
    return result, board, observed, predicted


def kwise_board(votes: str, method: str = "pl", *, alpha: float = 0.0, bootstrap: int = 100,
                seed: int = 0, anchor: tuple[str, float] | None = None,
                skill_tau: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """The leaderboard of the K-wise votes in the file ``votes`` by ``method`` (``pl`` or
    ``bayes``) and the models in the file's order."""
    from .data.battles import load_kwise_votes

    data = load_kwise_votes(votes)
    n = len(data.models)
    if n < 2:
        raise ValueError(f"{votes}: votes between at least 2 models are needed")
    if method == "pl":
        result = pl_board(data, alpha, bootstrap, seed, anchor_index(anchor, data.models, votes))
    else:
        result = bayes_board(data, skill_tau)
    result.update(votes=len(data.rankings), models=n)
    return result, data.models


def pl_board(data: Any, alpha: float, bootstrap: int, seed: int,
             anchor_at: tuple[int, float] | None) -> dict[str, Any]:
    """The Plackett-Luce leaderboard of K-wise votes (``data``: :class:`~prefkit.data.battles.
    KwiseVotes`): the MLE (a small Gaussian prior when it is infinite, reported as a problem)
    and, with ``bootstrap`` rounds, percentile intervals from refits on resampled votes and
    CI-aware ranks."""
    from .rank import ci_ranks, to_elo
    from .rank.plackett_luce import fit_plackett_luce

    n = len(data.models)
    problems = []
    fit_alpha = alpha
    fit = fit_plackett_luce(n, data.rankings, alpha=alpha)
    if not fit.converged and alpha == 0:
        fit_alpha = 0.01
        problems.append({"problem": "infinite_mle", "message": "the Plackett-Luce MLE is "
                         "infinite (a model never lost or never won); a Gaussian prior "
                         f"alpha={fit_alpha} keeps it finite"})
        fit = fit_plackett_luce(n, data.rankings, alpha=fit_alpha)
    rating = to_elo(fit.params, anchor=anchor_at)
    low = high = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        m = len(data.rankings)
        samples = np.empty((bootstrap, n))
        for r in range(bootstrap):  # resampled votes as multinomial weights, warm-started
            weights = np.bincount(rng.integers(0, m, m), minlength=m).astype(float)
            boot = fit_plackett_luce(n, data.rankings, weights=weights,
                                     alpha=max(fit_alpha, 1e-6), initial_params=fit.params)
            samples[r] = to_elo(boot.params, anchor=anchor_at)
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
        rank = ci_ranks(low, high)
    else:
        rank = np.argsort(np.argsort(-rating)) + 1
    rows = []
    for i in np.lexsort((-rating, rank)):
        row = {"rank": int(rank[i]), "model": data.models[i], "rating": round(float(rating[i]),
                                                                               2)}
        if low is not None:
            row.update(ci_low=round(float(low[i]), 2), ci_high=round(float(high[i]), 2))
        rows.append(row)
    return {"method": "pl", "settings": {"alpha": fit_alpha, "bootstrap": bootstrap,
                                         "seed": seed}, "leaderboard": rows,
            "problems": problems}


def bayes_board(data: Any, skill_tau: float | None) -> dict[str, Any]:
    """The Bayesian-skill (TrueSkill) leaderboard of K-wise votes in file order, rated by
    ``mu - 3 sigma``; ``skill_tau``: the drift added before each update (None: TrueSkill's)."""
    from .rank.skill import TAU, conservative_score, initial_state, rate_many

    tau = TAU if skill_tau is None else float(skill_tau)
    if not tau >= 0:
        raise ValueError(f"--skill-tau must be >= 0, got {skill_tau}")
    n = len(data.models)
    matches = []
    for tiers in data.rankings:
        items = [i for tier in tiers for i in tier]
        ranks = [r for r, tier in enumerate(tiers) for _ in tier]
        matches.append((items, ranks))
    state = rate_many(initial_state(n), matches, tau=tau)
    score = conservative_score(state)
    rows = [{"rank": r + 1, "model": data.models[i], "rating": round(float(score[i]), 3),
             "mu": round(float(state.mu[i]), 3), "sigma": round(float(state.sigma[i]), 3)}
            for r, i in enumerate(np.argsort(-score))]
    return {"method": "bayes", "settings": {"score": "mu - 3 sigma", "order": "file order",
                                            "tau": tau},
            "leaderboard": rows, "problems": []}


def anchor_index(anchor: tuple[str, float] | None, models: list[str], votes: str
                 ) -> tuple[int, float] | None:
    """``(index, rating)`` of the anchor model; an unknown name is bad input, listing the
    models there are."""
    if anchor is None:
        return None
    if anchor[0] not in models:
        raise ValueError(f"--anchor {anchor[0]}: no such model in {votes}; the models are: "
                         f"{', '.join(sorted(models))}")
    return models.index(anchor[0]), anchor[1]


def rounded_matrix(m: np.ndarray) -> list[list[float | None]]:
    """A win-rate matrix for JSON: 4 decimals, None where undefined (NaN)."""
    return [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in m]
