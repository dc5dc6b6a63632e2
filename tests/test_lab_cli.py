"""`prefkit lab run` on the command line: stage progress on stderr (stdout keeps the one JSON
object), Ctrl-C says where the run stopped and how to resume (exit 130), the methods table shows
ranking accuracy with its interval and the number of held-out pairs."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import prefkit.lab.pipeline as pipeline
from prefkit.cli import app
from prefkit.commands.lab import methods_table
from prefkit.lab.progress import LabProgress

LINE = re.compile(r"^lab \d\d:\d\d \| ")


def _method(gold, win, ranking=None, ci=None, n=None):
    return {"gold_reward": gold, "win_rate_vs_sft": win, "win_rate_ci": [win - 0.05, win + 0.05],
            "lc_win_rate_vs_sft": win, "kl_to_sft": None if gold < 0.6 else 0.25,
            "mean_length": 4.7, "ranking_accuracy": ranking, "ranking_accuracy_ci": ci,
            "ranking_pairs": n}


RESULT = {"config": {"task": "sort"}, "methods": {
    "sft": _method(0.58, 0.5, 0.8529, [0.7977, 0.8948], 204),
    "dpo": _method(0.67, 0.61, 0.8725, [0.8201, 0.9111], 204),
    "best_of_8": _method(0.81, 0.68)},
    "leaderboard": [], "overoptimization": {"x_at_gold_max": 4.0},
    "reward_model": {"heldout": {"accuracy": 0.77}}}


@pytest.fixture
def staged_run_lab(monkeypatch):
    """run_lab without training: reports a cached stage and two run stages; with
    ``interrupt`` set, Ctrl-C arrives in the middle of the second method."""
    state = {"interrupt": False}

    def run_lab(config=None, *, progress=None, **overrides):
        workdir = config.workdir if config is not None else overrides["workdir"]
        progress.cached("SFT base model", "cache/base/sort-abc")
        progress.stage_dir = f"{workdir}/stages/0123"
        with progress.stage("method 1/2 dpo", "pairwise loss, 120 steps") as st:
            st.summary = "gold reward 0.670, win rate vs SFT 0.610"
        with progress.stage("method 2/2 grpo", "online"):
            if state["interrupt"]:
                raise KeyboardInterrupt
        result = copy.deepcopy(RESULT)
        result["config"]["workdir"] = workdir
        return result

    monkeypatch.setattr(pipeline, "run_lab", run_lab)
    return state


def test_progress_on_stderr_and_one_json_object_on_stdout(tmp_path, staged_run_lab):
    res = CliRunner().invoke(app, ["lab", "run", "--workdir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["methods"]["dpo"]["ranking_pairs"] == 204  # ONE object
    lines = res.stderr.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    text = [LINE.sub("", line) for line in lines]
    assert text[0] == "SFT base model: cached (cache/base/sort-abc)"
    assert text[1] == "method 1/2 dpo: pairwise loss, 120 steps ..."
    assert re.fullmatch(r"method 1/2 dpo: done in \d+\.\d s \(gold reward 0.670, win rate vs "
                        r"SFT 0.610\)", text[2])
    assert text[3] == "method 2/2 grpo: online ..."
    assert text[5] == f"report: {tmp_path / 'report.html'} ..."
    assert text[6].startswith("report: done in") and len(text) == 7
    # --quiet: no progress at all; without --json the tables go to stdout, progress to stderr
    quiet = CliRunner().invoke(app, ["lab", "run", "--workdir", str(tmp_path), "--json", "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout)
    table = CliRunner().invoke(app, ["lab", "run", "--workdir", str(tmp_path), "--no-report"])
    assert table.exit_code == 0 and "lab 00:" not in table.stdout
    assert "ranking" in table.stdout and "method 2/2 grpo: done" in table.stderr


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path, staged_run_lab):
    staged_run_lab["interrupt"] = True
    res = CliRunner().invoke(app, ["lab", "run", "--workdir", str(tmp_path)])
    assert res.exit_code == 130, res.output
    message = " ".join(res.stderr.split())
    assert (f"interrupted: stopped during method 2/2 grpo; the finished stages are cached "
            f"in {tmp_path}/stages/0123: run the same command again") in message
    assert "to resume from them" in message and "Traceback" not in res.output
    assert res.stdout == ""
    as_json = CliRunner().invoke(app, ["lab", "run", "--workdir", str(tmp_path), "--json"])
    assert as_json.exit_code == 130
    out = json.loads(as_json.stdout)
    assert out["ok"] is False and out["interrupted"] == "during method 2/2 grpo"
    assert out["finished"] == ["SFT base model", "method 1/2 dpo"]
    assert out["stage_dir"] == f"{tmp_path}/stages/0123"


def test_progress_knows_where_the_run_is():
    lines: list[str] = []
    progress = LabProgress(lines.append)
    assert progress.where() == "before the first stage"
    progress.cached("reward model")
    assert progress.where() == "after reward model"
    with pytest.raises(RuntimeError), progress.stage("method 1/1 dpo"):
        assert progress.where() == "during method 1/1 dpo"
        raise RuntimeError
    assert progress.where() == "during method 1/1 dpo"  # a failed stage stays the current one
    assert [LINE.sub("", line) for line in lines] == ["reward model: cached",
                                                       "method 1/1 dpo ..."]
    LabProgress().line("dropped")  # no writer: nothing happens


def test_methods_table_shows_ranking_accuracy_with_ci_and_pairs():
    console = Console(file=io.StringIO(), width=80)  # a plain terminal: nothing cut off
    console.print(methods_table(RESULT))
    text = console.file.getvalue()
    assert "…" not in text and "on 204 gold-ordered pairs" in " ".join(text.split())
    lines = text.splitlines()
    dpo = next(i for i, line in enumerate(lines) if "│ dpo " in line)
    cells = [c.strip() for c in lines[dpo].split("│")[1:-1]]
    below = [c.strip() for c in lines[dpo + 1].split("│")[1:-1]]
    assert cells == ["dpo", "0.670", "0.610", "0.610", "0.25", "4.7", "0.873"]
    assert below == ["", "", "(0.560-0.660)", "", "", "", "(0.820-0.911)"]
    bo8 = next(line for line in lines if "best_of_8" in line)
    assert bo8.rstrip(" │").endswith("-")  # no ranking accuracy for best-of-n


@pytest.mark.slow
def test_interrupted_run_resumes_from_the_cached_stages(tmp_path, monkeypatch):
    """A real (small) run interrupted while training its first method; the rerun says which
    stages are cached, trains only what is missing and finishes."""
    import prefkit.train.preference as preference

    settings = ["--set", "n_prompts=24", "--set", "n_eval=16", "--set", "rm_steps=3",
                "--set", "steps=2", "--set", "methods=dpo,ipo,grpo", "--set", "best_of_n=1",
                "--set", "rl_iterations=1", "--set", "rl_prompts_per_iteration=4",
                "--set", "overopt_length_bias=0", "--set", "curve_every=0"]
    args = ["lab", "run", "--workdir", str(tmp_path), "--no-report", *settings]
    real = preference.train_preference
    calls: list[str] = []
    interrupted: list[bool] = []

    def interrupt_on_ipo(config, **kwargs):
        calls.append(config.loss)
        if config.loss == "ipo" and not interrupted:  # Ctrl-C, once
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(config, **kwargs)

    monkeypatch.setattr(preference, "train_preference", interrupt_on_ipo)
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 130, first.output
    assert "stopped during method 2/3 ipo" in " ".join(first.stderr.split())
    stage = next(Path(tmp_path, "stages").iterdir())
    assert (stage / "methods" / "dpo.json").exists() and not (stage / "methods" /
                                                              "ipo.json").exists()
    calls.clear()
    again = CliRunner().invoke(app, [*args, "--json"])
    assert again.exit_code == 0, again.output
    assert calls == ["ipo"]  # only the missing method trains
    assert all(LINE.match(line) for line in again.stderr.splitlines()), again.stderr  # no noise
    text = [LINE.sub("", line) for line in again.stderr.splitlines()]
    for name in ("SFT base model", "annotator agreement", "reward model",
                 "reward model on held-out pairs", "evaluation of the SFT policy",
                 "method 1/3 dpo"):
        assert any(t.startswith(f"{name}: cached") for t in text), (name, text)
    assert any(t.startswith("method 2/3 ipo: done in") for t in text)
    assert any(t.startswith("method 3/3 grpo: done in") for t in text)
    out = json.loads(again.stdout)
    assert set(out["methods"]) == {"sft", "dpo", "ipo", "grpo"}
    assert out["methods"]["dpo"]["ranking_pairs"] == out["data"]["heldout_pairs"]
    # other settings in the same workdir: a new stage whose trainers get folders of their own
    # (a trainer refuses an output folder that holds another run)
    other = CliRunner().invoke(app, [*args, "--set", "rm_steps=4", "--set", "methods=dpo"])
    assert other.exit_code == 0, other.output
    assert len(list(Path(tmp_path, "stages").iterdir())) == 2


def test_demo_lab_step_shows_progress(tmp_path, staged_run_lab, capsys):
    """`make demo`'s step 10 shows the same stage lines on stderr (it silences the rest)."""
    from prefkit import demo

    console = Console(file=io.StringIO(), width=200)
    methods = demo._lab_tour(console, tmp_path, keep=False)
    assert set(methods) == {"sft", "dpo", "best_of_8"}
    err = capsys.readouterr().err
    assert "| method 1/2 dpo: pairwise loss, 120 steps ..." in err
    assert "| method 2/2 grpo: done in" in err
    assert "resumes" in console.file.getvalue()
