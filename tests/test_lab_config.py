"""Lab settings are checked when the config is built, before any work: a bad YAML file or a bad
value is exit 2 with a message naming the file (line, column) or the setting, the value and what
is expected."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import prefkit.lab.pipeline as pipeline
from prefkit.cli import app
from prefkit.lab.config import LabConfig, known_methods
from prefkit.train.config import ConfigError


@pytest.fixture
def no_work(monkeypatch):
    """``run_lab`` replaced by a recorder: a rejected config must never reach it."""
    calls: list = []
    monkeypatch.setattr(pipeline, "run_lab", lambda *a, **k: calls.append((a, k)) or {})
    return calls


def _run(*args: str):
    return CliRunner().invoke(app, ["lab", "run", *args])


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, no_work):
    path = tmp_path / "lab.yaml"
    path.write_text("task: sort\nn_prompts: 64\nmethods: [dpo, ipo\nk: 4\n")
    result = _run(str(path), "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error.startswith(f"{path}, line 4, column 2: invalid YAML")
    assert "Traceback" not in result.output and no_work == []
    # a tab where YAML wants spaces, and a file that is not there
    path.write_text("task: sort\n\tk: 4\n")
    error = json.loads(_run(str(path), "--json").stdout)["error"]
    assert error.startswith(f"{path}, line 2, column 1: invalid YAML")
    missing = _run(str(tmp_path / "nope.yaml"), "--json")
    assert missing.exit_code == 2
    assert "nope.yaml: cannot read" in json.loads(missing.stdout)["error"]
    path.write_text("- dpo\n- ipo\n")
    error = json.loads(_run(str(path), "--json").stdout)["error"]
    assert "expected a mapping of LabConfig settings" in error and "list" in error


@pytest.mark.parametrize(("setting", "expected"), [
    ("n_prompts=-5", "invalid LabConfig.n_prompts=-5: expected an integer >= 1"),
    ("k=1", "invalid LabConfig.k=1: expected an integer >= 2"),
    ("n_eval=1", "invalid LabConfig.n_eval=1: expected an integer >= 2"),
    ("beta=nan", "invalid LabConfig.beta=nan: expected a finite number > 0"),
    ("learning_rate=-1e-5", "invalid LabConfig.learning_rate=-1e-05: expected a finite number > 0"),
    ("temperature=inf", "invalid LabConfig.temperature=inf: expected a finite number > 0"),
    ("temperature=0", "invalid LabConfig.temperature=0.0: expected a finite number > 0"),
    ("best_of_n=0", "invalid LabConfig.best_of_n=0: expected an integer >= 1"),
    ("rl_generations=1", "invalid LabConfig.rl_generations=1: expected an integer >= 2"),
    ("overopt_ns=0,4", "invalid LabConfig.overopt_ns=[0, 4]: expected a list of integers >= 1"),
    ("task=chess", "invalid LabConfig.task='chess': expected one of sort, review, attributes"),
    ("seed=-1", "invalid LabConfig.seed=-1: expected an integer >= 0"),
    ("methods=dpo,dpo", "invalid LabConfig.methods=['dpo', 'dpo']: 'dpo' is listed twice"),
])
def test_bad_settings_are_rejected_before_any_work(setting, expected, no_work):
    result = _run("--set", setting, "--json")
    assert result.exit_code == 2, result.output
    assert expected in json.loads(result.stdout)["error"]
    assert no_work == []


def test_unknown_method_lists_the_known_ones(no_work):
    result = _run("--set", "methods=dpo,grpoo", "--json")
    assert result.exit_code == 2 and no_work == []
    error = json.loads(result.stdout)["error"]
    assert "invalid LabConfig.methods: unknown method 'grpoo'" in error
    for name in ("dpo", "kto", "lipo", "raft", "grpo", "ppo", "rloo", "online_dpo", "rlaif"):
        assert name in error.split("known methods:")[1]
    # a reward-model loss is not a way to align a policy
    error = json.loads(_run("--set", "methods=bt", "--json").stdout)["error"]
    assert "'bt' is a reward-model loss" in error


def test_the_file_or_the_overrides_are_named(tmp_path, no_work):
    path = tmp_path / "lab.yaml"
    path.write_text("k: 1\n")
    error = json.loads(_run(str(path), "--json").stdout)["error"]
    assert error.startswith(f"{path}: invalid LabConfig.k=1")
    path.write_text("k: 4\n")
    error = json.loads(_run(str(path), "--set", "k=0", "--json").stdout)["error"]
    assert error.startswith("--set: invalid LabConfig.k=0")
    assert no_work == []


def test_python_api_checks_too():
    with pytest.raises(ConfigError, match=r"n_prompts=0: expected an integer >= 1"):
        LabConfig(n_prompts=0)
    with pytest.raises(ConfigError, match=r"curve_prompts=True: expected an integer >= 1"):
        LabConfig(curve_prompts=True)
    assert LabConfig().methods[0] == "dpo"  # the defaults are valid
    known = known_methods()
    assert {"dpo", "raft", "ppo", "online_raft"} <= set(known) and "bt" not in known
    # combined and parametrised losses are methods too
    assert LabConfig(methods=["dpo+0.2*sft", "ipo(beta=0.5)"]).methods == ["dpo+0.2*sft",
                                                                         "ipo(beta=0.5)"]


def test_a_workdir_that_cannot_be_a_folder(tmp_path, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for folder, reason in ((blocker, "File exists"), (blocker / "sub", "Not a directory")):
        res = _run("--workdir", str(folder), "--json")
        assert res.exit_code == 2 and "Traceback" not in res.output
        error = json.loads(res.stdout)["error"]
        assert error == (f"invalid LabConfig.workdir={str(folder)!r}: cannot create or write "
                         f"this folder ({reason})")
    res = _run("--workdir", str(tmp_path / "w"), "--set", f"cache_dir={blocker}", "--json")
    assert res.exit_code == 2 and "LabConfig.cache_dir" in json.loads(res.stdout)["error"]
    assert no_work == []


@pytest.mark.parametrize(("method", "expected"), [
    ("ipo(beta=abc)", "invalid LabConfig.methods='ipo(beta=abc)': hyper-parameter beta='abc' of "
                      "'ipo': expected a number"),
    ("ipo(beta=-1)", "hyper-parameter beta=-1 of 'ipo': expected a finite number > 0"),
    ("dpo+0.2*sft(beta=1)", "'sft' has no hyper-parameter"),
    ("cdpo(label_smoothing=0.7)", "label_smoothing=0.7 of 'cdpo': expected a finite number in "
                                  "[0, 0.5)"),
    ("dpo+bt", "cannot combine losses of different kinds"),
    ("dpo+", "invalid loss spec 'dpo+'"),
])
def test_method_arguments_are_checked_like_train_preference_loss(method, expected, no_work):
    """The lab's methods go through the same check as `train preference --loss`
    (train/loss_spec.check_loss_spec): ipo(beta=abc) used to be accepted, and failed as a
    TypeError at the method's first training step."""
    with pytest.raises(ConfigError) as exc:
        LabConfig(methods=["dpo", method])
    assert expected in str(exc.value)
    result = _run("--set", f"methods={method}", "--json")
    assert result.exit_code == 2 and no_work == []
    assert expected in json.loads(result.stdout)["error"]
    # an unknown name inside a combination is an unknown method
    with pytest.raises(ConfigError, match=r"unknown method 'dpo\+grpoo' \(no loss named "
                       r"'grpoo'\); known methods: .*\bgrpo\b"):
        LabConfig(methods=["dpo+grpoo"])
