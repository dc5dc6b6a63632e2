"""`prefkit arena ...`: leaderboards from votes, the next match to ask for, simulations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from .common import JsonOpt, bad_input, cli_errors, print_json, stdout

app = typer.Typer(help="Arena leaderboards from pairwise or K-wise votes.", no_args_is_help=True)

METHODS = ("bt", "elo", "pl", "bayes")


def _check_exists(path: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file or folder")


def _parse_anchor(anchor: str | None) -> tuple[str, float] | None:
    if anchor is None:
        return None
    name, sep, value = anchor.rpartition("=")
    try:
        return name, float(value)
    except ValueError:
        raise ValueError(f"--anchor must be MODEL=RATING, got {anchor!r}") from None


@app.command()
@cli_errors
def rank(
    votes: Annotated[str, typer.Argument(
        help="Battle records: Chatbot-Arena JSON/JSONL, prefkit battles, Parquet, ...")],
    method: Annotated[str, typer.Option(help="bt | elo | pl | bayes")] = "bt",
    ties: Annotated[str, typer.Option(help="BT ties: half (FastChat) or davidson")] = "half",
    bootstrap: Annotated[int, typer.Option(
        help="Bootstrap rounds for 95% intervals (elo: random orderings).")] = 100,
    style_control: Annotated[bool, typer.Option(
        "--style-control", help="BT with style covariates (length, markdown counts, ...)")
    ] = False,
    alpha: Annotated[float, typer.Option(help="L2 prior strength (0 = plain MLE).")] = 0.0,
    anchor: Annotated[str | None, typer.Option(
        help="MODEL=RATING: shift ratings so MODEL has RATING (default: mean 1000).")] = None,
    min_votes: Annotated[int, typer.Option(help="Flag models with fewer votes.")] = 20,
    k_factor: Annotated[float, typer.Option("--k", help="Online Elo K factor.")] = 4.0,
    skill_tau: Annotated[float | None, typer.Option(
        help="bayes: TrueSkill dynamics, the skill drift added before every update (default "
             "25/300, TrueSkill's and K-Sort's); 0 for a fixed pool of models.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (bootstrap, orderings).")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Write the leaderboard figure (PNG).")
                    ] = None,
    winrate_plot: Annotated[Path | None, typer.Option(
        help="Write observed vs predicted win-rate matrices (PNG).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rate models from votes; intervals, CI-aware ranks and every data problem reported."""
    _check_exists(votes)
    if method not in METHODS:
        raise bad_input(f"--method must be one of {', '.join(METHODS)}, got {method!r}", as_json)
    if ties not in ("half", "davidson"):
        raise bad_input(f"--ties must be half or davidson, got {ties!r}", as_json)
    anchor_pair = _parse_anchor(anchor)
    if method == "bt":
        result = _rank_bt(votes, ties, bootstrap, style_control, alpha, anchor_pair, min_votes,
                          seed, plot, winrate_plot)
    elif method == "elo":
        result = _rank_elo(votes, k_factor, bootstrap, seed, anchor_pair, plot)
    else:
        result = _rank_kwise(votes, method, alpha, bootstrap, seed, anchor_pair, plot,
                             skill_tau)
    if as_json:
        print_json(result)
        return
    _print_board(result)


def _rank_bt(votes, ties, bootstrap, style_control, alpha, anchor, min_votes, seed, plot,
             winrate_plot) -> dict[str, Any]:
    from ..data.battles import aggregate_battle_file
    from ..rank import bt_leaderboard, win_rate_matrices

    counts, models, extra = aggregate_battle_file(votes)
    if counts.n_items < 2:
        raise ValueError(f"{votes}: votes between at least 2 models are needed")
    board = bt_leaderboard(counts, models, ties=ties, alpha=alpha, bootstrap=bootstrap,
                           seed=seed, anchor=anchor, min_votes=min_votes)
    result = {"votes": int(round(counts.n_votes)), "models": len(models), **extra,
              **board.to_dict()}
    observed, predicted = win_rate_matrices(counts, board.params, board.tie_param)
    result["win_rates"] = {"models": models, "observed": _matrix(observed),
                           "predicted": _matrix(predicted)}
    if style_control:
        result["style_control"] = _style(votes, models, board, bootstrap, alpha, seed, anchor)
    if plot:
        from ..report.figures import plot_leaderboard

        result["plot"] = plot_leaderboard(models, board.rating, board.ci_low, board.ci_high,
                                          plot, title=f"Bradley-Terry ({ties} ties)")
    if winrate_plot:
        from ..report.figures import plot_win_rates

        order = list(board.order())
        result["winrate_plot"] = plot_win_rates(
            [models[i] for i in order], observed[np.ix_(order, order)],
            predicted[np.ix_(order, order)], winrate_plot)
    return result


def _matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in m]


def _style(votes, models, board, bootstrap, alpha, seed, anchor) -> dict[str, Any]:
    from ..data.battles import load_battle_arrays
    from ..rank import bootstrap_bt_style, fit_bt_style, style_covariates, to_elo

    arrays = load_battle_arrays(votes, with_style=True)
    if arrays.models != models:  # same file, same order of first appearance
        raise RuntimeError("model order differs between passes")
    usable = ~(np.isnan(arrays.style_a).any(axis=1) | np.isnan(arrays.style_b).any(axis=1))
    x, _, _ = style_covariates(arrays.style_a[usable], arrays.style_b[usable])
    a, b, o = arrays.a[usable], arrays.b[usable], arrays.outcome[usable]
    y = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))
    style_alpha = alpha if alpha > 0 else 0.5
    fit = fit_bt_style(len(models), a, b, y, x, alpha=style_alpha)
    anchor_at = ((models.index(anchor[0]), anchor[1])
                 if anchor and anchor[0] in models else None)
    rating = to_elo(fit.params, anchor=anchor_at)
    out: dict[str, Any] = {
        "features": arrays.style_names, "votes_used": int(usable.sum()),
        "alpha": style_alpha,
        "coefficients": {n: round(float(c), 4) for n, c in zip(arrays.style_names,
                                                                fit.style_coef, strict=True)},
    }
    low = high = None
    if bootstrap:
        samples = bootstrap_bt_style(len(models), a, b, y, x, rounds=bootstrap,
                                     alpha=style_alpha, seed=seed, initial=fit)
        elo = np.array([to_elo(s, anchor=anchor_at) for s in samples])
        low, high = np.percentile(elo, [2.5, 97.5], axis=0)
    rows = []
    for i in np.argsort(-rating):
        row = {"model": models[i], "rating": round(float(rating[i]), 2),
               "rating_without_control": round(float(board.rating[i]), 2)}
        if low is not None:
            row.update(ci_low=round(float(low[i]), 2), ci_high=round(float(high[i]), 2))
        rows.append(row)
    out["leaderboard"] = rows
    return out


def _rank_elo(votes, k_factor, permutations, seed, anchor, plot) -> dict[str, Any]:
    from ..data.battles import load_battle_arrays
    from ..rank.elo import elo_order_sensitivity, online_elo

    arrays = load_battle_arrays(votes)
    n = len(arrays.models)
    score = np.where(arrays.outcome == 0, 1.0, np.where(arrays.outcome == 1, 0.0, 0.5))
    ratings = online_elo(n, arrays.a, arrays.b, score, k=k_factor)
    if anchor and anchor[0] in arrays.models:
        ratings = ratings + anchor[1] - ratings[arrays.models.index(anchor[0])]
    rows = [{"rank": r + 1, "model": arrays.models[i], "rating": round(float(ratings[i]), 2)}
            for r, i in enumerate(np.argsort(-ratings))]
    result: dict[str, Any] = {"method": "elo", "votes": len(arrays.a), "models": n,
                              "settings": {"k": k_factor, "order": "file order"},
                              "leaderboard": rows, "problems": []}
    if permutations:
        sens = elo_order_sensitivity(n, arrays.a, arrays.b, score, k=k_factor,
                                     n_permutations=permutations, seed=seed)
        result["order_sensitivity"] = {
            "permutations": permutations,
            "std": {arrays.models[i]: round(float(v), 2) for i, v in enumerate(sens["std"])},
            "spread": {arrays.models[i]: round(float(v), 2)
                       for i, v in enumerate(sens["spread"])},
            "max_spread": round(float(np.max(sens["spread"])), 2),
        }
    if plot:
        from ..report.figures import plot_leaderboard

        result["plot"] = plot_leaderboard(arrays.models, ratings, None, None, plot,
                                          title=f"Online Elo (K={k_factor})")
    return result


def _rank_kwise(votes, method, alpha, bootstrap, seed, anchor, plot,
                skill_tau=None) -> dict[str, Any]:
    from ..data.battles import load_kwise_votes

    data = load_kwise_votes(votes)
    n = len(data.models)
    if n < 2:
        raise ValueError(f"{votes}: votes between at least 2 models are needed")
    if method == "pl":
        result = _rank_pl(data, alpha, bootstrap, seed, anchor)
    else:
        result = _rank_bayes(data, skill_tau)
    result.update(votes=len(data.rankings), models=n)
    if plot:
        from ..report.figures import plot_leaderboard

        rating = np.array([0.0] * n)
        low = high = None
        for row in result["leaderboard"]:
            i = data.models.index(row["model"])
            rating[i] = row["rating"]
        if "ci_low" in result["leaderboard"][0]:
            low, high = np.zeros(n), np.zeros(n)
            for row in result["leaderboard"]:
                i = data.models.index(row["model"])
                low[i], high[i] = row["ci_low"], row["ci_high"]
        title = "Plackett-Luce" if method == "pl" else "Bayesian skill (mu - 3 sigma)"
        result["plot"] = plot_leaderboard(data.models, rating, low, high, plot, title=title)
    return result


def _rank_pl(data, alpha, bootstrap, seed, anchor) -> dict[str, Any]:
    from ..rank import ci_ranks, to_elo
    from ..rank.plackett_luce import fit_plackett_luce

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
    anchor_at = (data.models.index(anchor[0]), anchor[1]) if anchor and anchor[0] in \
        data.models else None
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


def _rank_bayes(data, skill_tau: float | None) -> dict[str, Any]:
    from ..rank.skill import TAU, conservative_score, initial_state, rate_many

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


def _print_board(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{result['method']} leaderboard - {result['votes']} votes, "
                        f"{result['models']} models")
    rows = result["leaderboard"]
    columns = [c for c in ("rank", "model", "rating", "ci_low", "ci_high", "votes", "wins",
                           "losses", "ties", "mu", "sigma", "component") if c in rows[0]]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in columns])
    stdout.print(table)
    for problem in result.get("problems", []):
        stdout.print(f"[yellow]problem[/yellow] {problem['problem']}: {problem['message']}")
    if "style_control" in result:
        sc = result["style_control"]
        stdout.print(f"style control ({', '.join(sc['features'])}): coefficients "
                     f"{sc['coefficients']}")
        for row in sc["leaderboard"]:
            stdout.print(f"  {row['model']:<30} {row['rating']:>8} (without control "
                         f"{row['rating_without_control']})")
    if "order_sensitivity" in result:
        stdout.print(f"order sensitivity over {result['order_sensitivity']['permutations']} "
                     f"orderings: max spread {result['order_sensitivity']['max_spread']} points")


STRATEGIES = ("random", "ucb", "infogain")


@app.command("next-match")
@cli_errors
def next_match(
    votes: Annotated[str, typer.Argument(help="Votes so far (battle records).")],
    strategy: Annotated[str, typer.Option(help="random | ucb | infogain")] = "infogain",
    k: Annotated[int, typer.Option("--k", help="Models per match (2 = a pair).")] = 2,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated model names to include (also ones with no votes yet).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Which models to compare next, given the votes so far: uniform random; K-Sort style UCB
    (least-compared pivot + close, rarely paired opponents); or the largest expected
    information gain on the ranking under the BT posterior (Laplace approximation)."""
    from ..data.battles import aggregate_battle_file
    from ..rank import PairCounts, fit_bradley_terry
    from ..rank.matchmaking import information_gain_match, random_match, ucb_match

    _check_exists(votes)
    if strategy not in STRATEGIES:
        raise bad_input(f"--strategy must be one of {', '.join(STRATEGIES)}", as_json)
    counts, names, _ = aggregate_battle_file(votes)
    if models:
        for name in models.split(","):
            if name.strip() and name.strip() not in names:
                names.append(name.strip())
        counts = PairCounts(len(names), counts.i, counts.j, counts.wins_i, counts.wins_j,
                            counts.ties)
    n = len(names)
    if not 2 <= k <= n:
        raise bad_input(f"--k must be between 2 and the number of models ({n})", as_json)
    rng = np.random.default_rng(seed)
    fit = fit_bradley_terry(counts, alpha=1.0)  # a unit prior: finite estimates from few votes
    cov = fit.covariance()
    sigma = np.sqrt(np.clip(np.diag(cov), 0, None))
    if strategy == "random":
        chosen = random_match(n, k, rng)
    elif strategy == "ucb":
        pair = np.zeros((n, n))
        pair[counts.i, counts.j] = counts.totals
        pair = pair + pair.T
        chosen = ucb_match(fit.params, sigma, pair, k, rng, t=int(counts.n_votes) + 1)
    else:
        chosen = information_gain_match(fit.params, cov, k, rng)
    result = {"strategy": strategy, "k": k, "match": [names[i] for i in chosen],
              "estimates": {names[i]: {"strength": round(float(fit.params[i]), 4),
                                       "sd": round(float(sigma[i]), 4)} for i in chosen},
              "votes": int(round(counts.n_votes))}
    if as_json:
        print_json(result)
        return
    stdout.print(f"next match ({strategy}): " + " vs ".join(result["match"]))


def _csv(text: str, cast) -> list:
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list, got {text!r}") from None


@app.command()
@cli_errors
def simulate(
    models: Annotated[str, typer.Option(help="Numbers of models, e.g. 20,50")] = "20",
    k: Annotated[str, typer.Option("--k", help="Models per vote, e.g. 2,4")] = "2,4",
    noise: Annotated[str, typer.Option(help="Label noise levels, e.g. 0,0.1,0.2")] = "0,0.1",
    combos: Annotated[str, typer.Option(
        help="method:strategy pairs (methods elo, bt, trueskill, trueskill_static, pl; "
             "strategies random, ucb, infogain)")
    ] = "elo:random,bt:random,trueskill:ucb,pl:infogain",
    seeds: Annotated[str, typer.Option(help="Seeds (the median over them is reported)")
                     ] = "0,1,2",
    max_votes: Annotated[int | None, typer.Option(help="Give up after this many votes.")
                         ] = None,
    target_tau: Annotated[float, typer.Option(help="Kendall tau that counts as converged.")
                          ] = 0.9,
    hold: Annotated[float | None, typer.Option(
        help="Stricter rule: the ranking must stay at the target until the votes grow by this "
             "factor (e.g. 2); default: three checks in a row.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for table.json and convergence.png")
                   ] = Path("arena-simulation"),
    as_json: JsonOpt = False,
) -> None:
    """Votes to convergence (Kendall tau >= target vs hidden true strengths) for rating
    methods x matchmaking strategies x K x label noise; writes a table and a PNG plot."""
    from ..rank.simulate import METHODS as SIMULATED_RATERS
    from ..rank.simulate import convergence_table, plot_convergence

    pairs = []
    for combo in _csv(combos, str):
        method, sep, strategy = combo.partition(":")
        if not sep or method not in SIMULATED_RATERS or strategy not in STRATEGIES:
            raise bad_input(f"bad combo {combo!r}: expected METHOD:STRATEGY", as_json)
        pairs.append((method, strategy))
    table = convergence_table(
        n_items_list=_csv(models, int), ks=_csv(k, int), noises=_csv(noise, float),
        combos=pairs, seeds=_csv(seeds, int), max_votes=max_votes, target_tau=target_tau,
        hold=hold)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(__import__("json").dumps(table, indent=1, default=float))
    png = plot_convergence(table, out / "convergence.png")
    result = {"table": table, "plot": str(png), "table_path": str(out / "table.json")}
    if as_json:
        print_json(result)
        return
    from rich.table import Table

    columns = ["models", "K", "noise", "method", "strategy", "votes to target"]
    if hold is not None:
        columns[-1] = f"votes to target, held x{hold:g}"
        columns.append("three checks in a row")
    view = Table(*columns)
    for row in table:
        cells = [str(row.get("n_items")), str(row.get("k")), str(row.get("noise")),
                 row.get("method", ""), row.get("strategy", ""), str(row.get("votes"))]
        if hold is not None:
            cells.append(str(row.get("votes_three_checks")))
        view.add_row(*cells)
    stdout.print(view)
    stdout.print(f"plot: {png}")
