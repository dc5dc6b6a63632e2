"""The lab loop on its quick config: methods beat the SFT policy on gold win rate, runs are
reproducible, and the CLI prints one JSON object."""

import json

import pytest
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.lab.pipeline import QUICK, run_lab


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_lab(workdir=str(tmp_path_factory.mktemp("lab")), **QUICK)


@pytest.mark.slow
def test_aligned_methods_beat_sft_with_known_gold(quick_run):
    methods = quick_run["methods"]
    assert quick_run["data"]["pairs"] > 150
    assert quick_run["data"]["labels_agreeing_with_gold"] > 0.85  # a mildly noisy pool
    for name in ("dpo", "rpo", "kto", "lipo", "raft", "grpo", "ppo", "best_of_8"):
        m = methods[name]
        assert m["win_rate_ci"][0] > 0.5, (name, m)  # CI excludes 50%
        assert m["gold_reward"] > methods["sft"]["gold_reward"]
        assert m["kl_to_sft"] > 0


@pytest.mark.slow
def test_online_methods_record_gold_and_proxy_per_iteration(quick_run):
    for name in ("grpo", "ppo"):
        curve = quick_run["training_curves"][name]
        assert [c["step"] for c in curve] == list(range(QUICK["rl_iterations"]))
        assert curve[0]["kl"] == 0.0  # the first rollout comes from the reference itself
        half = len(curve) // 2
        early = sum(c["proxy_reward"] for c in curve[:half]) / half
        late = sum(c["proxy_reward"] for c in curve[half:]) / (len(curve) - half)
        assert late > early  # the policy climbs the proxy reward
        assert all(c["gold_reward"] is not None for c in curve)


@pytest.mark.slow
def test_every_online_method_beats_sft(tmp_path):
    """The rest of the online methods (quick config: grpo and ppo) against the proxy reward
    model: gold win rate against SFT with a 95% CI above 50%."""
    methods = ["reinforce", "rloo", "dr_grpo", "remax", "online_dpo", "online_raft"]
    run = run_lab(workdir=str(tmp_path), **{**QUICK, "methods": methods, "best_of_n": 1,
                                            "overopt_length_bias": 0.0})
    for name in methods:
        m = run["methods"][name]
        assert m["win_rate_ci"][0] > 0.5, (name, m)
        assert m["gold_reward"] > run["methods"]["sft"]["gold_reward"] + 0.03, (name, m)


@pytest.mark.slow
def test_overoptimization_with_a_length_biased_proxy(quick_run):
    """Best-of-n against a reward model trained on length-biased labels: the proxy reward keeps
    rising with n while the gold reward peaks inside the range and falls."""
    over = quick_run["overoptimization"]
    assert over["proxy_monotone"] and over["gold_interior"] and over["overoptimized"]
    ns = [c["n"] for c in over["curve"]]
    assert ns[0] < over["x_at_gold_max"] < ns[-1]
    assert over["curve"][-1]["gold_mean"] < over["gold_max"] - 0.05


@pytest.mark.slow
def test_same_seed_same_numbers(quick_run, tmp_path):
    again = run_lab(workdir=str(tmp_path), **QUICK)
    assert again["methods"] == quick_run["methods"]
    assert again["data"] == quick_run["data"]
    assert again["overoptimization"] == quick_run["overoptimization"]


@pytest.mark.slow
def test_cli_quick_json(tmp_path):
    result = CliRunner().invoke(app, ["lab", "run", "--quick", "--workdir", str(tmp_path),
                                      "--set", "methods=rpo", "--set", "best_of_n=1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["methods"]) == {"sft", "rpo"}
    bad = CliRunner().invoke(app, ["lab", "run", "--set", "no_such_field=1", "--json"])
    assert bad.exit_code == 2 and "no_such_field" in json.loads(bad.stdout)["error"]
