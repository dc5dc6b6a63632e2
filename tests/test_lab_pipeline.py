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
def test_evaluation_suite_in_the_loop(quick_run):
    """Win rates by the three judges, the gold-judged arena leaderboard, ranking accuracies,
    the reward model on held-out pairs and the annotators' agreement."""
    methods = quick_run["methods"]
    for name, m in methods.items():
        if name == "sft":
            assert m["win_rate_vs_sft_pool"] == m["win_rate_vs_sft_proxy_rm"] == 0.5
            continue
        lo, hi = m["win_rate_ci_pool"]
        assert lo <= m["win_rate_vs_sft_pool"] <= hi
        assert m["win_rate_vs_sft_proxy_rm"] > 0.5, name  # every method climbs the proxy
    board = {row["model"]: row for row in quick_run["leaderboard"]}
    assert set(board) == set(methods)
    assert board["sft"]["rating"] == 1000.0  # the anchor
    assert max(r["rank"] for r in board.values()) == board["sft"]["rank"]  # SFT is last
    for name in ("best_of_8", "grpo", "ppo", "lipo"):
        assert board[name]["ci_low"] > 1000.0, (name, board[name])
    # ranking accuracy of the SFT policy on gold-ordered held-out pairs, and the ideal policy's
    assert 0.5 < methods["sft"]["ranking_accuracy"] < quick_run["idealized_ranking_accuracy"]
    # every policy's own log-probs on the same pairs: its count = SFT's + fixed - broken
    n = quick_run["data"]["heldout_pairs"]
    sft_right = round(methods["sft"]["ranking_accuracy"] * n)
    for name, m in methods.items():
        if m["ranking_accuracy"] is None:
            assert name.startswith("best_of_")
            continue
        lo, hi = m["ranking_accuracy_ci"]
        assert m["ranking_pairs"] == n and lo < m["ranking_accuracy"] < hi
        fixed, broken = m["ranking_flips_vs_sft"]
        assert round(m["ranking_accuracy"] * n) == sft_right + fixed - broken, name
    rm = quick_run["reward_model"]["heldout"]
    assert rm["n"] > 50 and rm["accuracy"] > 0.65 and 0 <= rm["calibration"]["ece"] < 0.3
    agree = quick_run["annotators"]
    assert 0.7 < agree["pairwise_agreement"] < 1.0 and agree["gold_agreement"] > 0.85


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
def test_offline_methods_record_curves_over_training_steps(quick_run):
    curve = quick_run["training_curves"]["dpo"]
    assert [c["step"] for c in curve] == list(range(0, QUICK["steps"] + 1, 20))
    assert curve[0]["kl"] == 0.0  # step 0 is the SFT policy itself
    assert curve[-1]["kl"] > curve[0]["kl"]
    assert curve[-1]["gold_reward"] > curve[0]["gold_reward"]
    assert curve[-1]["proxy_reward"] > curve[0]["proxy_reward"]


@pytest.mark.slow
def test_every_online_method_beats_sft(tmp_path):
    """The rest of the online methods (quick config: grpo and ppo) against the proxy reward
    model, and RLAIF (online DPO judged by a majority jury of the lab's simulated LLM judges):
    gold win rate against SFT with a 95% CI above 50%."""
    methods = ["reinforce", "rloo", "dr_grpo", "remax", "online_dpo", "online_ipo", "online_raft",
               "rlaif"]
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
    assert again["leaderboard"] == quick_run["leaderboard"]


@pytest.mark.slow
def test_stages_are_cached_and_a_rerun_resumes(quick_run, tmp_path):
    """A rerun in the same workdir reuses every finished stage (the stage key covers every
    setting); dropping one method's cached result recomputes just that method."""
    from pathlib import Path

    from prefkit.lab.progress import LabProgress

    stage = Path(quick_run["stage"])
    assert Path(quick_run["feedback_store"]).exists()
    (stage / "methods" / "dpo.json").unlink()
    lines: list[str] = []
    again = run_lab(workdir=str(stage.parent.parent), progress=LabProgress(lines.append),
                    **QUICK)
    assert again["methods"] == quick_run["methods"]
    assert again["stage"] == quick_run["stage"]
    assert (stage / "methods" / "dpo.json").exists()
    # nothing but dpo was recomputed: every other cached stage came from the cache
    events = [line.split(" | ", 1)[1] for line in lines]
    n = len(QUICK["methods"]) + 1  # + best-of-8
    assert [e.split(":")[0] for e in events if e.endswith(": cached") or ": cached (" in e] == [
        "SFT base model", "annotator agreement", "reward model",
        "reward model on held-out pairs", "evaluation of the SFT policy",
        *(f"method {i}/{n} {m}" for i, m in enumerate([*QUICK["methods"], "best_of_8"], 1)
          if m != "dpo"), "over-optimization"]
    assert any(e.startswith(f"method 1/{n} dpo: done in") for e in events)


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


@pytest.mark.slow
def test_ratings_feedback_through_the_store(tmp_path):
    """feedback=ratings: the pool rates every distinct sample (gold + rating noise), the ratings
    go into the feedback store, pairs with a score gap come out of it and train the reward
    model the methods then use."""
    from prefkit.data.store import FeedbackStore

    run = run_lab(workdir=str(tmp_path), **{**QUICK, "feedback": "ratings", "methods": ["dpo"],
                                            "best_of_n": 4, "overopt_length_bias": 0.0})
    data = run["data"]
    assert data["feedback"] == "ratings" and data["pairs"] > 100
    assert data["labels_agreeing_with_gold"] > 0.7
    store = FeedbackStore(run["feedback_store"])
    try:
        assert store.count(kind="rating") == data["labels"] and store.count(kind="comparison") == 0
    finally:
        store.close()
    assert run["reward_model"]["heldout"]["accuracy"] > 0.6
    methods = run["methods"]
    assert methods["dpo"]["gold_reward"] > methods["sft"]["gold_reward"]
    # best-of-4 under this reward model raises the mean gold reward (0.587 -> 0.624 in a fresh
    # environment of 2026-12-05); its head-to-head win rate vs SFT (0.547, 95% CI 0.470-0.624
    # there) is not significant on the quick lab's evaluation prompts, so it is not asserted
    assert methods["best_of_4"]["gold_reward"] > methods["sft"]["gold_reward"]


def test_bad_lab_settings_are_bad_input():
    for setting, expected in (("feedback=bogus", "feedback"), ("methods=", "methods")):
        bad = CliRunner().invoke(app, ["lab", "run", "--set", setting, "--json"])
        assert bad.exit_code == 2 and expected in json.loads(bad.stdout)["error"], bad.output


@pytest.mark.slow
def test_cli_verifiable_task_with_online_methods(tmp_path):
    """`prefkit lab run --task arith` with DAPO, GSPO and REINFORCE++: trained on the checker,
    each method's held-out accuracy and paired gain over SFT in the JSON, per-iteration accuracy
    curves, and the report's accuracy figure; an unknown task is bad input (exit 2)."""
    from pathlib import Path

    algos = ["dapo", "gspo", "reinforce_pp"]
    args = ["lab", "run", "--task", "arith", "--workdir", str(tmp_path), "--json",
            "--set", f"methods={','.join(algos)}", "--set", "n_prompts=32", "--set", "n_eval=32",
            "--set", "rm_steps=3", "--set", "best_of_n=1", "--set", "overopt_length_bias=0",
            "--set", "rl_iterations=2", "--set", "rl_prompts_per_iteration=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["config"]["task"] == "arith" and set(out["methods"]) == {"sft", *algos}
    sft = out["methods"]["sft"]
    for algo in algos:
        m = out["methods"][algo]
        assert 0.0 <= m["accuracy"] <= m["pass@8"] <= 1.0 and m["eval_samples"] == 8
        assert m["accuracy_gain"] == pytest.approx(m["accuracy"] - sft["accuracy"], abs=2e-4)
        lo, hi = m["accuracy_gain_ci"]
        assert lo <= m["accuracy_gain"] <= hi
        curve = out["training_curves"][algo]
        assert [c["step"] for c in curve] == [0, 1]
        assert all(0.0 <= c["accuracy"] <= c["pass@4"] <= 1.0 for c in curve)
    page = Path(out["report"]).read_text()
    assert 'id="fig-accuracy"' in page and "accuracy gain vs SFT" in page
    bad = CliRunner().invoke(app, ["lab", "run", "--task", "bogus", "--json"])
    assert bad.exit_code == 2 and "LabConfig.task" in json.loads(bad.stdout)["error"]
