"""Agreement check for the arena benches (not timed): arena-rank's bootstrap resamples, drawn
with the same JAX calls and seed as its ``compute_ratings_and_cis(ci_method="bootstrap")``,
each fitted by prefkit; prints the resulting percentile bounds (Elo scale, by model) as one
JSON line, plus arena-rank's converged point estimate. Two bootstraps that agree on the same
resamples compute the same thing; their end-to-end intervals then differ only by resampling
noise (different random streams).

    python bench/_arena_same_draws.py FILE [--rounds 100] [--style] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from _arena_rank_child import CONVERGED, build, read_battles

ELO = 400 / np.log(10)


def plain_samples(dataset, rounds: int, seed: int) -> np.ndarray:
    import jax

    from prefkit.rank import aggregate_pairwise, fit_bradley_terry

    counts = np.asarray(dataset.counts)
    total = counts.sum()
    # arena-rank's draw (bradley_terry.py, ci_method="bootstrap")
    draws = np.asarray(jax.random.multinomial(jax.random.PRNGKey(seed), n=int(total),
                                              p=dataset.counts / total,
                                              shape=(rounds, counts.shape[0]),
                                              dtype=jax.numpy.float64))
    pairs, outcomes = np.asarray(dataset.pairs), np.asarray(dataset.outcomes)
    code = np.where(outcomes == 1.0, 0, np.where(outcomes == 0.0, 1, 2))
    n = len(dataset.competitors)
    full = aggregate_pairwise(pairs[:, 0], pairs[:, 1], code, n, weights=counts)
    start = fit_bradley_terry(full).params
    out = np.empty((rounds, n))
    for r in range(rounds):
        sample = aggregate_pairwise(pairs[:, 0], pairs[:, 1], code, n, weights=draws[r])
        out[r] = fit_bradley_terry(sample, initial_params=start).params
    return out


def style_samples(dataset, rounds: int, seed: int) -> np.ndarray:
    import jax

    from prefkit.rank import ARENA_RANK, fit_bt_style
    from prefkit.rank.style import inverse_pair_weights

    pairs = np.asarray(dataset.pairs)
    a, b = pairs[:, 0], pairs[:, 1]
    y, x = np.asarray(dataset.outcomes), np.asarray(dataset.features)
    assert np.allclose(inverse_pair_weights(a, b, 50), np.asarray(dataset.weights))
    n, n_obs = len(dataset.competitors), len(a)
    full = fit_bt_style(n, a, b, y, x, settings=ARENA_RANK)
    keys = jax.random.split(jax.random.PRNGKey(seed), rounds)  # arena-rank's draws
    out = np.empty((rounds, n))
    for r in range(rounds):
        rows = np.asarray(jax.random.randint(keys[r], shape=(n_obs,), minval=0, maxval=n_obs))
        weights = np.bincount(rows, minlength=n_obs).astype(float)
        out[r] = fit_bt_style(n, a, b, y, x, settings=ARENA_RANK, weights=weights,
                              initial=(full.params, full.style_coef), tol=1e-9).params
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--style", action="store_true")
    parser.add_argument("--seed", type=int, default=42)  # compute_ratings_and_cis's default
    args = parser.parse_args()
    frame = read_battles(args.path, args.style)
    dataset, make_model = build(frame, args.style)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = (style_samples if args.style else plain_samples)(dataset, args.rounds,
                                                                   args.seed)
    elo = 1000 + ELO * samples
    converged = make_model(**CONVERGED).compute_ratings_and_cis(dataset)
    print(json.dumps({
        "models": list(dataset.competitors),
        "lower": np.quantile(elo, 0.025, axis=0).tolist(),
        "upper": np.quantile(elo, 0.975, axis=0).tolist(),
        "converged_rating": np.asarray(converged["ratings"]).tolist(),
    }))


if __name__ == "__main__":
    main()
