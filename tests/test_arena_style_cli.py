"""`prefkit arena rank --style-control` and `--ci sandwich` against the peers: LMArena's
arena-rank (the released package; skipped when it is not installed) and FastChat's
compute_style_control (a formula-level reference, see tests/_arena_peers.py)."""

import json

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from _arena_peers import arena_rank_bt, arena_rank_style, battle_records, fastchat_style_reference
from prefkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def votes(tmp_path_factory):
    records = battle_records()
    path = tmp_path_factory.mktemp("style") / "battles.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    names = sorted({r["model_a"] for r in records} | {r["model_b"] for r in records})
    return {"records": records, "path": path, "names": names}


@pytest.fixture(scope="module")
def arena_rank(votes):
    pytest.importorskip("arena_rank", reason="arena-rank (the bench extra) is not installed")
    style, coef = arena_rank_style(votes["records"])
    return {"style": style, "coef": coef, "bt": arena_rank_bt(votes["records"])}


def _rank(*args):
    result = runner.invoke(app, ["arena", "rank", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _rows(board):
    return {row["model"]: row for row in board["leaderboard"]}


def test_style_features_default_to_chatbot_arenas_four(votes):
    sc = _rank(votes["path"], "--style-control", "--bootstrap", "0")["style_control"]
    # context_tokens (collinear with the response length) is in the file but not used
    assert sc["features"] == ["sum_assistant_tokens", "header_count", "list_count",
                              "bold_count"]
    assert sc["votes_used"] == 600 and sc["settings"]["coef_penalty"] == 1.0
    chosen = _rank(votes["path"], "--style-control", "--bootstrap", "0", "--style-features",
                   "length,context_tokens")["style_control"]
    assert chosen["features"] == ["sum_assistant_tokens", "context_tokens"]
    result = runner.invoke(app, ["arena", "rank", str(votes["path"]), "--style-control",
                                 "--style-features", "emoji", "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert "emoji" in error and "available: bold_count, context_tokens" in error


def test_fastchat_convention_equals_compute_style_control(votes):
    sc = _rank(votes["path"], "--style-control", "--style-convention", "fastchat",
               "--bootstrap", "0")["style_control"]
    expected, coef = fastchat_style_reference(votes["records"], votes["names"])
    rows = _rows(sc)
    for i, model in enumerate(votes["names"]):
        assert rows[model]["rating"] == pytest.approx(expected[i], abs=0.01)
    assert list(sc["coefficients"].values()) == pytest.approx(coef, abs=1e-4)


@pytest.mark.slow  # JAX compiles arena-rank's fits (~10 s)
def test_style_control_equals_arena_rank_by_default(votes, arena_rank):
    for ci in ("sandwich", "bootstrap"):
        sc = _rank(votes["path"], "--style-control", "--ci", ci, "--bootstrap", "20")[
            "style_control"]
        rows = _rows(sc)
        for model, (rating, low, high) in arena_rank["style"].items():
            assert rows[model]["rating"] == pytest.approx(rating, abs=0.01)
            if ci == "sandwich":  # arena-rank's intervals
                assert rows[model]["ci_low"] == pytest.approx(low, abs=0.01)
                assert rows[model]["ci_high"] == pytest.approx(high, abs=0.01)
        assert list(sc["coefficients"].values()) == pytest.approx(arena_rank["coef"],
                                                                  abs=1e-4)


@pytest.mark.slow  # JAX compiles arena-rank's fits (~10 s)
def test_ci_sandwich_equals_arena_ranks_intervals(votes, arena_rank):
    board = _rank(votes["path"], "--ci", "sandwich")
    assert board["settings"]["ci"] == "sandwich"
    rows = _rows(board)
    for model, (rating, low, high) in arena_rank["bt"].items():
        assert rows[model]["rating"] == pytest.approx(rating, abs=0.01)
        # arena-rank adds a ridge of 1e-5 per vote to the Hessian (prefkit: none, the free
        # direction is projected out exactly; with the ridge they agree to 1e-4, see
        # test_rank_style): here that moves the bounds by < 0.01 Elo, plus 0.005 of rounding
        assert rows[model]["ci_low"] == pytest.approx(low, abs=0.015)
        assert rows[model]["ci_high"] == pytest.approx(high, abs=0.015)


def test_sandwich_and_bootstrap_intervals_agree(votes):
    """Two estimates of the same sampling spread: within the bootstrap's own noise."""
    sandwich = _rows(_rank(votes["path"], "--ci", "sandwich"))
    boot = _rows(_rank(votes["path"], "--bootstrap", "400"))
    ratio = [(boot[m]["ci_high"] - boot[m]["ci_low"])
             / (sandwich[m]["ci_high"] - sandwich[m]["ci_low"]) for m in votes["names"]]
    assert 0.85 < np.median(ratio) < 1.15
    anchored = _rows(_rank(votes["path"], "--ci", "sandwich", "--anchor", "model-c=1200"))
    assert anchored["model-c"]["rating"] == 1200.0
    assert anchored["model-c"]["ci_low"] == anchored["model-c"]["ci_high"] == 1200.0


def test_sandwich_bad_combinations_exit_2(votes):
    for args, words in ((["--ci", "sandwich", "--ties", "davidson"], "--ties half"),
                        (["--ci", "sandwich", "--method", "elo"], "only with --method bt"),
                        (["--ci", "jackknife"], "--ci must be one of"),
                        (["--alpha", "nan"], "--alpha must be"),
                        (["--bootstrap", "-1"], "--bootstrap must be"),
                        (["--style-control", "--style-convention", "lmsys"],
                         "--style-convention must be one of")):
        result = runner.invoke(app, ["arena", "rank", str(votes["path"]), *args, "--json"])
        assert result.exit_code == 2, (args, result.output)
        assert words in json.loads(result.stdout)["error"]


def test_parquet_struct_column_gives_the_rows_style_counts(votes, tmp_path):
    """Chatbot Arena's Parquet layout (conv_metadata a struct, nested counts structs) is read
    column by column: the same counts, names and leaderboard as the row reader of the JSONL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefkit.data.battles import load_battle_arrays
    from prefkit.data.parquet_style import parquet_style_counts, parquet_style_names

    records = [dict(r) for r in votes["records"]]
    records[0] = {**records[0], "conv_metadata": None}  # no metadata: every feature missing
    meta = dict(records[1]["conv_metadata"])
    meta["header_count_a"] = {**meta["header_count_a"], "h2": None}  # one nested count missing
    records[1] = {**records[1], "conv_metadata": meta}
    jsonl, parquet = tmp_path / "v.jsonl", tmp_path / "v.parquet"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), parquet, row_group_size=250)
    rows = load_battle_arrays(jsonl, with_style=True)
    names = parquet_style_names(parquet)
    side_a, side_b = parquet_style_counts(parquet, names)
    assert names == rows.style_names
    assert "context_tokens" in names and "header_count" in names
    np.testing.assert_array_equal(side_a, rows.style_a)
    np.testing.assert_array_equal(side_b, rows.style_b)
    assert np.isnan(side_a[0]).all() and np.isnan(side_a[1, names.index("header_count")])
    by_file = [_rank(path, "--style-control", "--ci", "sandwich")["style_control"]
               for path in (jsonl, parquet)]
    assert by_file[0] == by_file[1] and by_file[0]["votes_used"] == 598
    chosen = [_rank(path, "--style-control", "--bootstrap", 0, "--style-features",
                    "bold,context_tokens")["style_control"] for path in (jsonl, parquet)]
    assert chosen[0] == chosen[1] and chosen[0]["features"] == ["bold_count", "context_tokens"]
    bad = runner.invoke(app, ["arena", "rank", str(parquet), "--style-control",
                              "--style-features", "emoji", "--json"])
    assert bad.exit_code == 2 and "emoji" in json.loads(bad.stdout)["error"]


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_the_peer_never_loads_jax_into_the_test_process(arena_rank):
    """arena-rank ran in its spawned worker (tests/_arena_peers.py): JAX's threads in this
    process would make later fork-based tests (parallel validation) liable to deadlock."""
    import sys

    assert arena_rank["bt"] and "jax" not in sys.modules
