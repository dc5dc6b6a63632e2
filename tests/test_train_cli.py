"""The training commands as a user meets them: a starter model from `prefkit models init`, one
run per output folder (no lost or mixed-up checkpoints), settings checked before any model
loads, Ctrl-C that says how to resume, flags defined once by the config fields, LoRA policies
that load from anywhere."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex

import pytest
import torch
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.demo import example_path

PAIRS = str(example_path("pairs.jsonl"))


@pytest.fixture(autouse=True)
def _quiet_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    """`prefkit models init` on the bundled examples (the README tour's ./my-model)."""
    folder = tmp_path_factory.mktemp("starter") / "my-model"
    result = CliRunner().invoke(app, ["models", "init", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    return folder, json.loads(result.stdout)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def train(model, out, *extra: str):
    return invoke("train", "preference", "--model", model, "--data", PAIRS, "--output-dir", out,
                  "--set", "reference_cache=none", "--set", "progress=false", *extra, "--json")


def error(result) -> str:
    return json.loads(result.stdout.strip().splitlines()[-1])["error"]


# ------------------------------------------------------------------ item 11: a model to start


def test_models_init_makes_a_model_every_command_loads(starter, tmp_path):
    from prefkit.models.load import load_model

    folder, info = starter
    assert info["size"] == "tiny" and info["layers"] == 2 and info["hidden_size"] == 64
    model, tokenizer = load_model(str(folder))
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == info["vocab_size"]
    assert info["tokenizer_data"] == ["bundled examples"] and info["tokenizer_texts"] > 100
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "add: 2 3"}],
                                         tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>\nadd: 2 3<|end|>\n<|assistant|>\n"
    # the tokenizer is trained on --data when given; an existing model is not overwritten
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"prompt": "zebra zebra zebra", "chosen": "zebra",
                                "rejected": "yak"}) + "\n")
    own = invoke("models", "init", tmp_path / "own", "--data", data, "--json")
    assert own.exit_code == 0, own.output
    assert json.loads(own.stdout)["tokenizer_texts"] == 3
    again = invoke("models", "init", tmp_path / "own", "--json")
    assert again.exit_code == 2 and "--overwrite" in error(again)
    bad = invoke("models", "init", tmp_path / "x", "--size", "huge", "--json")
    assert bad.exit_code == 2 and "tiny, small" in error(bad)


def test_readme_tour_runs_on_the_starter_model(starter, tmp_path, monkeypatch):
    """The README tour's lines about ./my-model, as written (in a fresh working folder)."""
    folder, _ = starter
    monkeypatch.chdir(tmp_path)
    os.symlink(folder, tmp_path / "my-model")
    e = str(example_path())
    pref = invoke("train", "preference", "--model", "./my-model", "--data", f"{e}/pairs.jsonl",
                  "--loss", "dpo", "--max-steps", "4", "--set", "reference_cache=none",
                  "--json")
    assert pref.exit_code == 0, pref.output
    assert json.loads(pref.stdout)["steps"] == 4
    rm = invoke("rm", "train", "--model", "./my-model", "--data", f"{e}/pairs.jsonl",
                "--objective", "bt", "--max-steps", "4", "--save-model", "rm/", "--json")
    assert rm.exit_code == 0, rm.output  # its own default folder: runs/reward
    assert (tmp_path / "runs" / "preference" / "checkpoint-4").is_dir()
    assert (tmp_path / "runs" / "reward" / "checkpoint-4").is_dir()
    ev = invoke("rm", "eval", "rm/", f"{e}/rewardbench.jsonl", "--json")
    assert ev.exit_code == 0, ev.output


def test_top_level_help_says_train_has_online_rl():
    result = invoke("--help")
    assert result.exit_code == 0
    line = next(ln for ln in result.stdout.splitlines() if " train " in f" {ln} ")
    assert "online RL" in line and "models" in result.stdout


# ------------------------------------------------------------------ item 1: one run per folder


def test_new_run_in_a_used_folder_is_refused_then_overwritten(starter, tmp_path):
    """The issue's sequence: an older run in the folder, a new run with another loss there
    (used to succeed while its checkpoints were pruned at once), then `--resume-from latest`
    (used to load the other run: 'trained 60 steps with simpo')."""
    model, out = str(starter[0]), tmp_path / "runs" / "x"
    old = train(model, out, "--loss", "dpo", "--max-steps", "6", "--set", "save_steps=2")
    assert old.exit_code == 0, old.output
    new = train(model, out, "--loss", "simpo", "--max-steps", "2", "--set", "save_steps=1")
    assert new.exit_code == 2
    message = error(new)
    assert str(out) in message and "loss: 'dpo' there, 'simpo' now" in message
    assert "--overwrite" in message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4",
                                                                 "checkpoint-6"]
    resumed = train(model, out, "--loss", "simpo", "--max-steps", "2", "--resume-from",
                    "latest")
    assert resumed.exit_code == 2 and "loss: 'dpo' there, 'simpo' now" in error(resumed)
    (out / "my_notes.txt").write_text("keep me")
    over = train(model, out, "--loss", "simpo", "--max-steps", "2", "--set", "save_steps=1",
                 "--overwrite")
    assert over.exit_code == 0, over.output
    assert json.loads(over.stdout)["loss"] == "simpo"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert json.loads((out / "run_config.json").read_text())["config"]["loss"] == "simpo"


def test_resume_with_other_settings_names_each_field(starter, tmp_path):
    """A resume with another loss, batch size and learning rate used to be accepted silently
    (the new learning rate ignored)."""
    model, out = str(starter[0]), tmp_path / "run"
    first = train(model, out, "--max-steps", "2", "--batch-size", "2", "--learning-rate", "1e-3")
    assert first.exit_code == 0, first.output
    bad = train(model, out, "--max-steps", "4", "--resume-from", "latest", "--loss", "ipo",
                "--batch-size", "4", "--learning-rate", "1e-2")
    assert bad.exit_code == 2
    message = error(bad)
    for diff in ("loss: 'dpo' there, 'ipo' now", "batch_size: 2 there, 4 now",
                 "learning_rate: 0.001 there, 0.01 now"):
        assert diff in message
    more = train(model, out, "--max-steps", "4", "--batch-size", "2", "--learning-rate", "1e-3",
                 "--resume-from", "latest", "--set", "logging_steps=1")
    assert more.exit_code == 0, more.output
    assert json.loads(more.stdout)["steps"] == 4


def test_reward_and_online_training_share_the_guard(starter, tmp_path):
    model, out = str(starter[0]), tmp_path / "run"
    assert train(model, out, "--max-steps", "1").exit_code == 0
    rm = invoke("rm", "train", "--model", model, "--data", PAIRS, "--output-dir", out,
                "--max-steps", "1", "--json")
    assert rm.exit_code == 2
    assert "config_class: PreferenceConfig there, RewardConfig now" in error(rm)
    online = ["train", "online", "--model", model, "--prompts", "lab:sort:8", "--reward",
              "gold:sort", "--iterations", "2", "--prompts-per-iteration", "4",
              "--set", "max_new_tokens=4", "--set", "save_steps=1", "--set", "progress=false",
              "--output-dir", tmp_path / "online", "--json"]
    first = invoke(*online, "--algo", "rloo")
    assert first.exit_code == 0, first.output
    # the default generation backend 'auto' decodes eagerly a run this short: 2 iterations x
    # 1 generate call (4 prompts x 4 samples) x 4 tokens
    assert json.loads(first.stdout)["generation"] == {
        "backend": "prefkit", "why": "auto: 8 decode steps planned; compiling pays after ~10,000"}
    other = invoke(*online, "--algo", "grpo")
    assert other.exit_code == 2 and "algo: 'rloo' there, 'grpo' now" in error(other)
    resumed = invoke(*online, "--algo", "rloo", "--resume-from", "latest", "--learning-rate",
                     "1e-3")
    assert resumed.exit_code == 2 and "learning_rate:" in error(resumed)


# ------------------------------------------------------------------ item 8: checked up front


@pytest.mark.parametrize(("args", "expected"), [
    (["--loss", "ipo(beta=abc)"], "beta='abc' of 'ipo': expected a number"),
    (["--loss", "dpo(betta=0.1)"], "no hyper-parameter(s) ['betta']"),
    (["--loss", "kto(desirable_weight=-1)"], "desirable_weight=-1 of 'kto': expected a finite"),
    (["--beta", "nan"], "PreferenceConfig.beta=nan: expected a finite number > 0"),
    (["--beta", "-0.1"], "PreferenceConfig.beta=-0.1: expected a finite number > 0"),
    (["--learning-rate", "-1e-5"], "learning_rate=-1e-05: expected a finite number >= 0"),
    (["--learning-rate", "inf"], "learning_rate=inf: expected a finite number >= 0"),
    (["--set", "warmup_ratio=1.5"], "warmup_ratio=1.5: expected a finite number in [0, 1)"),
    (["--set", "dtype=float16"], "dtype='float16': expected one of float32, bfloat16"),
])
def test_bad_settings_are_refused_before_the_model_loads(starter, tmp_path, monkeypatch, args,
                                                         expected):
    import prefkit.models.load as load

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(load, "load_model", no_loading)
    result = train(str(starter[0]), tmp_path / "run", "--max-steps", "1", *args)
    assert result.exit_code == 2, result.output
    assert expected in error(result)


def test_reward_and_online_configs_are_checked_too(starter, tmp_path):
    rm = invoke("rm", "train", "--model", starter[0], "--data", PAIRS, "--objective",
                "bt(label_smoothing=0.7)", "--json")
    assert rm.exit_code == 2 and "label_smoothing=0.7 of 'bt'" in error(rm)
    rm = invoke("rm", "train", "--model", starter[0], "--data", PAIRS, "--set",
                "adam_beta2=1.5", "--json")
    assert rm.exit_code == 2 and "RewardConfig.adam_beta2=1.5" in error(rm)
    online = invoke("train", "online", "--model", starter[0], "--prompts", "lab:sort:8",
                    "--reward", "gold:sort", "--learning-rate", "nan", "--json")
    assert online.exit_code == 2 and "OnlineConfig.learning_rate=nan" in error(online)


# ------------------------------------------------------------------ item 11: Ctrl-C


def _interrupt_at(monkeypatch, step: int) -> None:
    from prefkit.train import loop

    after = loop._Loop._after_step

    def after_step(self, lr, bar):
        stop = after(self, lr, bar)
        if self.step == step:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr(loop._Loop, "_after_step", after_step)


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(starter, tmp_path, monkeypatch):
    model, out = str(starter[0]), tmp_path / "run"
    _interrupt_at(monkeypatch, 3)
    stopped = train(model, out, "--max-steps", "6", "--set", "save_steps=2", "--overwrite")
    assert stopped.exit_code == 130
    info = json.loads(stopped.stdout)
    assert info["interrupted"] and info["step"] == 3 and info["total_steps"] == 6
    assert info["checkpoint"] == str(out / "checkpoint-2")
    command = shlex.split(info["resume_command"])
    assert command[:3] == ["prefkit", "train", "preference"]
    assert command[-2:] == ["--resume-from", "latest"] and "--max-steps" in command
    assert "--overwrite" not in command  # it would delete the checkpoint to resume
    monkeypatch.undo()
    resumed = invoke(*command[1:])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["steps"] == 6


def test_ctrl_c_before_any_checkpoint_gives_the_command_to_start_over(starter, tmp_path,
                                                                      monkeypatch):
    model, out = str(starter[0]), tmp_path / "run"
    _interrupt_at(monkeypatch, 1)
    stopped = invoke("rm", "train", "--model", model, "--data", PAIRS, "--output-dir", out,
                     "--max-steps", "4", "--lora")
    assert stopped.exit_code == 130
    assert "interrupted after step 1 of 4" in stopped.output
    assert "no checkpoint was saved yet" in stopped.output
    command = stopped.output.split("starts over with:")[1].split()
    assert command[:3] == ["prefkit", "rm", "train"] and "--lora" in command
    assert "--resume-from" not in command
    monkeypatch.undo()
    again = invoke(*command[1:])  # the same run again: allowed (nothing resumable to lose)
    assert again.exit_code == 0, again.output


# ------------------------------------------------------------------ item 12: flags defined once


@pytest.mark.parametrize(("group", "command", "config_path"), [
    ("train", "preference", "prefkit.train.preference:PreferenceConfig"),
    ("train", "online", "prefkit.train.online:OnlineConfig"),
    ("rm", "train", "prefkit.train.reward:RewardConfig"),
])
def test_every_training_flag_is_its_config_field(group, command, config_path):
    import importlib

    import typer

    module, name = config_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    group_app = importlib.import_module(f"prefkit.commands.{group}").app
    cmd = typer.main.get_group(group_app).commands[command]
    options = [p for p in cmd.params if p.param_type_name == "option"]
    flags = [p for p in options if p.name in fields]
    assert len(flags) >= 11
    for param in flags:
        assert param.help == fields[param.name].metadata["help"], param.name
        assert param.opts[0] == "--" + param.name.replace("_", "-")
        assert param.default is None  # not given: the YAML file or the field default applies
    others = [p.name for p in options if p.name not in fields]
    assert sorted(others) == ["as_json", "config", "save_model", "set_"]
    assert all(p.help for p in options)
    text = invoke(group, command, "--help").stdout
    for param in flags:
        assert param.opts[0] in text


def test_flags_parse_types_and_booleans(starter, tmp_path):
    model = str(starter[0])
    lora = train(model, tmp_path / "a", "--max-steps", "1", "--lora", "--beta", "0.5")
    assert lora.exit_code == 0, lora.output
    config = json.loads((tmp_path / "a" / "run_config.json").read_text())["config"]
    assert config["lora"] is True and config["beta"] == 0.5 and config["max_steps"] == 1
    off = train(model, tmp_path / "b", "--max-steps", "1", "--no-lora")
    assert off.exit_code == 0
    assert json.loads((tmp_path / "b" / "run_config.json").read_text())["config"]["lora"] is False
    wrong = train(model, tmp_path / "c", "--max-steps", "ten")
    assert wrong.exit_code == 2 and "Invalid value for '--max-steps'" in wrong.output


# ------------------------------------------------------------------ item 10: LoRA policies


def test_lora_policy_loads_from_another_directory(starter, tmp_path, monkeypatch):
    """The saved adapters recorded the base model as the relative path that was typed, so the
    policy loaded only from the folder it was trained in."""
    from prefkit.models.load import load_model

    work = tmp_path / "work"
    work.mkdir()
    os.symlink(starter[0], work / "my-model")
    monkeypatch.chdir(work)
    result = train("my-model", "runs/lora", "--max-steps", "3", "--lora", "--learning-rate",
                   "1e-2", "--save-model", "policy")
    assert result.exit_code == 0, result.output
    adapter = json.loads((work / "policy" / "adapter_config.json").read_text())
    assert os.path.isabs(adapter["base_model_name_or_path"])
    here, tok = load_model("policy")
    ids = torch.tensor([tok("sort: 3 1 2")["input_ids"]])
    expected = here(ids).logits
    monkeypatch.chdir(tmp_path)
    moved, _ = load_model(str(work / "policy"))
    assert torch.allclose(moved(ids).logits, expected, atol=1e-6)
    base, _ = load_model(str(starter[0]))
    assert not torch.allclose(base(ids).logits, expected, atol=1e-4)  # the adapters are on


def test_lora_policy_on_a_model_file_saves_its_base(starter, tmp_path, monkeypatch):
    """A base built from a .json model file exists only in memory: it is saved beside the
    adapters (it used to be recorded as None: unloadable)."""
    from prefkit.models.load import load_model

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({"tokenizer": str(starter[0]), "hidden_size": 32,
                                "num_layers": 1, "num_heads": 2, "intermediate_size": 64}))
    result = train(str(spec), tmp_path / "run", "--max-steps", "2", "--lora", "--learning-rate",
                   "1e-2", "--save-model", tmp_path / "policy")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "policy" / "base_model" / "config.json").is_file()
    monkeypatch.chdir(starter[0].parent)
    policy, tok = load_model(str(tmp_path / "policy"))
    ids = torch.tensor([tok("add: 2 3")["input_ids"]])
    assert torch.isfinite(policy(ids).logits).all()


# ------------------------------------------------------------------ item 2: truncation counted


@pytest.mark.parametrize("command", [("train", "preference"), ("rm", "train")])
def test_truncated_prompts_are_counted_in_the_result_and_the_summary(starter, tmp_path,
                                                                     command):
    args = [*command, "--model", starter[0], "--data", PAIRS, "--max-steps", "1",
            "--set", "max_prompt_length=2", "--set", "progress=false", "--set", "save_steps=0"]
    if command[0] == "train":
        args += ["--set", "reference_cache=none"]
    as_json = invoke(*args, "--output-dir", tmp_path / "a", "--json")
    assert as_json.exit_code == 0, as_json.output
    truncation = json.loads(as_json.stdout)["truncation"]
    assert truncation["prompts_truncated"] == truncation["kept"] > 0
    assert truncation["responses_truncated"] == 0
    human = invoke(*args, "--output-dir", tmp_path / "b")
    assert human.exit_code == 0, human.output
    assert (f"truncation: {truncation['kept']} prompts kept their last max_prompt_length "
            "tokens") in human.stderr


def test_online_reads_the_prompts_before_loading_the_model(starter, tmp_path, monkeypatch):
    import prefkit.train.online as online

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the prompts were read")

    monkeypatch.setattr(online, "resolve_model", no_loading)
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    result = invoke("train", "online", "--model", starter[0], "--prompts", bad,
                    "--reward", "gold:sort", "--output-dir", tmp_path / "run", "--json")
    assert result.exit_code == 2, result.output
    assert str(bad) in error(result) and "2" in error(result)
