"""prefkit.judges: strict parsing, templates, the text-judge loop, simulated judges, position
calibration, bias reports and juries -- on values (independent formulas, known biases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from prefkit.judges.base import (
    FunctionJudge,
    JudgeRequest,
    Judgment,
    cache_key,
    judge_all,
    status_counts,
)
from prefkit.judges.bias import (
    judge_both_orders,
    length_report,
    position_report,
    self_preference_report,
)
from prefkit.judges.jury import Jury, accuracy_weight
from prefkit.judges.parse import ParseError, parse
from prefkit.judges.templates import BUILTIN_TEMPLATES, load_template, template_from_source
from prefkit.judges.text import CallError, Completion, TextJudge, soft_p_first
from prefkit.lab.simulated_judge import SimulatedJudge, lab_judge_pool

# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "verdict"), [
    ("A is more complete.\n[[A]]", "first"),
    ("B wins [[ b ]]", "second"),
    ("Equally good. [[C]]", "tie"),
    ("[[A]] ... to repeat: [[A]]", "first"),
])
def test_verdict_tags(text, verdict):
    assert parse("abc", text).verdict == verdict


@pytest.mark.parametrize(("parser", "text", "why"), [
    ("abc", "I think [[A]]. No wait, [[B]].", "conflicting"),
    ("ab", "They tie: [[C]]", "not one of"),
    ("abc", "Response A is better.", "no verdict"),
    ("abc", "   ", "empty"),
    ("score", "Rating: [[11]]", "outside 1-10"),
    ("score", "Rating: [[3]] or maybe [[4]]", "conflicting"),
    ("result_score", "Good. [RESULT] 3.5", "whole number"),
    ("result_score", "Good. [RESULT] 0", "outside 1-5"),
    ("ranking", "[[2 > 1]]", "each of 1..3 once"),
    ("ranking", "[[2 > 2 > 3]]", "each of 1..3 once"),
])
def test_unparsable_outputs_are_errors_never_guesses(parser, text, why):
    scale = {"score": (1.0, 10.0), "result_score": (1.0, 5.0)}.get(parser)
    with pytest.raises(ParseError, match=why):
        parse(parser, text, scale=scale, k=3)


def test_scores_rankings_and_rationale():
    parsed = parse("score", "Clear and correct.\nRating: [[8]]", scale=(1, 10))
    assert parsed.score == 8.0 and parsed.rationale == "Clear and correct.\nRating:"
    assert parse("result_score", "Feedback: fine. [RESULT] 4", scale=(1, 5)).score == 4.0
    assert parse("result_ab", "Feedback... [RESULT] B").verdict == "second"
    assert parse("ranking", "so: [[3 > 1 = 2]]", k=3).ranking == [[2], [0, 1]]
    text = "because\n[[A]]"
    start, end = parse("abc", text).span
    assert text[start:end] == "A"


# -- templates -------------------------------------------------------------------------------


def test_every_builtin_template_renders_and_declares_its_parser():
    for name in BUILTIN_TEMPLATES:
        t = load_template(name)
        n = {"compare": 2, "grade": 1, "rank": 3}[t.task]
        request = JudgeRequest(t.task, "PROMPT-X", tuple(f"RESP-{i}" for i in range(n)),
                               reference="REF-Y", rubric="RUBRIC-Z")
        messages = t.messages(request)
        user = messages[-1]["content"]
        assert messages[-1]["role"] == "user" and "PROMPT-X" in user
        assert all(f"RESP-{i}" in user for i in range(n))
        # responses appear in the order shown
        assert [user.index(f"RESP-{i}") for i in range(n)] == sorted(
            user.index(f"RESP-{i}") for i in range(n))
        if "reference" in t.needs:
            assert "REF-Y" in user
    # no HTML escaping: this is text for a model
    t = load_template("pairwise")
    user = t.messages(JudgeRequest("compare", "a < b & c", ("<b>x</b>", "y")))[-1]["content"]
    assert "a < b & c" in user and "<b>x</b>" in user


def test_template_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="parser"):
        template_from_source("{% block user %}{{ prompt }}{% endblock %}")
    with pytest.raises(ValueError, match="block user"):
        template_from_source('{% set parser = "ab" %}hello')
    with pytest.raises(ValueError, match="line 1"):
        template_from_source('{% set parser = "ab" %}{% block user %}{{ prompt }')
    with pytest.raises(ValueError, match="no such file"):
        load_template(tmp_path / "missing.j2")
    t = load_template("pairwise_reference")
    with pytest.raises(ValueError, match="needs a reference"):
        t.messages(JudgeRequest("compare", "p", ("a", "b")))
    with pytest.raises(ValueError, match="answers compare requests"):
        t.messages(JudgeRequest("grade", "p", ("a",), reference="r"))
    mine = tmp_path / "mine.j2"
    mine.write_text('{%- set parser = "ab" -%}{% block user %}Q: {{ prompt }} '
                    '1) {{ responses[0] }} 2) {{ responses[1] }}{% endblock %}')
    loaded = load_template(mine)
    assert loaded.messages(JudgeRequest("compare", "p", ("a", "b"))) == [
        {"role": "user", "content": "Q: p 1) a 2) b"}]
    assert loaded.digest != load_template("pairwise").digest


# -- the text-judge loop ---------------------------------------------------------------------


class ScriptedJudge(TextJudge):
    """Answers from a script: each call pops the next text (or raises CallError)."""

    name = "scripted"

    def __init__(self, script, **kwargs):
        super().__init__(**kwargs)
        self.script = list(script)
        self.calls = 0

    def backend_config(self):
        return {"backend": "scripted"}

    async def complete(self, messages, attempt):
        self.calls += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, Completion):
            return item
        return Completion(text=item, prompt_tokens=10, completion_tokens=3)


def _compare():
    return JudgeRequest("compare", "p", ("a", "b"))


def test_text_judge_retries_unparsable_then_reports_unparsed():
    judge = ScriptedJudge(["no verdict", "still none", "[[B]]"], parse_retries=2)
    [j] = judge_all(judge, [_compare()])
    assert (j.status, j.verdict, j.p_first, j.attempts) == ("ok", "second", 0.0, 3)
    assert (j.prompt_tokens, j.completion_tokens) == (30, 9)
    judge = ScriptedJudge(["no verdict", "[[A]] then [[B]]"], parse_retries=1)
    [j] = judge_all(judge, [_compare()])
    assert j.status == "unparsed" and j.verdict is None and j.p_first is None
    assert "conflicting" in j.reason and j.raw == "[[A]] then [[B]]" and j.attempts == 2
    judge = ScriptedJudge([CallError("http 500", "server error")])
    [j] = judge_all(judge, [_compare()])
    assert j.status == "failed" and j.reason == "http 500: server error"


def test_soft_verdict_from_the_verdict_tokens_log_probs():
    tokens = [("Better: ", {}), ("[[", {}), ("A", {"A": math.log(0.6), " B": math.log(0.3),
                                                    "C": math.log(0.05), "x": math.log(0.05)}),
              ("]]", {})]
    completion = Completion(text="Better: [[A]]", top_logprobs=tokens)
    span = parse("abc", completion.text).span
    expected = (0.6 + 0.5 * 0.05) / (0.6 + 0.3 + 0.05)
    assert soft_p_first(completion, span) == pytest.approx(expected)
    [j] = judge_all(ScriptedJudge([completion]), [_compare()])
    assert j.verdict == "first" and j.p_first == pytest.approx(expected)
    assert soft_p_first(Completion(text="[[A]]"), (2, 3)) is None


def test_judgment_rules():
    with pytest.raises(ValueError, match="no verdict"):
        Judgment(task="compare", status="unparsed", verdict="first")
    with pytest.raises(ValueError, match="verdict"):
        Judgment(task="compare", verdict="A")
    assert Judgment(task="compare", verdict="tie").p_first == 0.5
    j = Judgment(task="rank", ranking=[[1], [0, 2]], rationale="r", extra={"x": 1})
    assert Judgment.from_dict(j.to_dict()) == j
    with pytest.raises(ValueError, match="2 responses"):
        JudgeRequest("compare", "p", ("a",))


def test_cache_key_depends_on_what_the_judge_sees_and_its_config():
    r = JudgeRequest("compare", "p", ("a", "b"), models=("m1", "m2"))
    base = cache_key({"model": "x", "template": "t"}, r)
    assert base == cache_key({"template": "t", "model": "x"}, r)  # key order irrelevant
    assert base != cache_key({"model": "y", "template": "t"}, r)
    assert base != cache_key({"model": "x", "template": "t"}, r.swapped())
    assert base == cache_key({"model": "x", "template": "t"},
                             JudgeRequest("compare", "p", ("a", "b"), models=("z", "w")))


# -- simulated judges, position calibration, biases, juries ------------------------------------


def _tie_pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [JudgeRequest("compare", f"prompt {i}",
                         (f"answer {rng.integers(1e9)} x", f"answer {rng.integers(1e9)} y"))
            for i in range(n)]


def test_position_calibration_brings_a_65_percent_first_preference_to_one_half():
    judge = SimulatedJudge("positional", lambda p, r: 0.0, first_preference=0.65, seed=1)
    pairs = judge_both_orders(judge, _tie_pairs(3000))
    report = position_report(pairs)
    assert report["p_prefer_first"] == pytest.approx(0.65, abs=0.02)
    # the calibrated preference for the response listed first in the request: one half
    assert np.mean([p.p_a for p in pairs]) == pytest.approx(0.5, abs=0.02)
    # each pair's flip probability is 0.65^2 + 0.35^2 (same position chosen twice)
    assert report["flip_rate"] == pytest.approx(0.65 ** 2 + 0.35 ** 2, abs=0.03)


def _gold_pairs(n, seed=0):
    """Pairs with a known gold difference: the gold of an answer is written in it."""
    rng = np.random.default_rng(seed)
    out, gold_first = [], []
    for i in range(n):
        g = rng.normal(size=2)
        words = rng.integers(3, 30, size=2)
        a, b = (f"g={g[k]:.4f} " + "w " * int(words[k]) for k in range(2))
        out.append(JudgeRequest("compare", f"p{i}", (a.strip(), b.strip())))
        gold_first.append(g[0] > g[1])
    return out, np.array(gold_first)


def _gold(prompt, response):
    return float(response.split()[0][2:])


def test_calibrated_accuracy_of_a_biased_judge_is_what_position_calibration_can_keep():
    """The issue asks for accuracy within 1 point of an unbiased judge with the same noise. With
    hard verdicts and the position bias as a utility shift, calibration is Bayes-optimal (two
    verdicts that disagree carry no evidence about which response is better) and still loses
    ``E[sigmoid(|d| / T)] - E[(sigmoid((|d| + b) / T) + sigmoid((|d| - b) / T)) / 2]``: 1.00
    point at this noise (T = 0.5, 83% accurate), 0.6 at T = 0.25, 1.2 at T = 1 -- checked here
    against that formula, integrated independently."""
    requests, gold_first = _gold_pairs(4000)
    accuracy = {}
    for q in (0.5, 0.65):
        # the same name and seed: both judges draw the same random numbers
        judge = SimulatedJudge("judge", _gold, temperature=0.5, first_preference=q, seed=3)
        p = np.array([x.p_a for x in judge_both_orders(judge, requests)])
        # accuracy vs gold, a calibrated tie (the orders disagree) counting one half
        accuracy[q] = np.mean(np.where(gold_first, p, 1 - p))
    d = np.abs(np.diff([[_gold("", t) for t in r.responses] for r in requests], axis=1))[:, 0]
    b = 0.5 * math.log(0.65 / 0.35)
    expected = {0.5: np.mean(expit(d / 0.5)),
                0.65: np.mean((expit((d + b) / 0.5) + expit((d - b) / 0.5)) / 2)}
    for q in (0.5, 0.65):
        assert accuracy[q] == pytest.approx(expected[q], abs=0.01)
    gap = accuracy[0.5] - accuracy[0.65]
    assert gap == pytest.approx(expected[0.5] - expected[0.65], abs=0.006)
    assert gap <= 0.015


@pytest.mark.slow
def test_a_greedy_judge_calibrated_keeps_accuracy_within_a_point():
    """The issue's check on a greedy (temperature-0) LLM judge, whose errors are a fixed
    misperception per pair: preferring the first position 65% of the time on gold ties, it is
    calibrated to 0.50 +/- 0.02 and keeps its accuracy within 1 point of the same judge without
    the bias (about 0.8 points lost: only pairs it perceives within the position bonus of a tie
    become calibrated ties). With sampling noise instead the loss is about 1 point (the test
    above)."""
    ties = SimulatedJudge("judge", lambda p, r: 0.0, temperature=0.0, perception_sd=0.5,
                          first_preference=0.65, seed=1)
    tie_pairs = judge_both_orders(ties, _tie_pairs(4000, seed=2))
    assert position_report(tie_pairs)["p_prefer_first"] == pytest.approx(0.65, abs=0.02)
    assert np.mean([p.p_a for p in tie_pairs]) == pytest.approx(0.5, abs=0.02)
    requests, gold_first = _gold_pairs(20000)
    accuracy = {}
    for q in (0.5, 0.65):
        judge = SimulatedJudge("judge", _gold, temperature=0.0, perception_sd=0.5,
                               first_preference=q, seed=0)
        p = np.array([x.p_a for x in judge_both_orders(judge, requests)])
        accuracy[q] = np.mean(np.where(gold_first, p, 1 - p))
    assert accuracy[0.5] > 0.85
    assert 0.0 <= accuracy[0.5] - accuracy[0.65] <= 0.01


def test_length_and_self_preference_reports():
    requests, _ = _gold_pairs(2000, seed=5)
    verbose = SimulatedJudge("verbose", _gold, temperature=0.5, length_bias=2.0, seed=2)
    fair = SimulatedJudge("fair", _gold, temperature=0.5, seed=2)
    v, f = (length_report(judge_both_orders(j, requests)) for j in (verbose, fair))
    assert v["longer_wins"] > f["longer_wins"] + 0.1
    assert v["length_correlation"] > f["length_correlation"] + 0.1
    # exactly one response per pair written by the judge's family
    rng = np.random.default_rng(0)
    owned = [JudgeRequest("compare", r.prompt, r.responses,
                          models=("mine-7b", "other") if rng.random() < 0.5 else ("x", "mine-1b"))
             for r in requests]
    selfish = SimulatedJudge("selfish", _gold, temperature=0.5, self_bias=1.0, family="mine",
                             seed=4)
    pairs = judge_both_orders(selfish, owned)
    gold_p = [1.0 if _gold("", r.responses[0]) > _gold("", r.responses[1]) else 0.0
              for r in owned]
    report = self_preference_report(pairs, selfish.is_own, reference=gold_p)
    assert report["own_pairs"] == len(owned)
    assert report["reference_own_share"] == pytest.approx(0.5, abs=0.04)
    assert report["self_preference"] > 0.1
    fair_report = self_preference_report(judge_both_orders(fair, owned), selfish.is_own,
                                         reference=gold_p)
    assert abs(fair_report["self_preference"]) < 0.04


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_a_jury_of_three_noisy_judges_beats_its_best_member_by_three_points():
    requests, gold_first = _gold_pairs(3000, seed=9)
    owned = [JudgeRequest("compare", r.prompt, r.responses, models=("pol", "ref"))
             for r in requests]
    members = [SimulatedJudge("n1", _gold, temperature=1.0, seed=11),
               SimulatedJudge("n2", _gold, temperature=1.0, seed=12),
               SimulatedJudge("n3", _gold, temperature=1.0, self_bias=0.3, family="pol",
                              seed=13)]

    def accuracy(judge):
        out = judge_all(judge, owned)
        decided = np.array([j.verdict != "tie" for j in out])
        right = np.array([j.verdict == "first" for j in out]) == gold_first
        return right[decided].mean()

    best = max(accuracy(m) for m in members)
    assert accuracy(Jury(members, "majority")) >= best + 0.03
    weights = [accuracy_weight(0.7)] * 3
    assert accuracy(Jury(members, "weighted", weights=weights)) >= best + 0.03


def test_jury_aggregation_rules():
    first, second, tie = (FunctionJudge(lambda r, p=p: p, name=str(p)) for p in (1.0, 0.0, 0.5))
    soft = FunctionJudge(lambda r: 0.9, name="soft")
    unparsed = FunctionJudge(lambda r: Judgment.unparsed(r.task, "unparsed: x"), name="u")
    r = [_compare()]
    [j] = judge_all(Jury([first, first, second]), r)
    assert (j.verdict, j.p_first) == ("first", pytest.approx(2 / 3))
    [j] = judge_all(Jury([first, second, tie]), r)
    assert (j.verdict, j.p_first) == ("tie", 0.5)
    [j] = judge_all(Jury([soft, second], "mean"), r)
    assert (j.verdict, j.p_first) == ("second", pytest.approx(0.45))
    w = [accuracy_weight(0.9), accuracy_weight(0.6)]
    [j] = judge_all(Jury([first, second], "weighted", weights=w), r)
    assert j.p_first == pytest.approx(1 / (1 + math.exp(-(w[0] - w[1]))))
    [j] = judge_all(Jury([unparsed, first]), r)
    assert j.verdict == "first" and j.extra["members"] == {"ok": 1, "unparsed": 1, "failed": 0}
    [j] = judge_all(Jury([unparsed, unparsed]), r)
    assert j.status == "unparsed"
    ranks = [FunctionJudge(lambda q: [[0], [1], [2]], name="r1"),
             FunctionJudge(lambda q: [[1], [0], [2]], name="r2"),
             FunctionJudge(lambda q: [[0, 1], [2]], name="r3")]
    [j] = judge_all(Jury(ranks), [JudgeRequest("rank", "p", ("a", "b", "c"))])
    # Borda points: a = 2 + 1 + 1, b = 1 + 2 + 1, c = 0: a and b tie
    assert j.ranking == [[0, 1], [2]]
    with pytest.raises(ValueError, match="weights"):
        Jury([first], "weighted")


def test_unparsed_judgments_are_counted_never_scored():
    judge = SimulatedJudge("flaky", _gold, temperature=0.5, unparsed_rate=0.1, seed=7)
    requests, gold_first = _gold_pairs(2000, seed=1)
    out = judge_all(judge, requests)
    counts = status_counts(out)
    assert counts["unparsed"] == pytest.approx(200, abs=40)
    assert counts["ok"] + counts["unparsed"] == len(requests) and counts["failed"] == 0
    assert all(j.verdict is None and j.p_first is None for j in out if not j.ok)
    # the same request gets the same judgment however often and in whatever order it is asked
    again = judge_all(judge, requests[::-1])[::-1]
    assert [j.verdict for j in again] == [j.verdict for j in out]


def test_simulated_grades_and_ranks_follow_gold():
    judge = SimulatedJudge("g", _gold, temperature=0.3, noise_sd=0.5, slope=2.0, seed=0)
    hi = JudgeRequest("grade", "p", ("g=2.0 good",))
    lo = JudgeRequest("grade", "p", ("g=-2.0 bad",))
    scores = judge_all(judge, [hi, lo])
    assert scores[0].score > scores[1].score and 1 <= scores[1].score <= 10
    [ranked] = judge_all(judge, [JudgeRequest("rank", "p", ("g=0.0 a", "g=3.0 b", "g=-3.0 c"))])
    assert ranked.ranking == [[1], [0], [2]]
    pool = lab_judge_pool(_gold)
    assert [j.name for j in pool] == ["fair", "positional", "verbose", "self_preferring"]
    assert len({cache_key(j.config(), hi) for j in pool}) == 4
