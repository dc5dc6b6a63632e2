"""The `prefkit` console script end to end: the --json contract and exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.data.io import iter_rows, read_records
from prefkit.demo import example_path

PREFKIT = [str(Path(sys.executable).with_name("prefkit"))]


def run(*args, check_code=None):
    proc = subprocess.run([*PREFKIT, *map(str, args)], capture_output=True, text=True)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stderr
    return proc


def one_json(proc):
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_convert_rankings_to_pairs_all_and_adjacent(tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = one_json(run("data", "convert", example_path("rankings.jsonl"), out,
                          "--to", "trl-preference", "--json", check_code=0))
    # ranking 1: strict of 4 -> 6 pairs; ranking 2: [3, [0, 2], 1] -> 3*1 + 2*1 + ... = 5;
    # ranking 3: [[0, 3], 1] with 2 unranked -> 2 pairs
    assert result["write"]["written"] == 6 + 5 + 2
    assert result["conversion"]["inputs"] == 3
    rows = [r.data for r in iter_rows(out)]
    assert rows[0] == {"prompt": "sort: 9 4 6", "chosen": "4 6 9", "rejected": "4 6 9 9",
                       **{k: rows[0][k] for k in rows[0] if k not in ("prompt", "chosen",
                                                                       "rejected")}}
    adjacent = one_json(run("data", "convert", example_path("rankings.jsonl"),
                            tmp_path / "adj.jsonl", "--to", "trl-preference", "--pairs",
                            "adjacent", "--json", check_code=0))
    assert adjacent["write"]["written"] == 3 + 4 + 2


def test_convert_reports_ties_dropped_by_the_target_format(tmp_path):
    result = one_json(run("data", "convert", example_path("alpaca_eval.json"),
                          tmp_path / "p.parquet", "--to", "trl-preference", "--json",
                          check_code=0))
    assert result["write"]["written"] == 3
    assert result["write"]["dropped"] == {"tie": 1, "both_bad": 1}
    assert len(list(read_records(tmp_path / "p.parquet"))) == 3


def test_convert_bad_input_exit_2_and_no_output(tmp_path):
    out = tmp_path / "never.jsonl"
    proc = run("data", "convert", example_path("bad.jsonl"), out, "--to", "trl-preference",
               "--json", check_code=2)
    payload = one_json(proc)
    assert "bad.jsonl:2" in payload["error"] and "rejected" in payload["error"]
    assert not out.exists()
    proc = run("data", "convert", example_path("pairs.jsonl"), out, "--to", "nope", "--json")
    assert proc.returncode == 2 and "unknown format" in one_json(proc)["error"]


def test_stats_json_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(["sort 1 2 3", "add 4 5"],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    stats = one_json(run("data", "stats", example_path("alpaca_eval.json"), "--tokenizer",
                         tmp_path / "tokenizer.json", "--json", check_code=0))
    assert stats["kinds"] == {"comparison": 5}
    assert stats["outcomes"]["pairwise"]["tie_rate"] == pytest.approx(0.2)
    assert stats["lengths"]["tokens"]["prompt"]["count"] == 5
    # "sort: 6 2 4" is 4 whitespace-separated words
    assert stats["lengths"]["tokens"]["prompt"]["min"] >= 2


def test_validate_and_formats_and_exit_codes(tmp_path):
    ok = one_json(run("data", "validate", example_path("feedback.jsonl"), "--json", check_code=0))
    assert ok["ok"] and ok["valid"] == 8 and len(ok["kinds"]) == 6
    bad = run("data", "validate", example_path("bad.jsonl"), check_code=2)
    assert "bad.jsonl:2" in bad.stderr and "[identical_responses]" in bad.stderr
    formats = one_json(run("data", "formats", "--json", check_code=0))
    assert len(formats["formats"]) == 10
    assert run("data", "validate", tmp_path / "missing.jsonl").returncode == 2


@pytest.mark.slow
def test_demo_runs_and_reports(tmp_path):
    summary = one_json(run("demo", "--workdir", tmp_path, "--json", check_code=0))
    assert all(f["ok"] for f in summary["files"].values())
    assert summary["validation"] == {"valid": 2, "invalid": 4, "errors": {
        "identical_responses": 1, "malformed_json": 1, "empty_field": 1, "duplicate_record": 1}}
    assert summary["store"]["second_import"] == 0
    assert summary["store"]["exported"] == summary["store"]["first_import"]
    # step 6: a campaign labelled by simulated people through the app's rules: every item gets
    # its 3 labels, and the admin statistics find the one who favours the first-shown answer
    campaign = summary["campaign"]
    assert campaign["labels"] == 180
    rates = {row["name"]: row["first_shown_rate"] for row in campaign["annotators"]}
    biased = rates.pop("first-pick")
    assert biased > 0.75 and biased > max(rates.values()) + 0.25, rates
    assert campaign["agreement"]["fleiss_raters_per_item"] == 3
    # step 8: every direct loss aligned the tiny policy; held-out pairs ranked by implicit reward
    align = summary["alignment"]
    assert set(align) == {"dpo", "ipo", "simpo", "dpo+0.2*sft", "lipo", "listwise_dpo", "kto"}
    for loss in ("dpo", "ipo", "simpo", "dpo+0.2*sft"):
        assert align[loss]["eval_accuracy"] >= 0.85, (loss, align[loss])
    # step 9: the reward model reaches 90% of the noise ceiling on new pairs
    rm = summary["reward_model"]
    assert rm["accuracy"] >= 0.9 * rm["noise_ceiling"]
    # step 10: the lab loop; DPO and best-of-N beat the SFT policy on gold win rate
    lab = summary["lab"]
    for method in ("dpo", "grpo", "ppo", "rloo", "best_of_8"):
        assert lab[method]["win_rate_ci"][0] > 0.5, (method, lab[method])
    assert (tmp_path / "lab" / "report.html").stat().st_size > 10_000
    # step 11: DAPO on the sort_exact checker raises held-out accuracy over SFT (paired 95% CI)
    rlvr = summary["rlvr"]
    assert set(rlvr) == {"sft", "dapo"}
    assert rlvr["dapo"]["accuracy_gain_ci"][0] > 0, rlvr
    assert rlvr["dapo"]["accuracy"] == pytest.approx(
        rlvr["sft"]["accuracy"] + rlvr["dapo"]["accuracy_gain"], abs=2e-4)


def test_data_commands_do_not_load_torch():
    """Command groups load on first use: `prefkit data ...` starts without torch (the training
    commands build their flags from config classes that import it)."""
    code = ("import sys; from prefkit.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['data', 'formats', '--json']); "
            "print(r.exit_code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["0", "False"], proc.stderr


@pytest.mark.slow
def test_ctrl_c_in_training_prints_the_resume_command(tmp_path):
    """A real SIGINT to `prefkit train preference`: exit 130, the step it reached, the last
    checkpoint and a command that resumes the run."""
    import os
    import shlex
    import signal
    import time

    model = tmp_path / "my-model"
    run("models", "init", model, check_code=0)
    out = tmp_path / "run"
    args = ["train", "preference", "--model", str(model), "--data",
            str(example_path("pairs.jsonl")), "--output-dir", str(out), "--max-steps", "100000",
            "--set", "save_steps=2", "--set", "reference_cache=none", "--set", "logging_steps=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    # a shell running the tests in the background starts them with SIGINT ignored, and a
    # child inherits that (Python then never raises KeyboardInterrupt): Ctrl-C as a terminal
    # delivers it needs the default disposition
    proc = subprocess.Popen([*PREFKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    from prefkit.train.checkpoint import list_checkpoints

    # wait for a complete checkpoint (any: older ones are pruned as training goes on)
    deadline = time.monotonic() + 120
    while not list_checkpoints(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list_checkpoints(out), "no checkpoint within 120 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    text = " ".join(err.split())
    assert "interrupted after step" in text and "last checkpoint:" in text
    command = shlex.split(err.split("Resume with:")[1].strip().splitlines()[0])
    assert command[0] == "prefkit" and command[-2:] == ["--resume-from", "latest"]
    last = int(text.split("last checkpoint: ")[1].split("checkpoint-")[1].split(".")[0])
    command[command.index("--max-steps") + 1] = str(last + 2)  # finish soon
    resumed = subprocess.run([*PREFKIT, *command[1:], "--json"], capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert one_json(resumed)["steps"] == last + 2
