"""`prefkit judge ...` and judges as rewards: records written with annotator kind judge, the
cache making a re-run free, validation numbers against scikit-learn and by hand, thresholds
(exit 3), bad input (exit 2), and the judge reward source of online training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.data.io import read_records
from prefkit.judges.base import FunctionJudge, JudgeRequest, judge_all
from prefkit.judges.bias import judge_both_orders
from prefkit.judges.reward_source import JudgeReward
from prefkit.lab.simulated_judge import SimulatedJudge
from prefkit.specs import reward_from_spec

runner = CliRunner()

# a judge module the CLI imports (python:judge_fns:...): P(first better) from the numbers the
# test writes into the responses, with "garbage" marking outputs the judge cannot read
JUDGE_MODULE = '''
from prefkit.judges.base import Judgment

CALLS = []


def score(text):
    return float(text.split()[0][2:])


def prefer_higher(request):
    CALLS.append(request)
    first, second = request.responses
    if "garbage" in first or "garbage" in second:
        return Judgment.unparsed(request.task, "unparsed: no verdict found")
    a, b = score(first), score(second)
    return 1.0 if a > b else 0.0 if a < b else 0.5


def first_always(request):
    return 1.0
'''


@pytest.fixture()
def judge_module(tmp_path, monkeypatch):
    (tmp_path / "judge_fns.py").write_text(JUDGE_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PREFKIT_JUDGE_CACHE", raising=False)
    return tmp_path


def cli(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output)
    return result


def cli_json(*args, code: int = 0) -> dict:
    return json.loads(cli(*args, "--json", code=code).stdout)


def _pairs_file(path: Path, n: int, seed: int = 0, garbage: int = 0) -> tuple[Path, list]:
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for i in range(n):
        g = rng.normal(size=2).round(3)
        words = rng.integers(1, 12, size=2)
        texts = [f"g={g[k]} " + "w " * int(words[k]) for k in range(2)]
        if i < garbage:
            texts[0] = "g=0 garbage"
        rows.append({"prompt": f"question {i}", "responses": [t.strip() for t in texts]})
        truth.append("a" if g[0] > g[1] else "b" if g[0] < g[1] else "tie")
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path, truth


def test_compare_writes_judge_records_and_counts_what_it_could_not_judge(judge_module):
    data, truth = _pairs_file(judge_module / "pairs.jsonl", 40, garbage=4)
    cache = judge_module / "cache.sqlite"
    out = cli_json("judge", "compare", data, "--judge", "python:judge_fns:prefer_higher",
                   "--out", judge_module / "judged.jsonl", "--cache", cache,
                   "--failures", judge_module / "failed.jsonl")
    assert out["items"] == 40 and out["judged"] == 36
    assert out["not_judged"] == {"unparsed": 4, "failed": 0}
    assert out["status"] == {"ok": 72, "unparsed": 8, "failed": 0}
    records = list(read_records(judge_module / "judged.jsonl"))
    assert len(records) == 36
    for record in records:
        i = int(record.prompt.split()[1])
        assert record.outcome.value == truth[i]
        assert record.annotator.kind.value == "judge"
        assert record.annotator.id == "python:judge_fns:prefer_higher"
        assert record.soft_label == {"a": 1.0, "b": 0.0, "tie": 0.5}[truth[i]]
        assert record.metadata["orders"] == 2 and record.metadata["flipped"] is False
    failed = [json.loads(line) for line in (judge_module / "failed.jsonl").read_text()
              .splitlines()]
    assert [f["index"] for f in failed] == [0, 1, 2, 3]
    assert all(f["status"] == "unparsed" and "no verdict" in f["reason"] for f in failed)
    # a re-run is served by the cache: no call reaches the judge
    again = cli_json("judge", "compare", data, "--judge", "python:judge_fns:prefer_higher",
                     "--cache", cache)
    assert again["cached"] == 80 and again["judged"] == 36
    stats = cli_json("judge", "cache", "stats", "--cache", cache)
    assert stats["entries"] == 80 and stats["by_status"] == {"ok": 72, "unparsed": 8}
    assert stats["by_judge"] == {"python:judge_fns:prefer_higher": 80}
    cleared = cli_json("judge", "cache", "clear", "--cache", cache, "--judge",
                       "python:judge_fns:prefer_higher")
    assert cleared["deleted"] == 80


def test_position_report_of_a_judge_that_always_picks_the_first(judge_module):
    data, _ = _pairs_file(judge_module / "pairs.jsonl", 10)
    out = cli_json("judge", "compare", data, "--judge", "python:judge_fns:first_always",
                   "--no-cache")
    assert out["position"]["p_prefer_first"] == 1.0 and out["position"]["flip_rate"] == 1.0
    one = cli_json("judge", "compare", data, "--judge", "python:judge_fns:first_always",
                   "--no-cache", "--one-order", "--out", judge_module / "one.jsonl")
    assert one["requests"] == 10 and "position" not in one
    assert {r.outcome.value for r in read_records(judge_module / "one.jsonl")} == {"a"}


def test_grade_and_rank_records(judge_module, tmp_path):
    rows = [{"prompt": "sort: 3 1 2", "responses": ["1 2 3", "3 1 2", "1 3 2"]}]
    data = tmp_path / "rank.jsonl"
    data.write_bytes(orjson.dumps(rows[0]) + b"\n")
    out = cli_json("judge", "rank", data, "--judge", "gold:sort", "--no-cache", "--out",
                   tmp_path / "ranked.jsonl")
    assert out["judged"] == 1
    [ranking] = list(read_records(tmp_path / "ranked.jsonl"))
    assert ranking.tiers[0] == [0] and ranking.annotator.id == "gold:sort"
    out = cli_json("judge", "grade", data, "--judge", "lab:sort:fair", "--no-cache", "--out",
                   tmp_path / "graded.jsonl")
    graded = list(read_records(tmp_path / "graded.jsonl"))
    assert out["judged"] == len(graded) == 3
    assert all(r.scales == {"score": (1.0, 10.0)} for r in graded)
    best = next(r for r in graded if r.response == "1 2 3")
    worst = next(r for r in graded if r.response == "3 1 2")
    assert best.scores["score"] >= worst.scores["score"]


def _labels_file(path: Path, n: int, seed: int = 1) -> tuple[Path, list]:
    """People's labels: the truth from the numbers in the texts, 15% flipped, 10% ties."""
    rng = np.random.default_rng(seed)
    rows, records = [], []
    for i in range(n):
        g = rng.normal(size=2).round(3)
        a, b = (f"g={g[k]} " + "w " * int(rng.integers(1, 9)) for k in range(2))
        label = "a" if g[0] > g[1] else "b"
        u = rng.random()
        if u < 0.10:
            label = "tie"
        elif u < 0.25:
            label = "b" if label == "a" else "a"
        rows.append({"kind": "comparison", "prompt": f"q{i}", "response_a": a.strip(),
                     "response_b": b.strip(), "outcome": label,
                     "metadata": {"models": ["mine-7b", "other"] if i % 2 else
                                  ["other", "mine-1b"]}})
        records.append(rows[-1])
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path, records


def _gold(prompt, response):
    return float(response.split()[0][2:])


def test_validate_numbers_equal_an_independent_computation(judge_module, tmp_path):
    labels, rows = _labels_file(tmp_path / "labels.jsonl", 300)
    out = cli_json("judge", "validate", "--labels", labels, "--judge",
                   "python:judge_fns:prefer_higher", "--judge", "python:judge_fns:first_always",
                   "--no-cache")
    report = out["judges"]["python:judge_fns:prefer_higher"]
    human = [r["outcome"] for r in rows]
    judge = ["a" if _gold("", r["response_a"]) > _gold("", r["response_b"]) else "b"
             for r in rows]
    decided = [(h, j) for h, j in zip(human, judge, strict=True) if h != "tie" and j != "tie"]
    assert report["decided"] == len(decided)
    assert report["accuracy"] == pytest.approx(np.mean([h == j for h, j in decided]), abs=1e-12)
    assert report["human_ties"] == human.count("tie") and report["judge_ties"] == 0
    assert report["cohen_kappa"] == pytest.approx(cohen_kappa_score(human, judge), abs=1e-12)
    # the always-first judge flips with the order: every pair a calibrated tie
    first = out["judges"]["python:judge_fns:first_always"]
    assert first["judge_ties"] == 300 and first["accuracy"] is None
    assert first["position"]["consistency"] == 0.0
    assert out["ok"] is True and out["below_threshold"] == {}


def test_validate_thresholds_jury_and_self_preference(judge_module, tmp_path):
    labels, rows = _labels_file(tmp_path / "labels.jsonl", 200)
    result = cli("judge", "validate", "--labels", labels, "--judge",
                 "python:judge_fns:prefer_higher", "--min-accuracy", "0.99", "--no-cache",
                 "--json", code=3)
    out = json.loads(result.stdout)
    assert out["ok"] is False
    assert out["below_threshold"]["python:judge_fns:prefer_higher"][0].startswith("accuracy ")
    ok = cli_json("judge", "validate", "--labels", labels, "--judge",
                  "python:judge_fns:prefer_higher", "--judge", "python:judge_fns:first_always",
                  "--jury", "mean", "--family", "mine", "--no-cache", "--min-accuracy", "0.7",
                  code=3)
    jury = "jury-mean(python:judge_fns:prefer_higher,python:judge_fns:first_always)"
    assert set(ok["judges"]) == {"python:judge_fns:prefer_higher",
                                 "python:judge_fns:first_always", jury}
    # the always-first member only adds 1/2 to the mean after calibration: the jury decides
    # as the other member does
    assert ok["judges"][jury]["accuracy"] == ok["judges"][
        "python:judge_fns:prefer_higher"]["accuracy"]
    # the always-first judge has no accuracy (all ties): undefined fails a threshold
    assert ok["below_threshold"] == {
        "python:judge_fns:first_always": ["accuracy undefined < 0.7"]}
    pref = ok["judges"]["python:judge_fns:prefer_higher"]["self_preference"]
    assert pref["own_pairs"] == 200
    own = [1 if i % 2 else 0 for i in range(200)]  # which response is mine-*
    own_human = np.mean([(1.0 if r["outcome"] == ("a" if own[i] else "b") else
                          0.5 if r["outcome"] == "tie" else 0.0) for i, r in enumerate(rows)])
    assert pref["reference_own_share"] == pytest.approx(own_human, abs=1e-12)
    own_judge = np.mean([float(_gold("", r["response_a" if own[i] else "response_b"]) >
                               _gold("", r["response_b" if own[i] else "response_a"]))
                         for i, r in enumerate(rows)])
    assert pref["judge_own_share"] == pytest.approx(own_judge, abs=1e-12)


def test_bad_input_exits_2(judge_module, tmp_path):
    data, _ = _pairs_file(tmp_path / "pairs.jsonl", 3)
    for judge, message in (("nope", "KIND:ARGUMENT"), ("lab:sort:nobody", "one of"),
                           ("http:model@ftp://x", "http"), ("python:judge_fns:missing",
                                                            "no function")):
        out = cli_json("judge", "compare", data, "--judge", judge, "--no-cache", code=2)
        assert message in out["error"], (judge, out)
    bad = tmp_path / "judge.yaml"
    bad.write_text("backend: http\nmodel: m\nbase_url: http://127.0.0.1:9/v1\ncolor: red\n")
    out = cli_json("judge", "compare", data, "--judge", bad, "--no-cache", code=2)
    assert "unknown field(s) color" in out["error"] and str(bad) in out["error"]
    labels = tmp_path / "ratings.jsonl"
    labels.write_text(json.dumps({"kind": "rating", "prompt": "p", "response": "r",
                                  "scores": {"x": 1}}) + "\n")
    out = cli_json("judge", "validate", "--labels", labels, "--judge", "lab:sort:fair",
                   "--no-cache", code=2)
    assert "expected comparison records" in out["error"]
    out = cli_json("judge", "cache", "stats", "--cache", tmp_path / "none.sqlite", code=2)
    assert "no judgment cache" in out["error"]
    assert cli("judge", "template", "pairwise_tie").stdout.startswith("{#-")


def test_judge_reward_is_the_round_robin_calibrated_win_rate():
    def prefer_longer(request):
        a, b = (len(t) for t in request.responses)
        return 0.5 if a == b else 0.8 if a > b else 0.2

    reward = JudgeReward(FunctionJudge(prefer_longer, name="longer"))
    out = reward(["p", "q"], [["a", "bbb", "cc"], ["x", "y", "zz"]])
    # calibrated p(i beats j) = (p_first(i, j) + 1 - p_first(j, i)) / 2 = 0.8 for longer
    expected = torch.tensor([[0.2, 0.8, 0.5], [0.35, 0.35, 0.8]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert reward.last_counts == {"ok": 12, "unparsed": 0, "failed": 0}

    def unreadable_first(request):
        from prefkit.judges.base import Judgment

        if "bad" in request.responses:
            return Judgment.unparsed(request.task, "unparsed: x")
        return prefer_longer(request)

    reward = JudgeReward(FunctionJudge(unreadable_first, name="u"))
    out = reward(["p"], [["bad", "bbbb", "c"]])
    # 'bad' is in every pair it appears in: no judged pair -> 1/2, never a loss
    assert out[0, 0] == 0.5 and out[0, 1] == pytest.approx(0.8) and out[0, 2] == pytest.approx(
        0.2)
    spec = reward_from_spec("judge:lab:sort:fair")
    assert isinstance(spec, JudgeReward)
    with pytest.raises(ValueError, match="judge:CONFIG"):
        reward_from_spec("nothing")


def test_simulated_judge_pairs_are_deterministic_per_request():
    judge = SimulatedJudge("x", _gold, temperature=1.0, seed=3)
    requests = [JudgeRequest("compare", f"p{i}", (f"g={i % 3} a", f"g={i % 2} b"))
                for i in range(50)]
    first = [p.p_a for p in judge_both_orders(judge, requests, concurrency=1)]
    again = [p.p_a for p in judge_both_orders(judge, requests[::-1], concurrency=50)][::-1]
    assert first == again
    assert [j.verdict for j in judge_all(judge, requests)] == [
        j.verdict for j in judge_all(judge, requests)]


def test_compare_flags_self_preference_when_the_judge_family_wrote_responses(judge_module):
    rows = [{"prompt": f"q{i}", "responses": [f"g={i % 3} a", f"g={(i + 1) % 3} b"],
             "models": ["mine-7b", "other"]} for i in range(30)]
    data = judge_module / "owned.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = cli_json("judge", "compare", data, "--judge", "python:judge_fns:prefer_higher",
                   "--no-cache", "--family", "mine")
    report = out["self_preference"]
    assert report["family"] == "mine" and report["own_pairs"] == 30
    own = [1.0 if i % 3 > (i + 1) % 3 else 0.0 for i in range(30)]
    assert report["judge_own_share"] == pytest.approx(np.mean(own))
    plain = cli_json("judge", "compare", data, "--judge", "python:judge_fns:prefer_higher",
                     "--no-cache")
    assert "self_preference" not in plain
