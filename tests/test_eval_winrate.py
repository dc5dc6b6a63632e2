"""`prefkit eval winrate`: AlpacaEval files in and out, win rate / LC win rate by hand, and the
same numbers as alpaca_eval's own `get_winrate` / `get_length_controlled_winrate`.

"Configured like it" (the comparison below): alpaca_eval 0.6.6 with the formula of its
``length_controlled_minimal`` GLM (``np.tanh(std_delta_len) + not_gamed_baseline - 1``: no
instruction difficulty, no gamed-baseline rows), its logistic regression given an L2 penalty
at ``C = 1 / l2`` without cross-validation (``kwargs={"n_splits": 0, "C": 1/l2, "penalty":
"l2", "solver": "lbfgs"}``), ``save_weights_dir=None`` and no ``baseline`` -- against prefkit's
default ``l2 = 1e-2``. Two things are stubbed on alpaca_eval's side, neither in its
computation: ``pkg_resources`` (imported by ``alpaca_eval.utils`` at module level, used only
for API providers' version checks; setuptools >= 81 no longer ships it) when it is missing,
and the Hugging Face download of ``df_gamed.csv``, which that formula reads only for an
``instruction_difficulty`` column it then leaves out of the fit (a local file with zeros).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.evaluate import alpaca_switched, length_controlled_win_rate, read_annotations

PREFKIT = [str(Path(sys.executable).with_name("prefkit"))]

JUDGES = '''
import math
from prefkit.judges.base import Judgment

def soft_longer(request):
    """P(first better) = sigmoid((len(first) - len(second)) / 10); position-free."""
    if "UNPARSABLE" in request.prompt:
        return Judgment.unparsed("compare", "test: no verdict in the answer")
    if "FAILING" in request.prompt:
        raise RuntimeError("test: the backend is down")
    a, b = request.responses
    return 1.0 / (1.0 + math.exp(-(len(a) - len(b)) / 10.0))

def always_first(request):
    return 1.0
'''


def run(*args, code=None, subprocess_=False):
    """The CLI in this process (the python: judge loads torch through prefkit.rewards: seconds
    per new process), or as the console script with ``subprocess_``."""
    if subprocess_:
        proc = subprocess.run([*PREFKIT, *map(str, args)], capture_output=True, text=True)
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        result = CliRunner().invoke(app, [str(a) for a in args])
        returncode, stdout, stderr = result.exit_code, result.stdout, result.stderr
    if code is not None:
        assert returncode == code, stderr
    return types.SimpleNamespace(returncode=returncode, stdout=stdout, stderr=stderr)


def one_json(proc):
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture
def outputs(tmp_path):
    """40 instructions: model and reference outputs of random lengths (the reference file in
    another order), 2 identical pairs, 2 the judge cannot parse and 1 where it fails."""
    rng = np.random.default_rng(7)
    instructions = [f"question {i}" for i in range(35)]
    instructions += ["same A", "same B", "UNPARSABLE 1", "UNPARSABLE 2", "FAILING 1"]
    model, ref = [], []
    for k, instruction in enumerate(instructions):
        m = "m" * int(rng.integers(5, 60))
        r = "r" * int(rng.integers(5, 60))
        if instruction.startswith("same"):
            m = r = "the same answer"
        model.append({"instruction": instruction, "output": m, "generator": "tiny-dpo",
                      "dataset": "synthetic"})
        ref.append({"instruction": instruction, "output": r, "generator": "tiny-sft",
                    "dataset": "synthetic"})
        del k
    (tmp_path / "judges_eval.py").write_text(JUDGES)
    mpath, rpath = tmp_path / "model.json", tmp_path / "ref.json"
    mpath.write_text(json.dumps(model))
    rpath.write_text(json.dumps(ref[::-1]))
    return {"model": model, "ref": ref, "mpath": mpath, "rpath": rpath,
            "judge": f"python:{tmp_path / 'judges_eval.py'}:soft_longer",
            "first": f"python:{tmp_path / 'judges_eval.py'}:always_first"}


def test_cli_end_to_end_equals_hand_computation(outputs, tmp_path):
    out = tmp_path / "annotations.json"
    result = one_json(run("eval", "winrate", "--model-outputs", outputs["mpath"],
                          "--reference-outputs", outputs["rpath"], "--judge", outputs["judge"],
                          "--annotations", out, "--no-cache", "--bootstrap", "50", "--json",
                          code=0, subprocess_=True))
    # by hand: the judge's P(model better) does not depend on the order shown
    p, lm, lr = [], [], []
    for m, r in zip(outputs["model"], outputs["ref"], strict=True):
        if m["instruction"].startswith(("UNPARSABLE", "FAILING")):
            continue
        p.append(sigmoid((len(m["output"]) - len(r["output"])) / 10.0))
        lm.append(len(m["output"]))
        lr.append(len(r["output"]))
    p = np.array(p)
    assert result["n"] == 37 and result["n_annotations"] == 40
    assert result["not_judged"] == {"unparsed": 2, "failed": 1}
    assert result["requests"] == 38 and result["identical_outputs"] == 2
    assert result["win_rate"] == pytest.approx(100 * p.mean(), abs=1e-9)
    se = 100 * p.std(ddof=1) / math.sqrt(len(p))
    assert result["standard_error"] == pytest.approx(se, abs=1e-9)
    assert result["ci_low"] == pytest.approx(result["win_rate"] - 1.959964 * se, abs=1e-4)
    assert result["ci_high"] == pytest.approx(result["win_rate"] + 1.959964 * se, abs=1e-4)
    wins, ties = int((p > 0.5).sum()), int((p == 0.5).sum())
    assert (result["wins"], result["ties"]) == (wins, ties) and ties >= 2
    assert result["discrete_win_rate"] == pytest.approx(100 * (wins + ties / 2) / len(p))
    lc = length_controlled_win_rate(p, lm, lr)
    assert result["lc_win_rate"] == pytest.approx(100 * lc["lc_win_rate"], abs=1e-9)
    assert result["lc_ci_low"] < result["lc_win_rate"] < result["lc_ci_high"]
    assert (result["model"], result["reference"]) == ("tiny-dpo", "tiny-sft")

    # the file is AlpacaEval annotations: output_1 = reference, output_2 = model
    rows = json.loads(out.read_text())
    assert len(rows) == 40
    by_instruction = {r["instruction"]: r for r in rows}
    for m, r in zip(outputs["model"], outputs["ref"], strict=True):
        row = by_instruction[m["instruction"]]
        assert (row["output_1"], row["output_2"]) == (r["output"], m["output"])
        assert (row["generator_1"], row["generator_2"]) == ("tiny-sft", "tiny-dpo")
        assert row["annotator"] == result["judge"] and row["dataset"] == "synthetic"
        if m["instruction"].startswith(("UNPARSABLE", "FAILING")):
            assert row["preference"] is None
            assert row["judge_status"] == ("failed" if "FAILING" in m["instruction"]
                                           else "unparsed")
        else:
            want = 1 + sigmoid((len(m["output"]) - len(r["output"])) / 10.0)
            assert row["preference"] == pytest.approx(want, abs=1e-12)

    # recomputing from the file gives the same numbers, without the judge
    again = one_json(run("eval", "winrate", "--from-annotations", out, "--bootstrap", "50",
                         "--json", code=0))
    for key in ("win_rate", "standard_error", "discrete_win_rate", "lc_win_rate", "lc_ci_low",
                "n", "not_judged", "ties"):
        assert again[key] == result[key], key


def test_one_order_follows_alpaca_evals_swap_and_both_orders_calibrate(outputs):
    """A judge that always prefers the response shown first: with one order the model wins
    exactly where AlpacaEval's seeded rule shows it first; both orders cancel to 50%."""
    one = one_json(run("eval", "winrate", "--model-outputs", outputs["mpath"],
                       "--reference-outputs", outputs["rpath"], "--judge", outputs["first"],
                       "--no-cache", "--bootstrap", "0", "--json", code=0))
    shown_first = [alpaca_switched(m["instruction"]) for m in outputs["model"]
                   if not m["instruction"].startswith("same")]
    assert 0 < sum(shown_first) < len(shown_first)
    expected = (sum(shown_first) + 0.5 * 2) / (len(shown_first) + 2)
    assert one["win_rate"] == pytest.approx(100 * expected)
    assert one["n"] == 40 and one["requests"] == 38
    assert one["lc_ci_low"] is None

    both = one_json(run("eval", "winrate", "--model-outputs", outputs["mpath"],
                        "--reference-outputs", outputs["rpath"], "--judge", outputs["first"],
                        "--both-orders", "--no-cache", "--bootstrap", "0", "--json", code=0))
    assert both["win_rate"] == pytest.approx(50.0)
    assert both["requests"] == 76 and both["orders"] == "both"


def test_cache_serves_the_second_run(outputs, tmp_path):
    cache = tmp_path / "judgments.sqlite"
    args = ("eval", "winrate", "--model-outputs", outputs["mpath"], "--reference-outputs",
            outputs["rpath"], "--judge", outputs["judge"], "--cache", cache, "--bootstrap",
            "0", "--json")
    first = one_json(run(*args, code=0))
    second = one_json(run(*args, code=0))
    assert first["cached"] == 0
    assert second["cached"] == 37  # failed judgments are not cached: tried again
    assert second["win_rate"] == first["win_rate"]


def _bad(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return path


def test_bad_inputs_exit_2_naming_file_record_and_instruction(outputs, tmp_path):
    base = ("eval", "winrate", "--judge", outputs["judge"], "--no-cache", "--json")
    # an instruction the reference lacks
    short_ref = _bad(tmp_path, "short_ref.json", outputs["ref"][:-1])
    err = one_json(run(*base, "--model-outputs", outputs["mpath"], "--reference-outputs",
                       short_ref, code=2))
    assert "FAILING 1" in err["error"] and str(outputs["mpath"]) in err["error"]
    assert err["detail"]["got"] == "'FAILING 1'" and err["detail"]["record"] == 40
    # an instruction the model lacks
    short_model = _bad(tmp_path, "short_model.json", outputs["model"][1:])
    err = one_json(run(*base, "--model-outputs", short_model, "--reference-outputs",
                       outputs["rpath"], code=2))
    assert "question 0" in err["error"] and str(outputs["rpath"]) in err["error"]
    # a duplicated instruction
    dup = _bad(tmp_path, "dup.json", [*outputs["model"], outputs["model"][3]])
    err = one_json(run(*base, "--model-outputs", dup, "--reference-outputs", outputs["rpath"],
                       code=2))
    assert "question 3" in err["error"] and "dup.json" in err["error"]
    assert err["detail"]["record"] == 41 and err["detail"]["code"] == "duplicate_record"
    # a record without an output
    broken = [dict(r) for r in outputs["model"]]
    del broken[4]["output"]
    err = one_json(run(*base, "--model-outputs", _bad(tmp_path, "no_output.json", broken),
                       "--reference-outputs", outputs["rpath"], code=2))
    assert err["detail"]["field"] == "output" and err["detail"]["record"] == 5
    assert "no_output.json" in err["error"]
    # annotations with a preference out of AlpacaEval's scale
    ann = [{"instruction": "q", "output_1": "a", "output_2": "bb", "preference": 1.0},
           {"instruction": "r", "output_1": "a", "output_2": "bb", "preference": 3}]
    err = one_json(run("eval", "winrate", "--from-annotations",
                       _bad(tmp_path, "ann.json", ann), "--json", code=2))
    assert err["detail"]["field"] == "preference" and err["detail"]["record"] == 2
    # options that do not go together, or are missing
    err = one_json(run("eval", "winrate", "--from-annotations", tmp_path / "ann.json",
                       "--judge", outputs["judge"], "--json", code=2))
    assert "--from-annotations" in err["error"]
    err = one_json(run("eval", "winrate", "--model-outputs", outputs["mpath"], "--json",
                       code=2))
    assert "--reference-outputs" in err["error"] and "--judge" in err["error"]
    # a file that is not there
    err = one_json(run("eval", "winrate", "--from-annotations", tmp_path / "nope.json",
                       "--json", code=2))
    assert "nope.json" in err["error"]


def test_read_annotations_old_tie_and_missing_preferences(tmp_path):
    rows = [{"instruction": "a", "output_1": "x", "output_2": "y", "preference": 0},
            {"instruction": "b", "output_1": "x", "output_2": "y", "preference": None},
            {"instruction": "c", "output_1": "x", "output_2": "y"},
            {"instruction": "d", "output_1": "x", "output_2": "y", "preference": None,
             "judge_status": "failed"}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows))
    got = read_annotations(path)
    assert [r["preference"] for r in got] == [1.5, None, None, None]
    assert [r["judge_status"] for r in got] == ["ok", "unparsed", "unparsed", "failed"]


# ------------------------------------------------------------------ against alpaca_eval itself


def synthetic_annotations(n=300, seed=0):
    """n annotations from a known length-biased judge: P(model wins) = sigmoid(theta + phi *
    tanh(d / sd)); hard verdicts, 30 exact ties, 60 soft preferences, 5 unparsed (null)."""
    rng = np.random.default_rng(seed)
    len_ref = rng.integers(200, 2000, n)
    len_model = rng.integers(100, 3000, n)
    d = len_model - len_ref
    prob = 1 / (1 + np.exp(-(0.4 + 1.2 * np.tanh(d / d.std()))))
    pref = 1.0 + (rng.random(n) < prob)
    pref[:30] = 1.5
    pref[30:90] = 1.0 + prob[30:90]
    rows = []
    for i in range(n):
        rows.append({"instruction": f"instruction {i}", "output_1": "r" * int(len_ref[i]),
                     "generator_1": "reference", "output_2": "m" * int(len_model[i]),
                     "generator_2": "model", "annotator": "synthetic_judge",
                     "preference": None if 90 <= i < 95 else float(pref[i])})
    return rows


@pytest.fixture
def alpaca_eval_metrics(monkeypatch, tmp_path):
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # setuptools >= 81: alpaca_eval.utils imports it but we never use it
        monkeypatch.setitem(sys.modules, "pkg_resources", types.ModuleType("pkg_resources"))
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate",
                              reason="alpaca-eval (the dev / bench extra) is not installed")
    from alpaca_eval.metrics import winrate

    gamed = tmp_path / "df_gamed.csv"
    gamed.write_text("model,index,instruction_difficulty\n"
                     + "".join(f"x,{i},0.0\n" for i in range(1000)))
    monkeypatch.setattr(glm, "hf_hub_download", lambda **_: str(gamed))
    return glm, winrate


def configured_like_prefkit(l2=1e-2):
    from alpaca_eval.metrics.glm_winrate import GLM_INFO

    return {"formula": GLM_INFO["length_controlled_minimal"]["formula"],
            "regularize_to_baseline_lambda": None,
            "kwargs": {"n_splits": 0, "C": 1.0 / l2, "penalty": "l2", "solver": "lbfgs"}}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("seed", [0, 1])
def test_same_win_rate_and_lc_as_alpaca_eval(alpaca_eval_metrics, tmp_path, seed):
    glm, winrate = alpaca_eval_metrics
    rows = synthetic_annotations(seed=seed)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    ours = one_json(run("eval", "winrate", "--from-annotations", path, "--bootstrap", "0",
                        "--json", code=0))

    theirs = winrate.get_winrate(rows)
    assert ours["n"] == theirs["n_total"] == 295
    assert ours["not_judged"]["unparsed"] == 5
    assert abs(ours["win_rate"] - theirs["win_rate"]) < 1e-9
    assert abs(ours["standard_error"] - theirs["standard_error"]) < 1e-9
    assert abs(ours["discrete_win_rate"] - theirs["discrete_win_rate"]) < 1e-9
    assert (ours["wins"], ours["losses"], ours["ties"]) == (
        theirs["n_wins"], theirs["n_wins_base"], theirs["n_draws"])

    lc = glm.get_length_controlled_winrate(rows, glm_info=configured_like_prefkit(),
                                           save_weights_dir=None)
    assert abs(ours["win_rate"] - lc["win_rate"]) < 1e-9
    # measured: 0.002-0.012 points (AlpacaEval scales lengths by a ddof=1 sd, prefkit ddof=0,
    # and takes it over the 5 unparsed rows too)
    assert abs(ours["lc_win_rate"] - lc["length_controlled_winrate"]) < 0.1
    assert abs(ours["lc_win_rate"] - ours["win_rate"]) > 1  # the length term matters here


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_alpaca_eval_reads_our_annotations_and_swaps_where_we_do(alpaca_eval_metrics, outputs,
                                                                 tmp_path):
    import pandas as pd
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

    _, winrate = alpaca_eval_metrics
    out = tmp_path / "annotations.json"
    ours = one_json(run("eval", "winrate", "--model-outputs", outputs["mpath"],
                        "--reference-outputs", outputs["rpath"], "--judge", outputs["judge"],
                        "--annotations", out, "--no-cache", "--bootstrap", "0", "--json",
                        code=0))
    theirs = winrate.get_winrate(pd.read_json(out))
    assert theirs["n_total"] == ours["n"] == 37
    assert abs(theirs["win_rate"] - ours["win_rate"]) < 1e-9

    # the one-order position swap is AlpacaEval's own draw (its default seed 123)
    frame = pd.DataFrame({"instruction": [m["instruction"] for m in outputs["model"]],
                          "output_1": "ref", "output_2": "model"})
    switch = RandomSwitchTwoColumnsProcessor(two_columns_to_switch=["output_1", "output_2"],
                                             random_seed_columns=["instruction"],
                                             _switch_column="is_switched_outputs")
    drawn = switch.preprocess(frame)["is_switched_outputs"].tolist()
    assert drawn == [alpaca_switched(i) for i in frame["instruction"]]
    assert 0 < sum(drawn) < len(drawn)
