"""pass@k / maj@k (prefkit.evaluate.passk) against brute force over every k-subset, the
bootstrap intervals, and `prefkit eval passk` (values, --json, bad input exits 2)."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from math import comb

import numpy as np
import pytest
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.evaluate.passk import bootstrap_interval, maj_at_k, pass_at_k, passk_report

# ------------------------------------------------------------------------ brute force


def brute_pass(correct: list[bool], k: int) -> float:
    """Share of the k-subsets of the samples that hold a correct one."""
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_maj(answers: list, correct: list[bool], k: int) -> float:
    """Mean over every k-subset of the majority answer's score: ties between j answers of
    which i are right score i / j; None does not vote; no vote scores 0."""
    right = {a: c for a, c in zip(answers, correct, strict=True) if a is not None}
    total = 0.0
    subsets = list(itertools.combinations(range(len(answers)), k))
    for subset in subsets:
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if votes:
            top = max(votes.values())
            tied = [a for a, v in votes.items() if v == top]
            total += sum(right[a] for a in tied) / len(tied)
    return total / len(subsets)


def random_prompt(rng: random.Random, n: int) -> tuple[list, list[bool]]:
    """Answers from a few values (some right, maybe several right ones) plus None."""
    pool = [None, "a", "b", "c", "d", "e"][: rng.randint(2, 6)]
    right = set(rng.sample(pool[1:], rng.randint(0, min(2, len(pool) - 1)))) if pool[1:] else set()
    answers = [rng.choice(pool) for _ in range(n)]
    return answers, [a in right for a in answers]


# ---------------------------------------------------------------------------- pass@k


def test_pass_at_k_equals_enumeration_of_k_subsets():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 11)
        correct = [rng.random() < rng.random() for _ in range(n)]
        k = rng.randint(1, n)
        got = float(pass_at_k(n, sum(correct), k))
        assert got == pytest.approx(brute_pass(correct, k), abs=1e-12)


def test_pass_at_k_closed_form_at_large_n_and_edges():
    n = np.array([200, 200, 200, 500, 1000])
    c = np.array([0, 3, 150, 7, 999])
    for k in (1, 5, 64):
        want = [1 - comb(int(ni - ci), k) / comb(int(ni), k) for ni, ci in zip(n, c, strict=True)]
        np.testing.assert_allclose(pass_at_k(n, c, k), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(pass_at_k(n, c, 1), c / n, rtol=1e-12)
    assert float(pass_at_k(10, 0, 3)) == 0.0
    assert float(pass_at_k(10, 8, 3)) == 1.0  # n - c < k: every subset holds a right one
    assert pass_at_k([[4, 4]], [[1, 2]], 2).shape == (1, 2)
    for bad in ((2, 1, 3), (4, 5, 1), (4, -1, 1), (4, 1, 0)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


# ----------------------------------------------------------------------------- maj@k


def test_maj_at_k_equals_enumeration_of_k_subsets():
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(1, 10)
        answers, correct = random_prompt(rng, n)
        k = rng.randint(1, n)
        assert maj_at_k(answers, correct, k) == pytest.approx(
            brute_maj(answers, correct, k), abs=1e-12), (answers, correct, k)


def test_maj_at_k_hand_cases():
    # 2 right "7", one "8", one "9": maj@2 over 6 pairs: (7,7)=1, (7,8)x2 and (7,9)x2 ties
    # = 1/2 each, (8,9) = 0 -> (1 + 4 / 2) / 6 = 0.5
    answers, correct = ["7", "7", "8", "9"], [True, True, False, False]
    assert maj_at_k(answers, correct, 2) == pytest.approx(0.5)
    assert maj_at_k(answers, correct, 1) == pytest.approx(0.5)  # maj@1 = accuracy
    assert maj_at_k(answers, correct, 4) == pytest.approx(1.0)  # 7 wins the full vote
    # unparsed samples do not vote: one right answer among None wins whenever drawn
    assert maj_at_k(["7", None, None], [True, False, False], 2) == pytest.approx(2 / 3)
    assert maj_at_k([None, None], [False, False], 1) == 0.0
    # maj@1 is the accuracy even with None answers (they count wrong)
    assert maj_at_k(["1", None, "2", "1"], [True, False, False, True], 1) == pytest.approx(0.5)


def test_maj_at_k_full_vote_and_larger_n():
    rng = random.Random(2)
    for _ in range(20):
        answers, correct = random_prompt(rng, 9)
        votes = Counter(a for a in answers if a is not None)
        right = dict(zip(answers, correct, strict=True))
        if votes:
            top = max(votes.values())
            tied = [a for a, v in votes.items() if v == top]
            want = sum(right[a] for a in tied) / len(tied)
        else:
            want = 0.0
        assert maj_at_k(answers, correct, 9) == pytest.approx(want)
    # n = 40, k = 5: against enumeration of the 658,008 subsets by counts (multivariate
    # hypergeometric over 3 answer values)
    answers = ["r"] * 14 + ["w"] * 16 + ["v"] * 6 + [None] * 4
    correct = [a == "r" for a in answers]
    total = 0.0
    for xr in range(6):
        for xw in range(6 - xr):
            for xv in range(6 - xr - xw):
                xn = 5 - xr - xw - xv
                weight = comb(14, xr) * comb(16, xw) * comb(6, xv) * comb(4, xn)
                top = max(xr, xw, xv)
                if top > 0 and xr == top:
                    total += weight / [xr, xw, xv].count(top)
    assert maj_at_k(answers, correct, 5) == pytest.approx(total / comb(40, 5), abs=1e-12)


def test_maj_at_k_refuses_bad_input():
    with pytest.raises(ValueError, match="both correct and wrong"):
        maj_at_k(["7", "7"], [True, False], 1)
    with pytest.raises(ValueError, match="k <= n"):
        maj_at_k(["7"], [True], 2)
    with pytest.raises(ValueError):
        maj_at_k(["7", "8"], [True], 1)


# ------------------------------------------------------------------------- intervals


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_bootstrap_interval_matches_the_normal_one_on_many_prompts():
    rng = np.random.default_rng(3)
    values = (rng.random(4000) < 0.3).astype(float)
    lo, hi = bootstrap_interval(values, n_boot=4000, seed=1)
    se = values.std() / np.sqrt(values.size)
    assert lo == pytest.approx(values.mean() - 1.96 * se, abs=0.003)
    assert hi == pytest.approx(values.mean() + 1.96 * se, abs=0.003)
    assert bootstrap_interval([0.25, 0.25, 0.25]) == (0.25, 0.25)
    assert bootstrap_interval([0.1, 0.9], seed=4) == bootstrap_interval([0.1, 0.9], seed=4)
    with pytest.raises(ValueError):
        bootstrap_interval([])
    with pytest.raises(ValueError):
        bootstrap_interval([1.0], level=1.0)


def test_report_overall_and_per_task_equal_brute_force():
    rng = random.Random(5)
    answers, correct, tasks = [], [], []
    for i in range(12):
        a, c = random_prompt(rng, rng.randint(4, 8))
        answers.append(a)
        correct.append(c)
        tasks.append("x" if i % 3 else "y")
    report = passk_report(correct, [4, 1, 2], answers=answers, tasks=tasks, n_boot=200)
    assert report["n_prompts"] == 12 and report["n_samples"] == sum(map(len, correct))
    assert list(report["pass@k"]) == [1, 2, 4]
    for name, index in (("x", [i for i in range(12) if i % 3]), ("y", [0, 3, 6, 9])):
        part = report["tasks"][name]
        assert part["n_prompts"] == len(index)
        for k in (1, 2, 4):
            want_pass = np.mean([brute_pass(correct[i], k) for i in index])
            want_maj = np.mean([brute_maj(answers[i], correct[i], k) for i in index])
            assert part["pass@k"][k]["mean"] == pytest.approx(want_pass, abs=1e-12)
            assert part["maj@k"][k]["mean"] == pytest.approx(want_maj, abs=1e-12)
            assert part["pass@k"][k]["ci_low"] <= want_pass <= part["pass@k"][k]["ci_high"]
        want_acc = np.mean([sum(correct[i]) / len(correct[i]) for i in index])
        assert part["accuracy"]["mean"] == pytest.approx(want_acc)
    everything = np.mean([brute_pass(c, 2) for c in correct])
    assert report["pass@k"][2]["mean"] == pytest.approx(everything, abs=1e-12)
    no_votes = passk_report(correct, [1], n_boot=10)
    assert "maj@k" not in no_votes and "tasks" not in no_votes
    with pytest.raises(ValueError, match="at least 8 samples"):
        passk_report([[True] * 4], [8])


# -------------------------------------------------------------------------------- CLI


def run(*args):
    result = CliRunner().invoke(app, ["eval", "passk", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_cli_json_equals_brute_force(tmp_path):
    rows = [
        {"prompt": "p1", "samples": ["1", " 2", "1 ", "3"], "reference": "1", "task": "a"},
        {"prompt": "p2", "samples": ["x", "y", "y", "z"], "correct": [False, True, True, False],
         "task": "b"},
        {"prompt": "p3", "samples": ["u", "v", "w", "u"], "correct": [True, False, True, True],
         "answers": ["7", None, "7", "7"], "task": "b"},
    ]
    path = write(tmp_path / "s.jsonl", rows)
    code, out, _ = run(path, "--k", "4,1,2", "--json", "--bootstrap", "100")
    assert code == 0
    r = json.loads(out)
    assert r["ok"] and r["k"] == [1, 2, 4] and r["n_prompts"] == 3 and r["n_samples"] == 12
    flags = [[True, False, True, False], rows[1]["correct"], rows[2]["correct"]]
    votes = [["1", "2", "1", "3"], rows[1]["samples"], rows[2]["answers"]]
    for k in (1, 2, 4):
        want_pass = np.mean([brute_pass(f, k) for f in flags])
        want_maj = np.mean([brute_maj(v, f, k) for v, f in zip(votes, flags, strict=True)])
        assert r["pass@k"][str(k)]["mean"] == pytest.approx(want_pass, abs=1e-9)
        assert r["maj@k"][str(k)]["mean"] == pytest.approx(want_maj, abs=1e-9)
        b = np.mean([brute_maj(v, f, k) for v, f in zip(votes[1:], flags[1:], strict=True)])
        assert r["tasks"]["b"]["maj@k"][str(k)]["mean"] == pytest.approx(b, abs=1e-9)
    code, out, _ = run(path, "--k", "1,2")
    assert code == 0 and "pass@k" in out and "b: 2 prompts" in out


def test_cli_lab_task_checker(tmp_path):
    rows = [{"prompt": "calc: 3 + 4 * 2 =", "samples": ["1 1", "1 4", "0 1 1", "x"]}]
    code, out, _ = run(write(tmp_path / "a.jsonl", rows), "--k", "1,2", "--lab-task", "arith",
                       "--json")
    assert code == 0
    r = json.loads(out)
    # "1 1" and "0 1 1" are both the value 11 (right), "1 4" wrong, "x" unparsed (no vote)
    assert r["pass@k"]["1"]["mean"] == pytest.approx(0.5)
    assert r["maj@k"]["2"]["mean"] == pytest.approx(brute_maj([11, 14, 11, None],
                                                              [True, False, True, False], 2))
    code, _, err = run(tmp_path / "a.jsonl", "--lab-task", "sort", "--k", "1")
    assert code == 2 and "--lab-task" in err


@pytest.mark.parametrize("row, field", [
    ({"samples": ["1"], "reference": "1"}, "prompt"),
    ({"prompt": "p", "reference": "1"}, "samples"),
    ({"prompt": "p", "samples": "1 2", "reference": "1"}, "samples"),
    ({"prompt": "p", "samples": ["1", 2], "reference": "1"}, "samples"),
    ({"prompt": "p", "samples": ["1", "2"]}, "correct"),
    ({"prompt": "p", "samples": ["1", "2"], "correct": [True]}, "correct"),
    ({"prompt": "p", "samples": ["1", "2"], "correct": [1, 0]}, "correct"),
    ({"prompt": "p", "samples": ["1", "1"], "correct": [True, False]}, "correct"),
    ({"prompt": "p", "samples": ["1", "2"], "reference": 1}, "reference"),
    ({"prompt": "p", "samples": ["1", "2"], "reference": "1", "answers": ["1"]}, "answers"),
    ({"prompt": "p", "samples": ["1", "2"], "reference": "1", "task": 3}, "task"),
    ({"prompt": "p", "samples": ["1"], "reference": "1"}, "samples"),  # fewer than k = 2
])
def test_cli_bad_input_names_line_and_field(tmp_path, row, field):
    good = {"prompt": "q", "samples": ["1", "2"], "reference": "1"}
    path = write(tmp_path / "bad.jsonl", [good, row])
    code, out, err = run(path, "--k", "1,2", "--json")
    assert code == 2
    detail = json.loads(out)["detail"]
    assert detail["line"] == 2 and detail["field"] == field
    assert f"{path}:2" in err and field in err


def test_cli_bad_file_and_k(tmp_path):
    path = write(tmp_path / "s.jsonl", ['{"prompt": "p", "samples": ["1"], "reference": "1"}',
                                        "{not json"])
    code, out, _ = run(path, "--k", "1", "--json")
    assert code == 2 and json.loads(out)["detail"]["line"] == 2
    code, _, err = run(write(tmp_path / "empty.jsonl", []), "--k", "1")
    assert code == 2 and "at least one record" in err
    for bad in ("0", "a,b", ""):
        code, _, err = run(path, "--k", bad)
        assert code == 2 and "--k" in err
    code, _, _ = run(tmp_path / "missing.jsonl", "--k", "1")
    assert code == 2


def test_cli_reads_parquet_and_names_its_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"prompt": "p", "samples": ["1", "2"], "correct": [True, False]},
            {"prompt": "q", "samples": ["1", "1"], "correct": [True, True]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    code, out, _ = run(tmp_path / "s.parquet", "--k", "1,2", "--json", "--bootstrap", "10")
    assert code == 0 and json.loads(out)["pass@k"]["2"]["mean"] == pytest.approx(1.0)
    assert json.loads(out)["pass@k"]["1"]["mean"] == pytest.approx(0.75)
    rows[1]["correct"] = [True, False]  # "1" both right and wrong
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    code, out, err = run(tmp_path / "bad.parquet", "--k", "1", "--json")
    assert code == 2 and json.loads(out)["detail"]["row"] == 2 and "row 2" in err
