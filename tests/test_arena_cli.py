"""`prefkit arena rank` end to end on simulated battle files with known strengths."""

import json

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.special import expit
from scipy.stats import spearmanr
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.data.battles import aggregate_battle_file

runner = CliRunner()
MODELS = [f"model-{c}" for c in "abcdefgh"]


@pytest.fixture(scope="module")
def battles(tmp_path_factory):
    """8 models with known strengths; longer answers win more often (style effect 0.8)."""
    rng = np.random.default_rng(0)
    strength = np.linspace(-1.5, 1.5, len(MODELS))
    n = 12_000
    a = rng.integers(0, 8, n)
    b = (a + rng.integers(1, 8, n)) % 8
    tokens_a = rng.integers(50, 800, n)
    tokens_b = rng.integers(50, 800, n)
    raw = (tokens_a - tokens_b) / (tokens_a + tokens_b + 1)
    z = strength[a] - strength[b] + 0.8 * raw / raw.std()
    win = rng.random(n) < expit(z)
    tie = rng.random(n) < 0.05
    rows = []
    for k in range(n):
        winner = "tie" if tie[k] else ("model_a" if win[k] else "model_b")
        rows.append({"question_id": f"q{k}", "model_a": MODELS[a[k]], "model_b": MODELS[b[k]],
                     "winner": winner, "judge": f"user{k % 50}", "tstamp": 1.7e9 + k,
                     "conv_metadata": {"sum_assistant_a_tokens": int(tokens_a[k]),
                                       "sum_assistant_b_tokens": int(tokens_b[k])}})
    folder = tmp_path_factory.mktemp("arena")
    jsonl = folder / "battles.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    parquet = folder / "battles.parquet"
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in ("model_a", "model_b", "winner")}
                                         for r in rows]), parquet)
    return {"jsonl": jsonl, "parquet": parquet, "strength": strength, "folder": folder}


def _rank(*args):
    result = runner.invoke(app, ["arena", "rank", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _ratings(board):
    return {row["model"]: row["rating"] for row in board["leaderboard"]}


def test_bt_leaderboard_recovers_order_and_intervals(battles):
    board = _rank(battles["jsonl"], "--bootstrap", "50", "--plot", battles["folder"] / "lb.png")
    ratings = _ratings(board)
    assert spearmanr([ratings[m] for m in MODELS], battles["strength"]).statistic == 1.0
    top = board["leaderboard"][0]
    assert top["model"] == "model-h" and top["ci_low"] < top["rating"] < top["ci_high"]
    assert board["votes"] == 12_000 and not [p for p in board["problems"]
                                             if p["problem"] != "few_votes"]
    assert (battles["folder"] / "lb.png").stat().st_size > 1000
    assert len(board["win_rates"]["observed"]) == 8


def test_parquet_input_streams_to_the_same_counts(battles):
    def by_name(path):
        counts, models, _ = aggregate_battle_file(path)
        out = {}
        for i, j, row in zip(counts.i, counts.j, counts.outcome_table(), strict=True):
            x, y = sorted((models[i], models[j]))
            out[(x, y)] = tuple(row) if models[i] == x else (row[1], row[0], row[2])
        return out

    assert by_name(battles["jsonl"]) == by_name(battles["parquet"])
    assert _ratings(_rank(battles["parquet"], "--bootstrap", "0")) == _ratings(
        _rank(battles["jsonl"], "--bootstrap", "0"))


def test_style_control_finds_the_length_effect(battles):
    # FastChat's convention: a light penalty on the summed likelihood finds the effect (0.8)
    board = _rank(battles["jsonl"], "--style-control", "--style-convention", "fastchat",
                  "--bootstrap", "5")
    sc = board["style_control"]
    assert sc["features"] == ["sum_assistant_tokens"] and sc["convention"] == "fastchat"
    assert 0.6 < sc["coefficients"]["sum_assistant_tokens"] < 1.0
    controlled = {r["model"]: r["rating"] for r in sc["leaderboard"]}
    assert spearmanr([controlled[m] for m in MODELS], battles["strength"]).statistic == 1.0
    # arena-rank's (the default): penalty 1.0 per vote shrinks the coefficient several-fold
    default = _rank(battles["jsonl"], "--style-control", "--bootstrap", "0")["style_control"]
    assert default["convention"] == "arena-rank"
    assert 0 < default["coefficients"]["sum_assistant_tokens"] < 0.2


def test_davidson_ties_and_anchor(battles):
    board = _rank(battles["jsonl"], "--ties", "davidson", "--bootstrap", "0", "--anchor",
                  "model-a=800")
    assert _ratings(board)["model-a"] == pytest.approx(800)
    assert 0 < board["tie_param"] < 1


def test_bad_votes_exit_2_with_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"model_a": "x", "model_b": "y", "winner": "model_a"}\n'
                    '{"model_a": "x", "model_b": "y", "winner": "draw"}\n')
    result = runner.invoke(app, ["arena", "rank", str(path), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert f"{path}:2" in error and "winner" in error and "draw" in error


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_elo_pl_and_bayes_on_battles(battles):
    strength = battles["strength"]
    for method in ("elo", "pl", "bayes"):
        board = _rank(battles["jsonl"], "--method", method, "--bootstrap", "3")
        ratings = _ratings(board)
        rho = spearmanr([ratings[m] for m in MODELS], strength).statistic
        assert rho >= 0.95, (method, rho)
    elo = _rank(battles["jsonl"], "--method", "elo", "--bootstrap", "10")
    assert elo["order_sensitivity"]["max_spread"] > 0
    bayes = _rank(battles["jsonl"], "--method", "bayes", "--bootstrap", "0")
    top = bayes["leaderboard"][0]
    assert top["rating"] == pytest.approx(top["mu"] - 3 * top["sigma"], abs=2e-3)
    # without dynamics the skills stop drifting: the same votes leave every sigma smaller
    static = _rank(battles["jsonl"], "--method", "bayes", "--skill-tau", "0")
    assert static["settings"]["tau"] == 0.0 and bayes["settings"]["tau"] > 0
    sigma = {r["model"]: r["sigma"] for r in bayes["leaderboard"]}
    assert all(r["sigma"] < sigma[r["model"]] for r in static["leaderboard"])
    ratings = _ratings(static)
    assert spearmanr([ratings[m] for m in MODELS], strength).statistic >= 0.95


def test_kwise_rankings_with_models(tmp_path):
    rng = np.random.default_rng(1)
    strength = np.linspace(-1, 1, 6)
    names = [f"m{i}" for i in range(6)]
    lines = []
    for k in range(3000):
        items = rng.choice(6, 4, replace=False)
        order = items[np.argsort(-(strength[items] + rng.gumbel(size=4)))]
        lines.append(orjson.dumps({"prompt": f"p{k}", "responses": ["w", "x", "y", "z"],
                                   "models": [names[i] for i in items],
                                   "ranking": [int(np.flatnonzero(items == i)[0])
                                               for i in order]}))
    path = tmp_path / "kwise.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for method in ("pl", "bayes"):
        board = _rank(path, "--method", method, "--bootstrap", "5")
        ratings = _ratings(board)
        assert spearmanr([ratings[m] for m in names], strength).statistic == 1.0, method
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}\n')
    result = runner.invoke(app, ["arena", "rank", str(bad), "--method", "pl", "--json"])
    assert result.exit_code == 2 and "models" in json.loads(result.stdout)["error"]


def _invoke(*args):
    return runner.invoke(app, ["arena", *map(str, args)])


def test_next_match_strategies(battles):
    # a model with no votes yet is the UCB pivot (the least compared)
    result = _invoke("next-match", battles["jsonl"], "--strategy", "ucb", "--models",
                     "newcomer", "--json")
    assert result.exit_code == 0, result.output
    ucb = json.loads(result.stdout)
    assert ucb["match"][0] == "newcomer" and len(set(ucb["match"])) == 2
    assert ucb["votes"] == 12_000
    # information gain: the newcomer (prior only, largest variance) is in the best pair
    result = _invoke("next-match", battles["jsonl"], "--models", "newcomer", "--json")
    info = json.loads(result.stdout)
    assert "newcomer" in info["match"]
    # (sds of centred ratings: the newcomer's prior variance also widens the others' a little)
    assert info["estimates"]["newcomer"]["sd"] > 5 * min(
        e["sd"] for m, e in info["estimates"].items() if m != "newcomer")
    # K-wise, and the seed makes random matches reproducible
    four = [json.loads(_invoke("next-match", battles["jsonl"], "--strategy", "random", "--k",
                               4, "--seed", 3, "--json").stdout)["match"] for _ in range(2)]
    assert four[0] == four[1] and len(set(four[0])) == 4 and set(four[0]) <= set(MODELS)
    for bad in (["--strategy", "best"], ["--k", 9]):
        result = _invoke("next-match", battles["jsonl"], *bad, "--json")
        assert result.exit_code == 2, result.output
        assert json.loads(result.stdout)["ok"] is False


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_simulate_writes_table_and_plot(tmp_path):
    from prefkit.rank.simulate import convergence_table

    out = tmp_path / "sim"
    result = _invoke("simulate", "--models", 8, "--k", 2, "--noise", "0", "--combos",
                     "elo:random,pl:infogain", "--seeds", "0,1", "--max-votes", 4000,
                     "--out", out, "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)["table"]
    assert [(r["method"], r["strategy"]) for r in table] == [("elo", "random"),
                                                             ("pl", "infogain")]
    direct = convergence_table(n_items_list=(8,), ks=(2,), noises=(0.0,),
                               combos=[("elo", "random"), ("pl", "infogain")], seeds=(0, 1),
                               max_votes=4000)
    for row, expected in zip(table, direct, strict=True):
        assert row["votes_per_seed"] == expected["votes_per_seed"]
        assert row["converged"] == 2 and 8 <= row["votes"] <= 4000
        assert row["final_tau_median"] >= 0.9
    assert json.loads((out / "table.json").read_text())[0]["method"] == "elo"
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    bad = _invoke("simulate", "--combos", "elo", "--json")
    assert bad.exit_code == 2 and "METHOD:STRATEGY" in json.loads(bad.stdout)["error"]
    held = _invoke("simulate", "--models", 8, "--k", 2, "--noise", "0", "--combos",
                   "trueskill:ucb", "--seeds", "0,1", "--hold", 2, "--out", out, "--json")
    assert held.exit_code == 0, held.output
    row = json.loads(held.stdout)["table"][0]
    assert row["votes_per_seed"] == convergence_table(
        n_items_list=(8,), ks=(2,), noises=(0.0,), combos=[("trueskill", "ucb")],
        seeds=(0, 1), hold=2.0)[0]["votes_per_seed"]
    assert all(v is None or v >= t for v, t in zip(row["votes_per_seed"],
                                                   row["votes_three_checks_per_seed"],
                                                   strict=True))
    text = _invoke("simulate", "--models", 8, "--k", 2, "--noise", "0", "--combos",
                   "trueskill:ucb", "--seeds", "0,1", "--hold", 2, "--out", out)
    assert text.exit_code == 0 and "three checks" in text.stdout and "held x2" in text.stdout
    bad_hold = _invoke("simulate", "--models", 8, "--hold", "0.5", "--json")
    assert bad_hold.exit_code == 2 and "hold must be > 1" in json.loads(bad_hold.stdout)["error"]


def test_next_match_reports_the_posterior_sd_of_every_model(battles):
    """With next-match's unit prior, the sds are those of the centred ratings under the prior
    (P H^-1 P, H = the Bradley-Terry information + I), never 0."""
    from prefkit.rank import fit_bradley_terry

    counts, names, _ = aggregate_battle_file(battles["jsonl"])
    fit = fit_bradley_terry(counts, alpha=1.0)
    p = expit(fit.params[counts.i] - fit.params[counts.j])
    h = counts.totals * p * (1 - p)
    info = np.eye(8)
    for i, j, v in zip(counts.i, counts.j, h, strict=True):
        info[[i, j], [i, j]] += v
        info[i, j] -= v
        info[j, i] -= v
    centre = np.eye(8) - 1 / 8
    expected = np.sqrt(np.diag(centre @ np.linalg.inv(info) @ centre))
    for strategy in ("ucb", "infogain", "order", "random"):
        result = _invoke("next-match", battles["jsonl"], "--strategy", strategy, "--k", 4,
                         "--json")
        assert result.exit_code == 0, result.output
        estimates = json.loads(result.stdout)["estimates"]
        assert len(estimates) == 4
        for model, estimate in estimates.items():
            assert estimate["sd"] > 0
            assert estimate["sd"] == pytest.approx(expected[names.index(model)], abs=1e-4)
