"""Leaderboards from pairwise votes: Bradley-Terry ratings on the Elo scale, bootstrap or
sandwich (robust, :mod:`~prefkit.rank.sandwich`) intervals, CI-aware ranks, and every problem of
the data reported, never hidden:

- a comparison graph in several pieces: the components are listed and models are rated within
  their own component (ratings of different components are not comparable);
- a model that never lost or never won (more generally: a component whose "beat or tied" graph
  is not strongly connected, Ford 1957): the MLE is infinite, so a Gaussian prior is used
  (``alpha``, default 0.01 when needed) and the problem is named;
- models with fewer than ``min_votes`` votes are flagged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .aggregate import PairCounts
from .bootstrap import bootstrap_bt, ci_ranks, percentile_intervals
from .bt import bt_probabilities, fit_bradley_terry, mle_exists, to_elo
from .graph import components as graph_components
from .sandwich import bt_sandwich_covariance, normal_intervals

FALLBACK_ALPHA = 0.01
CI_METHODS = ("bootstrap", "sandwich")


@dataclass
class Leaderboard:
    models: list[str]
    rating: np.ndarray
    ci_low: np.ndarray | None
    ci_high: np.ndarray | None
    rank: np.ndarray
    component: np.ndarray
    votes: np.ndarray
    wins: np.ndarray
    losses: np.ndarray
    ties: np.ndarray
    params: np.ndarray
    method: str
    tie_param: float | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def order(self) -> np.ndarray:
        """Model indices by rank, then rating (best first)."""
        return np.lexsort((-self.rating, self.component, self.rank))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for i in self.order():
            row = {"rank": int(self.rank[i]), "model": self.models[i],
                   "rating": round(float(self.rating[i]), 2)}
            if self.ci_low is not None:
                row["ci_low"] = round(float(self.ci_low[i]), 2)
                row["ci_high"] = round(float(self.ci_high[i]), 2)
            row.update(votes=_num(self.votes[i]), wins=_num(self.wins[i]),
                       losses=_num(self.losses[i]), ties=_num(self.ties[i]))
            if self.component.max() > 0:
                row["component"] = int(self.component[i])
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "settings": self.settings,
                "tie_param": self.tie_param, "leaderboard": self.rows(),
                "problems": self.problems}


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(float(x), 3)


def components(counts: PairCounts) -> np.ndarray:
    """Component label of every model in the comparison graph (models with no votes are
    components of their own)."""
    return graph_components(counts.n_items, counts.i, counts.j)


def _subset(counts: PairCounts, members: np.ndarray) -> PairCounts:
    index = -np.ones(counts.n_items, dtype=np.int64)
    index[members] = np.arange(len(members))
    keep = (index[counts.i] >= 0) & (index[counts.j] >= 0)
    return PairCounts(len(members), index[counts.i[keep]], index[counts.j[keep]],
                      counts.wins_i[keep], counts.wins_j[keep], counts.ties[keep])


def bt_leaderboard(
    counts: PairCounts,
    models: list[str],
    *,
    ties: str = "half",
    alpha: float = 0.0,
    bootstrap: int = 100,
    seed: int = 0,
    anchor: tuple[str, float] | None = None,
    min_votes: int = 20,
    scale: float = 400.0,
    init: float = 1000.0,
    ci: str = "bootstrap",
) -> Leaderboard:
    """Bradley-Terry leaderboard with 95% intervals and problem reports (see module).
    ``ci="bootstrap"``: percentiles of ``bootstrap`` resamples (0: no intervals);
    ``ci="sandwich"``: rating -+ 1.96 robust standard errors (half ties only). With an
    ``anchor`` the intervals are those of the difference to the anchor model."""
    n = counts.n_items
    if len(models) != n:
        raise ValueError(f"{len(models)} model names for {n} models")
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {', '.join(CI_METHODS)}, got {ci!r}")
    if ci == "sandwich" and ties != "half":
        raise ValueError("sandwich intervals are implemented for half ties (ties='half'), the "
                         "model arena-rank and FastChat fit")
    intervals = ci == "sandwich" or bootstrap > 0
    if anchor is not None and anchor[0] not in models:
        raise ValueError(f"anchor model {anchor[0]!r} has no votes; the models are: "
                         f"{', '.join(sorted(models))}")
    labels = components(counts)
    votes = counts.votes_per_item()
    wins, losses = counts.wins_per_item(), counts.losses_per_item()
    n_ties = votes - wins - losses
    problems: list[dict[str, Any]] = []
    rating = np.full(n, init)
    params = np.zeros(n)
    low = high = None
    if intervals:
        low, high = np.full(n, init), np.full(n, init)
    tie_param = None
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    groups.sort(key=lambda g: -votes[g].sum())
    labels_sorted = np.zeros(n, dtype=np.int64)
    if len(groups) > 1:
        problems.append({
            "problem": "disconnected",
            "message": f"the comparison graph has {len(groups)} components; models are rated "
                       "within their own component only (ratings across components are not "
                       "comparable)",
            "components": [[models[i] for i in g] for g in groups],
        })
    for c, members in enumerate(groups):
        labels_sorted[members] = c
        if len(members) < 2:
            continue
        sub = _subset(counts, members)
        sub_alpha = alpha
        if alpha == 0 and not mle_exists(counts, members):
            sub_alpha = FALLBACK_ALPHA
            sub_wins, sub_losses = wins[members], losses[members]
            sub_ties = n_ties[members]
            never_lost = [models[i] for i, lo, t in zip(members, sub_losses, sub_ties,
                                                        strict=True) if lo + t == 0]
            never_won = [models[i] for i, w, t in zip(members, sub_wins, sub_ties,
                                                      strict=True) if w + t == 0]
            problems.append({
                "problem": "infinite_mle",
                "message": "the maximum-likelihood ratings are infinite (a model never lost or "
                           "never won, or a group of models never lost to the rest); a "
                           f"Gaussian prior alpha={sub_alpha} keeps them finite",
                "never_lost": never_lost, "never_won": never_won,
                "component": c,
            })
        with warnings.catch_warnings():  # reported above as a problem
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = fit_bradley_terry(sub, ties=ties, alpha=sub_alpha)
        params[members] = fit.params
        tie_param = fit.tie_param if c == 0 else tie_param
        anchor_at = None
        if anchor is not None and anchor[0] in models and models.index(anchor[0]) in members:
            anchor_at = (int(np.flatnonzero(members == models.index(anchor[0]))[0]), anchor[1])
        rating[members] = to_elo(fit.params, scale=scale, init=init, anchor=anchor_at)
        if ci == "sandwich":
            lo, hi = normal_intervals(fit.params,
                                      bt_sandwich_covariance(sub, fit.params, alpha=sub_alpha),
                                      anchor=None if anchor_at is None else anchor_at[0])
            low[members] = rating[members] + scale / np.log(10.0) * (lo - fit.params)
            high[members] = rating[members] + scale / np.log(10.0) * (hi - fit.params)
        elif bootstrap:
            boot = bootstrap_bt(sub, bootstrap, ties=ties, alpha=sub_alpha, seed=seed,
                                initial_params=fit.params)
            elo_samples = np.array([to_elo(s, scale=scale, init=init, anchor=anchor_at)
                                    for s in boot.samples])
            low[members], high[members] = percentile_intervals(elo_samples)
            if boot.diverged:
                problems.append({"problem": "bootstrap_diverged", "component": c,
                                 "rounds": boot.diverged,
                                 "message": f"{boot.diverged} of {bootstrap} bootstrap resamples "
                                            "had no finite MLE (a model unbeaten or winless in "
                                            "the resample); they were fitted with a small "
                                            "prior"})
    rank = np.ones(n, dtype=np.int64)
    for members in groups:
        if intervals:
            rank[members] = ci_ranks(low[members], high[members])
        else:
            order = np.argsort(-rating[members])
            rank[members[order]] = np.arange(1, len(members) + 1)
    few = [models[i] for i in np.flatnonzero(votes < min_votes)]
    if few:
        problems.append({"problem": "few_votes", "models": few,
                         "message": f"{len(few)} models have fewer than {min_votes} votes: "
                                    "their ratings are uncertain"})
    return Leaderboard(models, rating, low, high, rank, labels_sorted, votes, wins, losses,
                       n_ties, params, "bt", tie_param, problems,
                       {"ties": ties, "alpha": alpha, "ci": ci if intervals else None,
                        "bootstrap": bootstrap if ci == "bootstrap" else 0, "seed": seed,
                        "anchor": list(anchor) if anchor else None, "min_votes": min_votes})


def win_rate_matrices(counts: PairCounts, params: np.ndarray,
                      tie_param: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Observed (ties as half; NaN where never compared) and predicted ``P(i beats j)``."""
    n = counts.n_items
    observed = np.full((n, n), np.nan)
    tot = counts.totals
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (counts.wins_i + 0.5 * counts.ties) / tot
    observed[counts.i, counts.j] = share
    observed[counts.j, counts.i] = 1 - share
    return observed, bt_probabilities(params, tie_param)
