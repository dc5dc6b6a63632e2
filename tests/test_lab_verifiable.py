"""Lab tasks with verifiable answers (prefkit.lab.verifiable_tasks): the exact checkers on
hand-made answers, the prompts' reference answers against an independent computation, the
tokenizer's coverage, the difficulty knobs, and an SFT model that starts below the ceiling."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from prefkit.lab.tasks import TASKS, get_task
from prefkit.lab.verifiable_tasks import (
    VERIFIABLE_TASKS,
    ArithmeticTask,
    Check,
    CountTask,
    ExactSortTask,
    format_int,
    parse_int,
)
from prefkit.models.tokenizer import word_level_tokenizer

NAMES = ["arith", "sort_exact", "count"]

# --------------------------------------------------------------------------- checkers


def test_numbers_are_digit_words():
    assert format_int(-12) == "- 1 2" and format_int(0) == "0" and format_int(305) == "3 0 5"
    for v in range(-250, 251):
        assert parse_int(format_int(v)) == v
    assert parse_int("0 7") == 7  # values are compared, leading zeros allowed
    for text in ("", "-", "12", "1 x", "- - 1", "1 -", "+ 1"):
        assert parse_int(text) is None, text


def test_arith_checker_on_hand_made_answers():
    task, prompt = ArithmeticTask(steps=3), "calc: 3 + 4 * 2 - 5 ="
    assert task.solve(prompt) == 6 and task.reference(prompt) == "6"
    assert task.check(prompt, "6") == Check("ok", 6)
    assert task.check(prompt, " 0  6 ") == Check("ok", 6)
    assert task.check(prompt, "9") == Check("wrong", 9)  # left to right: (3 + 4) * 2 - 5
    assert task.check(prompt, "- 6") == Check("wrong", -6)
    for bad in ("", "6 ok", "six", "6 =", "- "):
        assert task.check(prompt, bad) == Check("unparsed", None), bad
    assert task.gold_reward(prompt, "6") == 1.0 and task.gold_reward(prompt, "7") == 0.0
    # value = the reward, status and detail as in the reward layer's CheckResult
    from prefkit.rewards.verifiable import CheckResult

    for response, value, detail in (("6", 1.0, "6"), ("7", 0.0, "7"), ("x", 0.0, "")):
        c = task.check(prompt, response)
        assert (c.value, c.detail) == (value, detail)
        assert CheckResult(c.value, c.status, c.detail).status == c.status
    assert task.gold_reward(prompt, "6 6") == 0.0  # "6 6" is 66
    neg = "calc: 1 - 8 * 2 ="
    assert task.reference(neg) == "- 1 5" and task.check(neg, "- 1 5").status == "ok"
    assert task.answer(neg, "- 1 5") == -15 and task.answer(neg, "oops") is None
    with pytest.raises(ValueError):
        task.check("sort: 1 2", "1")


def test_sort_and_count_checkers_on_hand_made_answers():
    task, prompt = ExactSortTask(), "sort: 7 3 19 1"
    assert task.reference(prompt) == "1 3 7 19"
    assert task.check(prompt, "1 3 7 19") == Check("ok", (1, 3, 7, 19))
    assert task.check(prompt, "1 3 19 7").status == "wrong"
    assert task.check(prompt, "1 3 7").status == "wrong"  # a number left out
    assert task.check(prompt, "1 3 7 19 19").status == "wrong"
    assert task.check(prompt, "1 3 7 20").status == "unparsed"  # 20 > max_value
    assert task.check(prompt, "1 3 7 19 ok").status == "unparsed"
    assert task.check(prompt, "").status == "unparsed"

    count, q = CountTask(), "count: b in a b a c b"
    assert count.reference(q) == "2" and count.check(q, "2") == Check("ok", 2)
    assert count.check(q, "3") == Check("wrong", 3)
    assert count.check(q, "b") == Check("unparsed", None)
    assert count.reference("count: c in a b a") == "0"
    assert count.gold_reward(q, "2") == 1.0 and count.gold_reward(q, "two") == 0.0


# ------------------------------------------------------------------ answers are right


def test_arith_references_equal_python_arithmetic():
    for steps in (1, 2, 4):
        task = ArithmeticTask(steps=steps, max_operand=9)
        rng = random.Random(steps)
        for _ in range(300):
            prompt = task.sample_prompt(rng)
            expression = prompt.removeprefix("calc: ").removesuffix(" =")
            assert re.fullmatch(rf"\d( [-+*] \d){{{steps}}}", expression), prompt
            value = eval(expression)  # noqa: S307 - digits and + - * only (checked above)
            assert task.reference(prompt) == format_int(value)
            assert task.check(prompt, " ".join(str(value))).status == "ok"  # "- 1 5"


def test_sort_and_count_references_are_right():
    sort = ExactSortTask(min_len=3, max_len=9, max_value=30)
    count = CountTask(min_len=2, max_len=15, n_symbols=5)
    rng = random.Random(7)
    for _ in range(300):
        prompt = sort.sample_prompt(rng)
        numbers = [int(w) for w in prompt.split()[1:]]
        assert 3 <= len(numbers) <= 9 and len(set(numbers)) == len(numbers)
        assert max(numbers) <= 30
        assert sort.reference(prompt).split() == [str(x) for x in sorted(numbers)]
        prompt = count.sample_prompt(rng)
        head, target, word, *items = prompt.split()
        assert (head, word) == ("count:", "in") and 2 <= len(items) <= 15
        assert set(items) | {target} <= set("abcde")
        assert int(count.reference(prompt).replace(" ", "")) == Counter(items)[target]


@pytest.mark.parametrize("name", NAMES)
def test_demonstrations_are_right_about_as_often_as_their_quality(name):
    task = get_task(name)
    rng = random.Random(11)
    prompts = [task.sample_prompt(rng) for _ in range(2000)]
    for q in (0.0, 0.5, 1.0):
        right = sum(task.check(p, task.demonstration(p, rng, q)).status == "ok" for p in prompts)
        share = right / len(prompts)
        # right with probability q, and a mistake is right only for arith's left-to-right
        # evaluation when it happens to agree with the precedence rule
        assert q - 0.04 <= share <= (q + (1 - q) * 0.5 if name == "arith" else q + 0.04)
        if q == 1.0:
            assert share == 1.0
    # every demonstration parses: the mistakes are wrong answers, never unparsed ones
    assert all(task.check(p, task.demonstration(p, rng, 0.0)).status != "unparsed"
               for p in prompts[:300])


# ------------------------------------------------------------- tokenizer and registry


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_covers_the_vocabulary(name):
    task = get_task(name)
    tokenizer = word_level_tokenizer(task.vocabulary(), add_bos=True)
    unk = tokenizer.unk_token_id
    rng = random.Random(5)
    for _ in range(200):
        prompt = task.sample_prompt(rng)
        for text in (prompt, task.reference(prompt), task.demonstration(prompt, rng, 0.0)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert unk not in ids and len(ids) == len(text.split()), text
            assert tokenizer.decode(ids) == " ".join(text.split())


def test_registered_with_settings():
    assert {n: TASKS[n] for n in NAMES} == VERIFIABLE_TASKS
    task = get_task("arith", steps=4, max_operand=5, ops="+*")
    assert isinstance(task, ArithmeticTask) and task.config() == {
        "steps": 4, "max_operand": 5, "ops": "+*"}
    prompt = task.sample_prompt(random.Random(0))
    assert len(prompt.split()) == 2 + 2 * 4 + 1 and "-" not in prompt.split()
    assert task.optimum(prompt) == 1.0
    for bad in (dict(steps=0), dict(max_operand=10), dict(ops="/")):
        with pytest.raises(ValueError):
            ArithmeticTask(**bad)
    with pytest.raises(ValueError):
        ExactSortTask(min_len=5, max_len=4)
    with pytest.raises(ValueError):
        CountTask(n_symbols=9)
    with pytest.raises(ValueError, match="quality"):
        task.demonstration(prompt, random.Random(0), 1.5)


# --------------------------------------------------------------------- SFT headroom


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arith", "count"])
def test_sft_model_starts_below_the_ceiling(tmp_path, name):
    """The default SFT base model (300 steps on quality-0.6 demonstrations; ~8 s each on an
    idle lab CPU) answers sampled (T = 1) prompts right far more often than the untrained
    model yet well below the ceiling, and pass@8 > pass@1 leaves RL a signal. Measured with
    the defaults: arith pass@1 0.055, pass@8 0.33; count 0.18, 0.75 (64 prompts x 8)."""
    from prefkit.evaluate.passk import passk_report
    from prefkit.lab.base_model import build_base_model
    from prefkit.models.generate import sample

    task = get_task(name)
    rng = random.Random(5)
    prompts = [task.sample_prompt(rng) for _ in range(64)]
    scores = {}
    for steps in (0, 300):
        model, tok, _ = build_base_model(task, tmp_path, steps=steps)
        completions = sample(model, tok, prompts, k=8, temperature=1.0, max_new_tokens=12,
                             seed=1)
        checks = [[task.check(p, c) for c in cs] for p, cs in zip(prompts, completions,
                                                                   strict=True)]
        correct = [[c.status == "ok" for c in cs] for cs in checks]
        scores[steps] = passk_report(correct, [1, 8], n_boot=100)["pass@k"]
        unparsed = sum(c.status == "unparsed" for cs in checks for c in cs) / (64 * 8)
        if steps:
            assert unparsed < 0.1  # the SFT model writes answers in the task's format
    base, sft = scores[0], scores[300]
    assert base[1]["mean"] < 0.02
    assert 0.02 < sft[1]["mean"] < 0.5
    assert sft[8]["mean"] > sft[1]["mean"] + 0.1


# ------------------------------------------------------------ online training monitor


def test_monitor_values_per_prompt_equal_brute_force():
    from types import SimpleNamespace

    from prefkit.evaluate.passk import maj_at_k, pass_at_k
    from prefkit.lab.verifiable_tasks import verifiable_monitor

    task = CountTask()
    prompts = ["count: a in a a b", "count: b in a b a", "count: c in c"]
    completions = [["2", "2", "1", "x"], ["1", "0", "1 0"], ["1"]]  # groups of any size
    out = verifiable_monitor(task, ks=(1, 2, 4))(SimpleNamespace(prompts=prompts,
                                                                 completions=completions))
    assert out["accuracy"] == [[0.5], [1 / 3], [1.0]]
    assert out["unparsed"] == [[0.25], [0.0], [0.0]]
    assert out["pass@2"] == [[pytest.approx(5 / 6)], [pytest.approx(2 / 3)], []]
    assert out["pass@4"] == [[1.0], [], []]
    assert out["maj@2"][0] == [pytest.approx(maj_at_k([2, 2, 1, None],
                                                      [True, True, False, False], 2))]
    assert out["maj@4"] == [[1.0], [], []]  # 2 votes for 2, one for 1
    assert out["pass@1"][1] == [pytest.approx(float(pass_at_k(3, 1, 1)))]


def test_monitor_in_online_training(tmp_path):
    """train_online with the monitor records the statistics every iteration; the accuracy
    (mean over prompts, equal groups) equals the mean reward when the reward is the checker."""
    from prefkit.lab.base_model import build_base_model
    from prefkit.lab.verifiable_tasks import verifiable_monitor
    from prefkit.rewards.sources import FunctionReward
    from prefkit.train.online import OnlineConfig, train_online

    task = CountTask(min_len=3, max_len=5)
    model, tok, _ = build_base_model(task, tmp_path / "base", hidden_size=32, num_layers=1,
                                     num_heads=2, intermediate_size=64, sft_examples=256,
                                     steps=20, batch_size=32, row_length=128)
    rng = random.Random(0)
    cfg = OnlineConfig(algo="grpo", output_dir=str(tmp_path / "run"), iterations=2,
                       prompts_per_iteration=8, num_generations=4, max_new_tokens=6,
                       learning_rate=1e-4, lr_scheduler="constant", batch_size=16,
                       save_steps=0, save_final=False, progress=False, logging_steps=1000)
    result = train_online(cfg, reward=FunctionReward(task.gold_reward), model=model,
                          tokenizer=tok, prompts=[task.sample_prompt(rng) for _ in range(16)],
                          monitor=verifiable_monitor(task, ks=(1, 4)))
    assert len(result.iterations) == 2
    for it in result.iterations:
        assert it["accuracy"] == pytest.approx(it["reward"], abs=1e-5)
        assert it["pass@1"] == pytest.approx(it["accuracy"], abs=1e-5)
        assert it["accuracy"] <= it["pass@4"] <= 1.0 and 0.0 <= it["maj@4"] <= it["pass@4"]
        assert 0.0 <= it["unparsed"] <= 1.0


# ------------------------------------------- the lab pipeline on a verifiable task


def test_accuracy_summary_equals_plain_counts():
    """accuracy = mean over prompts of c_i / k; the gain over SFT = mean of the per-prompt
    differences, its interval the bootstrap of those differences (paired: never wider here
    than the unpaired spread, and exactly 0 for the policy against itself); pass@k / maj@k of
    all k samples by hand."""
    from prefkit.evaluate.passk import bootstrap_interval
    from prefkit.lab.verifiable_eval import accuracy_summary, grade

    task = CountTask()
    prompts = ["count: a in a a b", "count: b in a b a", "count: c in c c c"]
    policy = grade(task, prompts, [["2", "1", "2", "1"], ["1", "1", "x", "1"],
                                   ["3", "3", "3", "2"]])
    sft = grade(task, prompts, [["1", "2", "1", "1"], ["0", "1", "0", "0"],
                                ["3", "2", "2", "x"]])
    assert policy.correct[0] == [True, False, True, False] and policy.unparsed[1][2]
    out = accuracy_summary(policy, sft, n_boot=500, seed=3)
    acc = [2 / 4, 3 / 4, 3 / 4]
    base = [1 / 4, 1 / 4, 1 / 4]
    assert out["accuracy"] == pytest.approx(sum(acc) / 3, abs=1e-4)
    assert out["accuracy_gain"] == pytest.approx((sum(acc) - sum(base)) / 3, abs=1e-4)
    lo, hi = bootstrap_interval([a - b for a, b in zip(acc, base, strict=True)], n_boot=500,
                                seed=3)
    assert out["accuracy_gain_ci"] == [pytest.approx(lo, abs=1e-4),
                                       pytest.approx(hi, abs=1e-4)]
    assert lo > 0  # every prompt improves: the paired interval excludes 0
    # pass@4: a prompt with any right answer; maj@4 of all four samples: the top vote
    assert out["pass@4"] == pytest.approx(1.0) and out["eval_samples"] == 4
    assert out["maj@4"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-4)  # "2" ties "1" at top
    assert out["unparsed"] == pytest.approx(1 / 12, abs=1e-4)
    same = accuracy_summary(sft, sft, n_boot=200)
    assert same["accuracy_gain"] == 0.0 and same["accuracy_gain_ci"] == [0.0, 0.0]


SMALL_BASE = dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                  sft_examples=1024, steps=100, batch_size=32, row_length=128)


@pytest.fixture
def small_base(monkeypatch):
    """run_lab with a small, quickly trained SFT model (~1 s; the lab's default takes ~8 s):
    on the count task it is right about 1 time in 5."""
    import functools

    import prefkit.lab.base_model as base_model

    monkeypatch.setattr(base_model, "build_base_model",
                        functools.partial(base_model.build_base_model, **SMALL_BASE))
    monkeypatch.setattr(base_model, "base_model_path",
                        functools.partial(base_model.base_model_path, **SMALL_BASE))


def _plain_maj(answers: list, right: list[bool]) -> float:
    """maj@n of all n samples: the share of right answers among the most voted ones."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    best = [a for a, n in votes.items() if n == top]
    return sum(right[answers.index(a)] for a in best) / len(best)


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_lab_on_a_verifiable_task_trains_on_the_checker(tmp_path, small_base, monkeypatch):
    """A 2-iteration GSPO run of the lab on the count task: trained on the checker (the
    training reward of every iteration IS its accuracy), the curve's accuracy / pass@4 / maj@4
    equal a recount with task.check on the very samples the monitor saw, the SFT accuracy
    equals a recount of fresh samples with the evaluation's seed, the gain is the difference,
    and the report shows the accuracy curves and the accuracy columns."""
    from math import comb

    import prefkit.lab.verifiable_tasks as vt
    from prefkit.lab.base_model import build_base_model
    from prefkit.lab.pipeline import run_lab
    from prefkit.models.generate import sample
    from prefkit.report.html import lab_report_html

    seen: list = []
    real_monitor = vt.verifiable_monitor

    def spy(task, ks=(1,)):
        inner = real_monitor(task, ks)

        def monitor(rollout):
            seen.append(([*rollout.prompts], [list(c) for c in rollout.completions]))
            return inner(rollout)

        return monitor

    monkeypatch.setattr(vt, "verifiable_monitor", spy)
    cfg = dict(task="count", workdir=str(tmp_path / "lab"), n_prompts=16, k=2, n_eval=24,
               rm_steps=2, best_of_n=1, overopt_length_bias=0.0, curve_every=0,
               methods=["gspo"], rl_iterations=2, rl_prompts_per_iteration=8,
               rl_generations=4, eval_samples=4, seed=3)
    out = run_lab(**cfg)
    task = get_task("count")
    curve = out["training_curves"]["gspo"]
    assert [p["step"] for p in curve] == [0, 1] and len(seen) == 2
    for point, (prompts, groups) in zip(curve, seen, strict=True):
        assert set(point) >= {"accuracy", "pass@4", "maj@4", "unparsed", "kl", "reward"}
        right = [[task.check(p, c).status == "ok" for c in cs]
                 for p, cs in zip(prompts, groups, strict=True)]
        accuracy = sum(sum(r) / len(r) for r in right) / len(right)
        assert point["accuracy"] == pytest.approx(accuracy, abs=1e-5)
        assert point["reward"] == pytest.approx(accuracy, abs=1e-5)  # the checker is the reward
        passk = [1 - comb(4 - sum(r), 4) / comb(4, 4) for r in right]
        assert point["pass@4"] == pytest.approx(sum(passk) / len(passk), abs=1e-5)
        maj = [_plain_maj([task.check(p, c).answer for c in cs], r)
               for p, cs, r in zip(prompts, groups, right, strict=True)]
        assert point["maj@4"] == pytest.approx(sum(maj) / len(maj), abs=1e-5)
    assert curve[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(0 < p["accuracy"] < p["pass@4"] < 1 for p in curve)  # informative values

    # the SFT row: a recount of eval_samples fresh answers per held-out prompt
    rng = random.Random(cfg["seed"])
    [task.sample_prompt(rng) for _ in range(cfg["n_prompts"])]
    eval_prompts = [task.sample_prompt(rng) for _ in range(cfg["n_eval"])]
    sft, tok, _ = build_base_model(task, tmp_path / "lab" / "cache" / "base", seed=cfg["seed"])
    answers = sample(sft, tok, eval_prompts, k=4, temperature=1.0, seed=cfg["seed"] + 6)
    per_prompt = [sum(task.check(p, c).status == "ok" for c in cs) / 4
                  for p, cs in zip(eval_prompts, answers, strict=True)]
    methods = out["methods"]
    assert methods["sft"]["accuracy"] == pytest.approx(sum(per_prompt) / len(per_prompt),
                                                       abs=1e-4)
    assert methods["sft"]["accuracy"] > 0.05 and methods["sft"]["accuracy_gain_ci"] == [0.0, 0.0]
    g = methods["gspo"]
    assert g["accuracy_gain"] == pytest.approx(g["accuracy"] - methods["sft"]["accuracy"],
                                               abs=2e-4)
    assert g["accuracy_gain_ci"][0] <= g["accuracy_gain"] <= g["accuracy_gain_ci"][1]
    assert g["eval_samples"] == 4 and "pass@4" in g and "maj@4_ci" in g

    page = lab_report_html(out)
    assert 'id="fig-accuracy"' in page and 'id="fig-training"' not in page
    assert "accuracy gain vs SFT" in page and "4 sampled answers to each held-out" in page
    lo, hi = g["accuracy_gain_ci"]
    assert f'{g["accuracy_gain"]:.3f} <span class="ci">[{lo:.3f}, {hi:.3f}]</span>' in page


def test_lab_config_takes_the_new_online_methods():
    from prefkit.lab.config import LabConfig, known_methods
    from prefkit.train.config import ConfigError

    cfg = LabConfig(task="sort_exact", methods=["dapo", "gspo", "reinforce_pp"], eval_samples=4)
    assert cfg.methods == ["dapo", "gspo", "reinforce_pp"]
    assert {"dapo", "gspo", "reinforce_pp"} <= set(known_methods())
    with pytest.raises(ConfigError, match=r"LabConfig\.eval_samples=0: expected an integer"):
        LabConfig(eval_samples=0)


def test_report_plots_the_accuracy_curves_apart_from_gold_and_proxy(drawn):
    """A result with a verifiable online curve (gspo) and an offline gold/proxy curve (dpo):
    the accuracy figure has the panels accuracy, pass@4, maj@4, kl with gspo's values only; the
    gold/proxy/KL figure has dpo only; the table shows accuracy and gain with their intervals."""
    import numpy as np

    from prefkit.report.html import lab_report_html

    gspo = [{"step": s, "accuracy": 0.2 + 0.05 * s, "pass@4": 0.5 + 0.1 * s,
             "maj@4": 0.25 + 0.04 * s, "unparsed": 0.0, "reward": 0.2 + 0.05 * s,
             "kl": 0.01 * s} for s in range(3)]
    dpo = [{"step": s, "gold_reward": 0.5 + 0.01 * s, "proxy_reward": 1.0 + s, "kl": 0.1 * s}
           for s in (0, 20, 40)]
    result = {"config": {"task": "count"}, "training_curves": {"gspo": gspo, "dpo": dpo},
              "methods": {"sft": {"accuracy": 0.2, "accuracy_ci": [0.15, 0.25],
                                  "accuracy_gain": 0.0, "accuracy_gain_ci": [0.0, 0.0],
                                  "eval_samples": 8},
                          "gspo": {"accuracy": 0.31, "accuracy_ci": [0.25, 0.37],
                                   "accuracy_gain": 0.11, "accuracy_gain_ci": [0.07, 0.15],
                                   "pass@8": 0.7, "pass@8_ci": [0.6, 0.8], "eval_samples": 8}}}
    page = lab_report_html(result)
    assert page.index('id="fig-accuracy"') < page.index('id="fig-training"')
    assert '0.110 <span class="ci">[0.070, 0.150]</span>' in page
    assert '0.700 <span class="ci">[0.600, 0.800]</span>' in page  # pass@k beside its CI
    assert "pass@8_ci" not in page.split('id="methods"')[1].split("</table>")[0]
    titles = [[ax.get_title() for ax in fig.axes] for fig in drawn]
    acc_fig = drawn[titles.index(["accuracy", "pass@4", "maj@4", "kl"])]
    for ax, key in zip(acc_fig.axes, ("accuracy", "pass@4", "maj@4", "kl"), strict=True):
        assert [line.get_label() for line in ax.lines] == ["gspo"]
        np.testing.assert_allclose(ax.lines[0].get_xydata(), [[p["step"], p[key]]
                                                              for p in gspo])
    gold_fig = drawn[titles.index(["gold reward", "proxy reward", "kl"])]
    assert {line.get_label() for ax in gold_fig.axes for line in ax.lines} == {"dpo"}


def test_cli_accuracy_table():
    from rich.console import Console

    from prefkit.commands.lab import accuracy_table

    assert accuracy_table({"methods": {"sft": {"gold_reward": 0.5}}}) is None  # not verifiable
    table = accuracy_table({"methods": {
        "sft": {"accuracy": 0.2, "accuracy_ci": [0.15, 0.25], "accuracy_gain": 0.0,
                "accuracy_gain_ci": [0.0, 0.0], "pass@8": 0.6, "maj@8": 0.3, "eval_samples": 8},
        "dapo": {"accuracy": 0.32, "accuracy_ci": [0.26, 0.39], "accuracy_gain": 0.12,
                 "accuracy_gain_ci": [0.08, 0.16], "pass@8": 0.7, "maj@8": 0.4,
                 "eval_samples": 8},
        "best_of_8": {"gold_reward": 0.6}}})
    console = Console(width=100, record=True)
    console.print(table)
    lines = console.export_text().splitlines()
    dapo = next(i for i, line in enumerate(lines) if "│ dapo " in line)
    assert [c.strip() for c in lines[dapo].split("│")[1:-1]] == ["dapo", "0.320", "0.120",
                                                                  "0.700", "0.400"]
    assert [c.strip() for c in lines[dapo + 1].split("│")[1:-1]] == [
        "", "(0.260-0.390)", "(0.080-0.160)", "", ""]
    assert not any("best_of_8" in line for line in lines)
