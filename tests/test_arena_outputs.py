"""`prefkit arena rank|simulate` outputs and anchors: a figure goes where it is reported, a
folder gets a named file inside it, impossible paths and unknown anchor models are bad input
(exit 2 naming them) -- checked before any work, never a traceback."""

import json

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from _arena_peers import battle_records
from prefkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def votes(tmp_path_factory):
    path = tmp_path_factory.mktemp("outputs") / "battles.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n"
                              for r in battle_records(n_models=4, n_votes=200)))
    return path


def _arena(*args):
    return runner.invoke(app, ["arena", *map(str, args), "--json"])


def _error(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return json.loads(result.stdout)["error"]


@pytest.mark.parametrize("method", ["bt", "elo", "pl"])
def test_unknown_anchor_model_is_bad_input(votes, method):
    error = _error(_arena("rank", votes, "--method", method, "--bootstrap", 0, "--anchor",
                          "gpt-5=1200"))
    assert "gpt-5" in error and str(votes) in error
    assert "model-a, model-b, model-c, model-d" in error
    known = _arena("rank", votes, "--method", method, "--bootstrap", 0, "--anchor",
                   "model-b=1200")
    assert known.exit_code == 0, known.output
    rows = {r["model"]: r["rating"] for r in json.loads(known.stdout)["leaderboard"]}
    assert rows["model-b"] == pytest.approx(1200)


def test_anchor_syntax_and_bayes(votes):
    assert "MODEL=RATING" in _error(_arena("rank", votes, "--anchor", "model-a"))
    assert "bayes" in _error(_arena("rank", votes, "--method", "bayes", "--anchor",
                                    "model-a=1000"))


@pytest.mark.parametrize("method", ["bt", "elo", "pl"])
def test_plot_into_a_folder_writes_a_named_file_and_reports_it(votes, tmp_path, method):
    folder = tmp_path / "figures"
    folder.mkdir()
    result = _arena("rank", votes, "--method", method, "--bootstrap", 3, "--plot", folder)
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)["plot"]
    assert reported == str(folder / "leaderboard.png")
    assert (folder / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "figures.png").exists()


def test_figure_paths(votes, tmp_path):
    # a folder written with a trailing slash is made; the reported paths are the real ones
    result = _arena("rank", votes, "--bootstrap", 0, "--winrate-plot", f"{tmp_path}/new/",
                    "--plot", tmp_path / "deep" / "lb.png")
    assert result.exit_code == 0, result.output
    board = json.loads(result.stdout)
    assert board["winrate_plot"] == str(tmp_path / "new" / "winrates.png")
    assert board["plot"] == str(tmp_path / "deep" / "lb.png")
    for path in (board["plot"], board["winrate_plot"]):
        assert open(path, "rb").read(4) == b"\x89PNG"
    # not a .png file name
    error = _error(_arena("rank", votes, "--plot", tmp_path / "leaderboard.pdf"))
    assert "--plot" in error and "leaderboard.pdf" in error and ".png" in error
    # a path under a file
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for option in ("--plot", "--winrate-plot"):
        error = _error(_arena("rank", votes, option, blocker / "x.png"))
        assert option in error and str(blocker / "x.png") in error


def test_simulate_out_must_be_a_writable_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "sim"):
        error = _error(_arena("simulate", "--models", 6, "--k", 2, "--noise", 0, "--combos",
                              "elo:random", "--seeds", 0, "--out", out))
        assert "--out" in error and str(out) in error
    result = _arena("simulate", "--models", 6, "--k", 2, "--noise", 0, "--combos", "elo:random",
                    "--seeds", 0, "--max-votes", 500, "--out", tmp_path / "a" / "b")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["plot"] == str(tmp_path / "a" / "b" / "convergence.png")
    assert out["table_path"] == str(tmp_path / "a" / "b" / "table.json")
    assert open(out["plot"], "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize("ci", ["bootstrap", "sandwich"])
def test_leaderboard_figure_names_its_interval(votes, tmp_path, drawn, ci):
    result = _arena("rank", votes, "--ci", ci, "--bootstrap", 5, "--plot", tmp_path / "lb.png")
    assert result.exit_code == 0, result.output
    (fig,) = drawn
    assert fig.axes[0].get_xlabel() == f"rating (Elo scale), 95% {ci} interval"
    # the whiskers are the reported intervals (clipped at the estimate only where they miss it)
    rows = json.loads(result.stdout)["leaderboard"]
    (bar,) = fig.axes[0].containers
    whiskers = sorted(tuple(s[:, 0]) for s in bar.lines[2][0].get_segments())
    expected = sorted((min(r["ci_low"], r["rating"]), max(r["ci_high"], r["rating"]))
                      for r in rows)
    np.testing.assert_allclose(whiskers, expected, atol=0.01)
