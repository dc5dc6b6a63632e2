"""The style-controlled leaderboard of `prefkit arena rank --style-control` (see
:mod:`prefkit.rank.style` for the model and the two conventions)."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any

import numpy as np


def read_style_votes(votes: str, features: list[str] | None):
    """The votes as arrays with the chosen style features' counts (``style_names``,
    ``style_a``, ``style_b``): from a Parquet struct column only the chosen features' leaf
    columns, summed in Arrow; otherwise the row reader's counts."""
    from ..data.battles import load_battle_arrays
    from ..data.io import source_kind
    from ..data.parquet_style import parquet_style_counts, parquet_style_names
    from ..rank.style import resolve_features

    available = parquet_style_names(votes) if source_kind(votes) == "parquet" else None
    counts = None
    if available is not None:
        names = resolve_features(features, available)
        counts = parquet_style_counts(votes, names)
    if counts is not None:
        arrays = load_battle_arrays(votes)
        if len(counts[0]) != len(arrays.a):
            raise RuntimeError("style rows and vote rows differ in number")
        arrays.style_names, (arrays.style_a, arrays.style_b) = names, counts
        return arrays
    arrays = load_battle_arrays(votes, with_style=True)
    names = resolve_features(features, arrays.style_names)
    cols = [arrays.style_names.index(f) for f in names]
    arrays.style_names = names
    arrays.style_a, arrays.style_b = arrays.style_a[:, cols], arrays.style_b[:, cols]
    return arrays


def style_board(votes: str, arrays, plain_rating: np.ndarray, *, convention: str, ci: str,
                bootstrap: int, seed: int, anchor: tuple[int, float] | None,
                plain: tuple[Any, np.ndarray] | None = None) -> dict[str, Any]:
    """Ratings with the style covariates of ``arrays`` (:func:`read_style_votes`) regressed
    out, next to the uncontrolled ones; votes without every feature are left out (and
    counted). ``plain``: the uncontrolled fit's pair counts and parameters, reused when every
    vote is used (the counts for the existence check; the parameters as the starting point,
    which saves Newton steps)."""
    from ..rank import aggregate_pairwise, normal_intervals, to_elo
    from ..rank.bt import mle_exists
    from ..rank.leaderboard import FALLBACK_ALPHA
    from ..rank.style import (
        STYLE_CONVENTIONS,
        bootstrap_bt_style,
        fit_bt_style,
        style_covariates,
        with_rating_prior,
    )

    models, names = arrays.models, arrays.style_names
    side_a, side_b = arrays.style_a, arrays.style_b
    usable = ~(np.isnan(side_a).any(axis=1) | np.isnan(side_b).any(axis=1))
    if not usable.any():
        raise ValueError(f"{votes}: no vote has all of the style features {', '.join(names)}")
    settings = STYLE_CONVENTIONS[convention]
    if usable.all():  # no copies of a million rows when every vote has every feature
        a, b, o = arrays.a, arrays.b, arrays.outcome
    else:
        side_a, side_b = side_a[usable], side_b[usable]
        a, b, o = arrays.a[usable], arrays.b[usable], arrays.outcome[usable]
    x, _, _ = style_covariates(side_a, side_b, offset=settings.ratio_offset)
    # models without a usable vote get no style-controlled rating; the rest are renumbered
    present = np.flatnonzero(np.bincount(a, minlength=len(models))
                             + np.bincount(b, minlength=len(models)))  # no sort
    code = -np.ones(len(models), dtype=np.int64)
    code[present] = np.arange(len(present))
    a, b = code[a], code[b]
    y = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))
    problems: list[dict[str, Any]] = []
    if len(present) < len(models):
        problems.append({"problem": "no_style_votes",
                         "models": [m for i, m in enumerate(models) if code[i] < 0],
                         "message": "no vote of these models has every style feature: they "
                                    "get no style-controlled rating"})
    every_vote = len(a) == len(arrays.a) and len(present) == len(models)
    counts = plain[0] if plain is not None and every_vote else None
    if settings.rating_penalty == 0 and not mle_exists(
            counts if counts is not None else aggregate_pairwise(a, b, o, len(present))):
        settings = with_rating_prior(settings, FALLBACK_ALPHA, len(a))
        problems.append({"problem": "infinite_mle",
                         "message": "without a penalty the style-controlled ratings are "
                                    "infinite or undetermined (a model never lost or never won, "
                                    "or the comparison graph is in pieces); a Gaussian prior "
                                    f"alpha={FALLBACK_ALPHA} keeps them finite"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        start = None if plain is None else (plain[1][present] - plain[1][present].mean(),
                                            np.zeros(x.shape[1]))
        fit = fit_bt_style(len(present), a, b, y, x, settings=settings, initial=start,
                           sandwich=ci == "sandwich")
    problems += [{"problem": "not_converged", "message": str(w.message)} for w in caught]
    anchor_at = None
    if anchor is not None:
        if code[anchor[0]] < 0:
            raise ValueError(f"--anchor {models[anchor[0]]}: the model has no vote with every "
                             "style feature")
        anchor_at = (int(code[anchor[0]]), anchor[1])
    rating = to_elo(fit.params, anchor=anchor_at)
    low = high = None
    if ci == "sandwich":
        lo, hi = normal_intervals(fit.params, fit.covariance,
                                  anchor=None if anchor_at is None else anchor_at[0])
        low = rating + 400 / np.log(10) * (lo - fit.params)
        high = rating + 400 / np.log(10) * (hi - fit.params)
    elif bootstrap:
        samples = bootstrap_bt_style(len(present), a, b, y, x, rounds=bootstrap,
                                     settings=settings, seed=seed, initial=fit)
        elo = np.array([to_elo(s, anchor=anchor_at) for s in samples])
        low, high = np.percentile(elo, [2.5, 97.5], axis=0)
    rows = []
    for k in np.argsort(-rating):
        i = int(present[k])
        row = {"model": models[i], "rating": round(float(rating[k]), 2),
               "rating_without_control": round(float(plain_rating[i]), 2)}
        if low is not None:
            row.update(ci_low=round(float(low[k]), 2), ci_high=round(float(high[k]), 2))
        rows.append(row)
    return {"convention": convention, "settings": asdict(settings), "features": names,
            "votes_used": int(usable.sum()), "ci": ci if low is not None else None,
            "coefficients": {n: round(float(c), 4) for n, c in zip(names, fit.style_coef,
                                                                    strict=True)},
            "leaderboard": rows, "problems": problems}
