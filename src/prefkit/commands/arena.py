"""`prefkit arena ...`: leaderboards from votes, the next match to ask for, simulations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..leaderboard import anchor_index, bt_board, kwise_board
from .common import JsonOpt, bad_input, cli_errors, print_json, stdout

app = typer.Typer(help="Arena leaderboards from pairwise or K-wise votes.", no_args_is_help=True)

METHODS = ("bt", "elo", "pl", "bayes")
CI_METHODS = ("bootstrap", "sandwich")
STYLE_CONVENTIONS = ("arena-rank", "fastchat")


def _check_exists(source: str) -> None:
    """A missing votes file or folder (``FOLDER::split`` allowed) is bad input naming it."""
    from ..data.io import check_source_exists

    check_source_exists(source)


def _parse_anchor(anchor: str | None) -> tuple[str, float] | None:
    if anchor is None:
        return None
    name, sep, value = anchor.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise ValueError(f"--anchor must be MODEL=RATING, got {anchor!r}") from None


def _png_path(text: str | None, default_name: str, option: str) -> Path | None:
    """Where a figure goes (:func:`prefkit.data.io.figure_path`: FILE.png, or a folder that
    gets ``default_name``), checked before any work is done."""
    from ..data.io import figure_path

    return None if text is None else figure_path(text, default_name, option)


def _plot_board(path: Path, models: list[str], rating: np.ndarray, low: np.ndarray | None,
                high: np.ndarray | None, title: str, ci: str = "bootstrap") -> str:
    """The leaderboard figure, its axis naming the interval (``ci``: bootstrap or sandwich)."""
    from ..report.figures import plot_leaderboard

    return _write_figure(plot_leaderboard, path, "--plot", models, rating, low, high,
                         title=title, interval=f"95% {ci} interval")


def _write_figure(plot_fn, path: Path, option: str, *args, **kwargs) -> str:
    """``plot_fn(*args, path, **kwargs)`` into ``path`` (folders created); an OS error is bad
    input naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return plot_fn(*args, path, **kwargs)
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write the figure ({exc.strerror or exc})"
                         ) from None


@app.command()
@cli_errors
def rank(
    votes: Annotated[str, typer.Argument(
        help="Battle records: Chatbot-Arena JSON/JSONL, prefkit battles, Parquet, ...")],
    method: Annotated[str, typer.Option(help="bt | elo | pl | bayes")] = "bt",
    ties: Annotated[str, typer.Option(help="BT ties: half (FastChat) or davidson")] = "half",
    bootstrap: Annotated[int, typer.Option(
        help="Bootstrap rounds for 95% intervals (elo: random orderings).")] = 100,
    ci: Annotated[str, typer.Option(
        help="bt: 95% intervals by bootstrap (--bootstrap rounds) or sandwich (robust "
             "standard errors, arena-rank's default; no resampling).")] = "bootstrap",
    style_control: Annotated[bool, typer.Option(
        "--style-control", help="bt: also ratings with style covariates regressed out "
                                "(response length, markdown headers, lists, bold).")
    ] = False,
    style_convention: Annotated[str, typer.Option(
        help="Style control as arena-rank (LMArena today: mean likelihood, penalty 1.0 on the "
             "style coefficients only, votes weighted by inverse pair frequency) or fastchat "
             "(compute_style_control: summed likelihood, 0.5 on log10-unit ratings and "
             "coefficients).")] = "arena-rank",
    style_features: Annotated[str | None, typer.Option(
        help="Comma-separated style features (conv_metadata names without the side marker, "
             "or length, headers, lists, bold); default: Chatbot Arena's four, those present."
    )] = None,
    alpha: Annotated[float, typer.Option(help="L2 prior strength (0 = plain MLE).")] = 0.0,
    anchor: Annotated[str | None, typer.Option(
        help="MODEL=RATING: shift ratings so MODEL has RATING (default: mean 1000).")] = None,
    min_votes: Annotated[int, typer.Option(help="Flag models with fewer votes.")] = 20,
    k_factor: Annotated[float, typer.Option("--k", help="Online Elo K factor.")] = 4.0,
    skill_tau: Annotated[float | None, typer.Option(
        help="bayes: TrueSkill dynamics, the skill drift added before every update (default "
             "25/300, TrueSkill's and K-Sort's); 0 for a fixed pool of models.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (bootstrap, orderings).")] = 0,
    plot: Annotated[str | None, typer.Option(
        help="Write the leaderboard figure: FILE.png, or a folder (gets leaderboard.png).")
    ] = None,
    winrate_plot: Annotated[str | None, typer.Option(
        help="bt: observed vs predicted win-rate matrices: FILE.png, or a folder (gets "
             "winrates.png).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rate models from votes; intervals, CI-aware ranks and every data problem reported."""
    _check_exists(votes)
    if method not in METHODS:
        raise bad_input(f"--method must be one of {', '.join(METHODS)}, got {method!r}", as_json)
    if ties not in ("half", "davidson"):
        raise bad_input(f"--ties must be half or davidson, got {ties!r}", as_json)
    if ci not in CI_METHODS:
        raise bad_input(f"--ci must be one of {', '.join(CI_METHODS)}, got {ci!r}", as_json)
    if style_convention not in STYLE_CONVENTIONS:
        raise bad_input(f"--style-convention must be one of {', '.join(STYLE_CONVENTIONS)}, "
                        f"got {style_convention!r}", as_json)
    if bootstrap < 0:
        raise bad_input(f"--bootstrap must be >= 0, got {bootstrap}", as_json)
    if not 0 <= alpha < float("inf"):
        raise bad_input(f"--alpha must be a finite number >= 0, got {alpha}", as_json)
    bt_only = [name for name, used in (("--style-control", style_control),
                                       ("--winrate-plot", winrate_plot is not None),
                                       ("--ci sandwich", ci == "sandwich"),
                                       ("--style-features", style_features is not None))
               if used]
    if method != "bt" and bt_only:
        raise bad_input(f"{', '.join(bt_only)}: only with --method bt", as_json)
    if method == "bayes" and anchor is not None:
        raise bad_input("--anchor: --method bayes reports mu - 3 sigma on TrueSkill's own "
                        "scale; it cannot be anchored", as_json)
    if ci == "sandwich" and ties != "half":
        raise bad_input("--ci sandwich is implemented for --ties half (the model arena-rank "
                        "and FastChat fit)", as_json)
    features = None if style_features is None else _csv(style_features, str)
    if features == []:
        raise bad_input("--style-features: no feature named", as_json)
    plot = _png_path(plot, "leaderboard.png", "--plot")
    winrate_plot = _png_path(winrate_plot, "winrates.png", "--winrate-plot")
    anchor_pair = _parse_anchor(anchor)
    if method == "bt":
        style = (dict(convention=style_convention, features=features) if style_control
                 else None)
        result = _rank_bt(votes, ties, bootstrap, ci, style, alpha, anchor_pair, min_votes,
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


def _rank_bt(votes, ties, bootstrap, ci, style, alpha, anchor, min_votes, seed, plot,
             winrate_plot) -> dict[str, Any]:
    from ..data.battles import aggregate_battle_file
    from ..rank import BOTH_BAD, aggregate_pairwise

    if style is None:
        counts, models, extra = aggregate_battle_file(votes)
    else:  # one pass over the votes for both leaderboards
        from .arena_style import read_style_votes

        arrays = read_style_votes(votes, style["features"])
        models = arrays.models
        counts = aggregate_pairwise(arrays.a, arrays.b, arrays.outcome, len(models))
        extra = {"both_bad": int(np.sum(arrays.outcome == BOTH_BAD))}
    result, board, observed, predicted = bt_board(
        votes, counts, models, extra, ties=ties, bootstrap=bootstrap, ci=ci, alpha=alpha,
        anchor=anchor, min_votes=min_votes, seed=seed)
    if style is not None:
        from .arena_style import style_board

        result["style_control"] = style_board(votes, arrays, board.rating,
                                              convention=style["convention"], ci=ci,
                                              bootstrap=bootstrap, seed=seed,
                                              anchor=anchor_index(anchor, models, votes),
                                              plain=(counts, board.params))
    if plot:
        result["plot"] = _plot_board(plot, models, board.rating, board.ci_low, board.ci_high,
                                     f"Bradley-Terry ({ties} ties)", ci)
    if winrate_plot:
        from ..report.figures import plot_win_rates

        order = list(board.order())
        result["winrate_plot"] = _write_figure(
            plot_win_rates, winrate_plot, "--winrate-plot", [models[i] for i in order],
            observed[np.ix_(order, order)], predicted[np.ix_(order, order)])
    return result


def _rank_elo(votes, k_factor, permutations, seed, anchor, plot) -> dict[str, Any]:
    from ..data.battles import load_battle_arrays
    from ..rank.elo import elo_order_sensitivity, online_elo

    arrays = load_battle_arrays(votes)
    n = len(arrays.models)
    score = np.where(arrays.outcome == 0, 1.0, np.where(arrays.outcome == 1, 0.0, 0.5))
    ratings = online_elo(n, arrays.a, arrays.b, score, k=k_factor)
    anchor_at = anchor_index(anchor, arrays.models, votes)
    if anchor_at is not None:
        ratings = ratings + anchor_at[1] - ratings[anchor_at[0]]
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
        result["plot"] = _plot_board(plot, arrays.models, ratings, None, None,
                                     f"Online Elo (K={k_factor})")
    return result


def _rank_kwise(votes, method, alpha, bootstrap, seed, anchor, plot,
                skill_tau=None) -> dict[str, Any]:
    result, models = kwise_board(votes, method, alpha=alpha, bootstrap=bootstrap, seed=seed,
                                 anchor=anchor, skill_tau=skill_tau)
    n = len(models)
    if plot:
        rating = np.array([0.0] * n)
        low = high = None
        for row in result["leaderboard"]:
            i = models.index(row["model"])
            rating[i] = row["rating"]
        if "ci_low" in result["leaderboard"][0]:
            low, high = np.zeros(n), np.zeros(n)
            for row in result["leaderboard"]:
                i = models.index(row["model"])
                low[i], high[i] = row["ci_low"], row["ci_high"]
        title = "Plackett-Luce" if method == "pl" else "Bayesian skill (mu - 3 sigma)"
        result["plot"] = _plot_board(plot, models, rating, low, high, title)
    return result


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
        stdout.print(f"style control ({sc['convention']} convention; "
                     f"{', '.join(sc['features'])}; {sc['votes_used']} votes): coefficients "
                     f"{sc['coefficients']}")
        for row in sc["leaderboard"]:
            interval = (f" [{row['ci_low']}, {row['ci_high']}]" if "ci_low" in row else "")
            stdout.print(f"  {row['model']:<30} {row['rating']:>8}{interval} (without control "
                         f"{row['rating_without_control']})")
        for problem in sc["problems"]:
            stdout.print(f"[yellow]problem[/yellow] style control {problem['problem']}: "
                         f"{problem['message']}")
    for key in ("plot", "winrate_plot"):
        if key in result:
            stdout.print(f"{key.replace('_', ' ')}: {result[key]}")
    if "order_sensitivity" in result:
        stdout.print(f"order sensitivity over {result['order_sensitivity']['permutations']} "
                     f"orderings: max spread {result['order_sensitivity']['max_spread']} points")


# rank.matchmaking.STRATEGIES (not imported here: scipy)
STRATEGIES = ("random", "ucb", "infogain", "order")


@app.command("next-match")
@cli_errors
def next_match(
    votes: Annotated[str, typer.Argument(help="Votes so far (battle records).")],
    strategy: Annotated[str, typer.Option(help="random | ucb | infogain | order")] = "infogain",
    k: Annotated[int, typer.Option("--k", help="Models per match (2 = a pair).")] = 2,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated model names to include (also ones with no votes yet).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Which models to compare next, given the votes so far: uniform random; K-Sort style UCB
    (least-compared pivot + close, rarely paired opponents); or the largest expected
    information gain on the ranking under the BT posterior (Laplace approximation), plain
    (infogain) or weighted by the probability that the pair's order is wrong (order: fewer votes
    until a ranking holds, the web app's default)."""
    from ..data.battles import aggregate_battle_file
    from ..rank import PairCounts
    from ..rank.matchmaking import match_from_counts

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
    chosen, strength, sigma = match_from_counts(counts, strategy, k, np.random.default_rng(seed))
    result = {"strategy": strategy, "k": k, "match": [names[i] for i in chosen],
              "estimates": {names[i]: {"strength": round(float(strength[i]), 4),
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
    table_path, png = out / "table.json", out / "convergence.png"
    from ..data.io import check_output_path

    for path in (table_path, png):  # before the simulations, not after
        check_output_path(path, option="--out")
    table = convergence_table(
        n_items_list=_csv(models, int), ks=_csv(k, int), noises=_csv(noise, float),
        combos=pairs, seeds=_csv(seeds, int), max_votes=max_votes, target_tau=target_tau,
        hold=hold)
    try:
        out.mkdir(parents=True, exist_ok=True)
        table_path.write_text(__import__("json").dumps(table, indent=1, default=float))
    except OSError as exc:
        raise ValueError(f"--out {table_path}: cannot write ({exc.strerror or exc})") from None
    _write_figure(plot_convergence, png, "--out", table)
    result = {"table": table, "plot": str(png), "table_path": str(table_path)}
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
