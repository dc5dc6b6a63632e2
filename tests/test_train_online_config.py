"""OnlineConfig is checked like every training config (train/config.py's field metadata): each
bad value is exit 2 naming the field, the value and what is expected, before any model loads;
the fields a resume may change are the ones that leave the maths alone."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.train.config import ConfigError, identity_fields
from prefkit.train.online import OnlineConfig

BAD = [
    ("prompts_per_iteration=0", "prompts_per_iteration=0: expected a finite number >= 1"),
    ("num_generations=0", "num_generations=0: expected a finite number >= 1"),
    ("ppo_epochs=0", "ppo_epochs=0: expected a finite number >= 1"),
    ("num_minibatches=-1", "num_minibatches=-1: expected a finite number >= 1"),
    ("max_new_tokens=0", "max_new_tokens=0: expected a finite number >= 1"),
    ("max_prompt_length=0", "max_prompt_length=0: expected a finite number >= 1"),
    ("sampling_batch_size=0", "sampling_batch_size=0: expected a finite number >= 1"),
    ("kl_horizon=0", "kl_horizon=0: expected a finite number >= 1"),
    ("raft_keep=0", "raft_keep=0: expected a finite number >= 1"),
    ("lora_r=0", "lora_r=0: expected a finite number >= 1"),
    ("chunk_size=0", "chunk_size=0: expected a finite number >= 1"),
    ("top_k=0", "top_k=0: expected a finite number >= 1"),
    ("iterations=0", "iterations=0: expected a finite number >= 1"),
    ("temperature=0", "temperature=0.0: expected a finite number > 0"),
    ("target_kl=-1", "target_kl=-1.0: expected a finite number > 0"),
    ("max_kl=0", "max_kl=0.0: expected a finite number > 0"),
    ("clip_eps=0", "clip_eps=0.0: expected a finite number > 0"),
    ("clip_eps_high=-0.2", "clip_eps_high=-0.2: expected a finite number > 0"),
    ("value_clip=0", "value_clip=0.0: expected a finite number > 0"),
    ("reward_clip=inf", "reward_clip=inf: expected a finite number > 0"),
    ("beta=0", "beta=0.0: expected a finite number > 0"),
    ("lora_alpha=0", "lora_alpha=0: expected a finite number > 0"),
    ("kl_coef=-0.1", "kl_coef=-0.1: expected a finite number >= 0"),
    ("vf_coef=nan", "vf_coef=nan: expected a finite number >= 0"),
    ("top_p=0", "top_p=0.0: expected a finite number in (0, 1]"),
    ("top_p=1.5", "top_p=1.5: expected a finite number in (0, 1]"),
    ("gamma=1.01", "gamma=1.01: expected a finite number in [0, 1]"),
    ("lam=-0.5", "lam=-0.5: expected a finite number in [0, 1]"),
    ("length_penalty=inf", "length_penalty=inf: expected a finite number"),
    ("kl_estimator=k4", "kl_estimator='k4': expected one of auto, k1, k2, k3, abs"),
    ("kl_in=both", "kl_in='both': expected one of auto, reward, loss"),
    ("loss_aggregation=sum", "loss_aggregation='sum': expected one of auto, token_mean, "
                             "seq_mean_token_mean, seq_mean_token_sum_norm"),
    ("reward_normalization=z", "reward_normalization='z': expected one of none, batch, running"),
    ("dtype=float16", "dtype='float16': expected one of float32, bfloat16"),
    ("algo=sac", "algo='sac': expected one of ppo, reinforce, rloo, grpo, dr_grpo, remax, "
                 "online_dpo, online_ipo, raft"),
    ("dpo_loss=bt", "invalid OnlineConfig.dpo_loss='bt': 'bt' is a reward-model objective"),
    ("dpo_loss=lipo", "invalid OnlineConfig.dpo_loss='lipo': a listwise loss; online_dpo "
                      "train with: "),
    ("dpo_loss=ipo(beta=abc)", "hyper-parameter beta='abc' of 'ipo': expected a number"),
]


@pytest.mark.parametrize(("setting", "expected"), BAD)
def test_bad_values_exit_2_naming_field_value_and_expectation_before_any_model_loads(
        setting, expected, monkeypatch):
    import prefkit.models.load as load
    import prefkit.specs.models as spec_models
    import prefkit.train.online as online

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(online, "resolve_model", no_loading)
    monkeypatch.setattr(spec_models, "lab_model", no_loading)  # --model lab:sort
    monkeypatch.setattr(load, "load_model", no_loading)
    result = CliRunner().invoke(app, ["train", "online", "--model", "lab:sort", "--prompts",
                                      "lab:sort:8", "--reward", "gold:sort", "--set", setting,
                                      "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert expected in error and "OnlineConfig." in error


@pytest.mark.parametrize(("values", "expected"), [
    ({"temperature": 0.0}, "invalid OnlineConfig.temperature=0.0: expected a finite number > 0"),
    ({"top_k": 0}, "invalid OnlineConfig.top_k=0: expected a finite number >= 1"),
    ({"gamma": float("nan")}, "invalid OnlineConfig.gamma=nan: expected a finite number in "
                              "[0, 1]"),
    ({"algo": "sac"}, "invalid OnlineConfig.algo='sac': expected one of ppo,"),
    ({"dpo_loss": "bt"}, "invalid OnlineConfig.dpo_loss='bt'"),
])
def test_the_python_api_checks_the_same(values, expected):
    with pytest.raises(ConfigError) as exc:
        OnlineConfig(**values)
    assert str(exc.value).startswith(expected)


def test_the_new_flags_and_the_defaults():
    result = CliRunner().invoke(app, ["train", "online", "--help"], env={"COLUMNS": "250"})
    assert "--max-prompt-length" in result.stdout and "--max-new-tokens" in result.stdout
    cfg = OnlineConfig()
    assert cfg.output_dir == "runs/online"
    field = OnlineConfig.__dataclass_fields__["model"]
    assert "lab:TASK" in field.metadata["help"] and field.metadata["path"]
    assert OnlineConfig.__dataclass_fields__["prompts"].metadata["path"]
    # None means "off" and passes; the CLI's online-dpo is online_dpo
    assert OnlineConfig(top_k=None, top_p=None, max_kl=None, target_kl=None, value_clip=None,
                        reward_clip=None, clip_eps_high=None).top_k is None
    assert OnlineConfig(algo="online-dpo", dpo_loss="ipo(beta=0.5)").algo == "online_dpo"
    assert OnlineConfig(top_p=1.0, gamma=0.0, lam=1.0, kl_coef=0.0, temperature=0.7)


def test_a_resume_may_change_only_what_leaves_the_maths_alone():
    identity = set(identity_fields(OnlineConfig))
    for name in ("iterations", "max_kl", "sampling_batch_size", "chunk_size", "output_dir",
                 "max_steps", "save_steps", "logging_steps", "progress", "resume_from",
                 "keep_freed_memory"):
        assert name not in identity, name
    for name in ("model", "prompts", "reward", "algo", "prompts_per_iteration",
                 "num_generations", "max_new_tokens", "max_prompt_length", "temperature",
                 "top_k", "top_p", "stop", "kl_coef", "kl_estimator", "target_kl", "clip_eps",
                 "beta", "dpo_loss", "lora", "dtype", "learning_rate", "seed", "batch_size"):
        assert name in identity, name
