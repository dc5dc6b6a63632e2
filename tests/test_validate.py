"""`prefkit data validate`: one bad-input test per error class (message content + exit code 2),
--skip-invalid side files, and exact duplicate detection."""

import json
import random

import orjson
import pytest
from typer.testing import CliRunner

from prefkit.commands.data import app
from prefkit.data import validate as validate_mod
from prefkit.data.dedupe import DuplicateFinder
from prefkit.data.validate import validate_file

runner = CliRunner()
GOOD = [
    b'{"prompt": "sort: 2 1", "chosen": "1 2", "rejected": "2 1"}\n',
    b'{"prompt": "sort: 4 3", "chosen": "3 4", "rejected": "4 3"}\n',
    b'{"prompt": "sort: 6 5", "chosen": "5 6", "rejected": "6 5"}\n',
]


def _file(tmp_path, bad: bytes, name="data.jsonl", good=GOOD):
    path = tmp_path / name
    path.write_bytes(good[0] + good[1] + bad + good[2])
    return path


def _run(*args):
    return runner.invoke(app, ["validate", *map(str, args)])


CASES = [
    # (error class, bad line, field named, words in "expected", file name)
    ("malformed_json", b'{"prompt": "x", "chosen": "a",\n', None, "JSON object", "data.jsonl"),
    ("non_utf8", b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n', None, "UTF-8",
     "data.jsonl"),
    ("missing_field", b'{"prompt": "x", "chosen": "a"}\n', "rejected", "text", "data.jsonl"),
    ("empty_field", b'{"prompt": "  ", "chosen": "a", "rejected": "b"}\n', "prompt", "non-empty",
     "data.jsonl"),
    ("wrong_type", b'{"prompt": "x", "chosen": 3, "rejected": "b"}\n', "chosen", "text",
     "data.jsonl"),
    ("identical_responses", b'{"prompt": "x", "chosen": "same", "rejected": "same"}\n',
     "rejected", "different from 'chosen'", "data.jsonl"),
    ("duplicate_record", GOOD[0], None, "not identical to line 1", "data.jsonl"),
    ("too_deep", b'{"prompt": "x", "chosen": "a", "rejected": "b", "meta": '
     + b"[" * 50 + b"]" * 50 + b"}\n", "meta", "nested at most 32 levels", "data.jsonl"),
    ("too_deep", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", None,
     "nested at most 32 levels", "data.jsonl"),
]

OUTCOME_GOOD = [
    b'{"model_a": "m1", "model_b": "m2", "winner": "model_a"}\n',
    b'{"model_a": "m2", "model_b": "m3", "winner": "tie"}\n',
    b'{"model_a": "m1", "model_b": "m3", "winner": "tie (bothbad)"}\n',
]
RANK_GOOD = [
    b'{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]}\n',
    b'{"prompt": "q", "responses": ["a", "b", "c"], "ranking": [[0, 1], 2]}\n',
    b'{"prompt": "r", "responses": ["a", "b", "c"], "ranking": [2, 0]}\n',
]


@pytest.mark.parametrize("code,bad,field,expected,name", CASES)
def test_each_error_class(tmp_path, code, bad, field, expected, name):
    path = _file(tmp_path, bad, name)
    result = _run(path, "--json")
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert report["invalid"] == 1 and report["valid"] == 3
    [error] = report["errors"]
    assert error["code"] == code
    assert error["line"] == 3 and error["file"] == str(path)
    assert error["field"] == field
    assert expected in error["expected"]
    assert f"{path}:3" in error["message"]
    # human mode names the same place on stderr, same exit code
    human = _run(path)
    assert human.exit_code == 2
    assert f"{path}:3" in human.output


def test_unknown_outcome(tmp_path):
    path = _file(tmp_path, b'{"model_a": "m1", "model_b": "m2", "winner": "draw"}\n',
                 good=OUTCOME_GOOD)
    result = _run(path, "--json")
    assert result.exit_code == 2
    [error] = json.loads(result.stdout)["errors"]
    assert error["code"] == "unknown_outcome" and error["field"] == "winner"
    assert "'tie (bothbad)'" in error["expected"] and "draw" in error["got"]
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text('{"instruction": "i", "output_1": "a", "output_2": "b", "preference": 3}\n')
    err = json.loads(_run(alpaca, "--json").stdout)["errors"][0]
    assert err["code"] == "unknown_outcome" and err["field"] == "preference"


@pytest.mark.parametrize("ranking,code,expected", [
    ("[0, 3, 1]", "ranking_index_out_of_range", "an index in 0..2"),
    ("[0, [1, 0]]", "ranking_index_repeated", "each index at most once"),
    ("[-1, 0]", "ranking_index_out_of_range", "an index in 0..2"),
])
def test_ranking_indices(tmp_path, ranking, code, expected):
    bad = b'{"prompt": "p", "responses": ["a", "b", "c"], "ranking": ' + ranking.encode() + b"}\n"
    path = _file(tmp_path, bad, good=RANK_GOOD)
    result = _run(path, "--json")
    assert result.exit_code == 2
    [error] = json.loads(result.stdout)["errors"]
    assert error["code"] == code and error["field"].startswith("ranking[")
    assert expected in error["expected"]


def test_skip_invalid_keeps_good_and_rejects_exact_bytes(tmp_path):
    lines = list(GOOD)
    bad = [
        b'{"prompt": "x", "chosen": "a",\n',
        b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\r\n',
        b'{"prompt": "x", "chosen": "same", "rejected": "same"}\n',
        GOOD[1],  # duplicate
        b'[1, 2, 3]\n',
    ]
    mixed = [lines[0], bad[0], lines[1], bad[1], bad[2], lines[2], bad[3], bad[4]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"".join(mixed))
    result = _run(path, "--skip-invalid", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["valid"], report["invalid"]) == (3, 5)
    kept = (tmp_path / "mixed.valid.jsonl").read_bytes()
    rejected = (tmp_path / "mixed.rejected.jsonl").read_bytes()
    assert kept == b"".join(GOOD)
    assert sorted(rejected.splitlines(keepends=True)) == sorted(bad)


def test_parquet_errors_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z", "y"]}),
                   path)
    result = _run(path, "--json")
    assert result.exit_code == 2
    [error] = json.loads(result.stdout)["errors"]
    assert error["row"] == 2 and error["code"] == "identical_responses"


def test_duplicate_ids_and_missing_file(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b'{"prompt": "a", "chosen": "x", "rejected": "y", "id": "r1"}\n'
                     b'{"prompt": "b", "chosen": "x", "rejected": "y", "id": "r1"}\n')
    error = json.loads(_run(path, "--json").stdout)["errors"][0]
    assert error["code"] == "duplicate_record" and error["field"] == "id"
    assert "first used at line 1" in error["expected"]
    missing = _run(tmp_path / "nope.jsonl", "--json")
    assert missing.exit_code == 2 and "no such file" in json.loads(missing.stdout)["error"]


def test_duplicates_exact_even_with_a_saturated_bloom_filter(tmp_path, monkeypatch):
    """A tiny Bloom filter makes almost every record a candidate; the exact second pass must
    still report exactly the true duplicates."""
    rng = random.Random(0)
    lines, expected = [], set()
    seen = {}
    for i in range(3000):
        j = rng.randrange(2000)  # repeats with probability ~1/3
        line = orjson.dumps({"prompt": f"p{j}", "chosen": "a", "rejected": "b"}) + b"\n"
        if line in seen:
            expected.add(i + 1)
        else:
            seen[line] = i + 1
        lines.append(line)
    path = tmp_path / "dups.jsonl"
    path.write_bytes(b"".join(lines))
    monkeypatch.setattr(validate_mod, "DuplicateFinder", lambda: DuplicateFinder(bits=1 << 10))
    report = validate_file(path, max_errors=10**6)
    assert {e.line for e in report.errors} == expected
    monkeypatch.undo()
    assert {e.line for e in validate_file(path, max_errors=10**6).errors} == expected


def test_json_array_streaming(tmp_path, monkeypatch):
    from prefkit.data import io

    monkeypatch.setattr(io, "JSON_CHUNK_CHARS", 7)  # objects span many chunks
    rows = [{"model_a": f"m{i}", "model_b": "z", "winner": "model_a"} for i in range(50)]
    path = tmp_path / "battles.json"
    path.write_text(json.dumps(rows, indent=2))
    assert [r.model_a for r in io.read_records(path)] == [f"m{i}" for i in range(50)]
    truncated = tmp_path / "cut.json"
    truncated.write_text(json.dumps(rows)[:-30])
    report = validate_file(truncated)
    assert report.error_counts["malformed_json"] == 1 and report.valid == 49


def test_parallel_validation_equals_sequential(tmp_path):
    """Two workers over byte ranges report exactly what one process does, including
    duplicates that cross the range boundary."""
    rng = random.Random(1)
    lines = []
    for i in range(4000):
        j = rng.randrange(3000)
        lines.append(orjson.dumps({"prompt": f"p{j}", "chosen": "a", "rejected": "b"}) + b"\n")
        if i % 500 == 7:
            lines.append(b'{"prompt": "x", "chosen": "same", "rejected": "same"}\n')
        if i % 900 == 3:
            lines.append(b"{broken\n")
    lines.append(lines[0])  # a duplicate of line 1 at the very end (other worker)
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"".join(lines))
    one = validate_file(path, workers=1, max_errors=10**6).to_dict()
    two = validate_file(path, workers=2, max_errors=10**6).to_dict()
    assert one["invalid"] > 1000 and one["error_counts"]["duplicate_record"] > 900
    assert two == one


def test_an_empty_file_is_bad_input(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = _run(path, "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["detail"]["code"] == "no_records" and payload["detail"]["file"] == str(path)


def test_side_files_are_checked_before_reading(tmp_path):
    path = _file(tmp_path, b'{"prompt": "x"}\n')
    before = path.read_bytes()
    for args, words in (
        (["--output", path], "--output is the input file"),
        (["--rejected", path], "--rejected is the input file"),
        (["--output", tmp_path / "o.jsonl", "--rejected", tmp_path / "o.jsonl"],
         "--rejected is also --output"),
        (["--output", path / "o.jsonl"], "is a file, not a folder"),
        (["--rejected", "/proc/prefkit-test/r.jsonl"], "cannot create files in /proc"),
    ):
        result = _run(path, "--skip-invalid", *args, "--json")
        assert result.exit_code == 2, result.output
        assert words in json.loads(result.stdout)["error"]
        assert "Traceback" not in result.output
    assert path.read_bytes() == before  # the input was never opened for writing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_skip_invalid_rejects_json_array_records_byte_for_byte(tmp_path):
    path = tmp_path / "a.json"
    bad_bytes = b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'
    path.write_bytes(b"[" + GOOD[0].strip() + b",\n" + bad_bytes + b', "text",\n'
                     + GOOD[1].strip() + b"]")
    result = _run(path, "--skip-invalid", "--output", tmp_path / "ok.jsonl", "--rejected",
                  tmp_path / "bad.jsonl", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(e["record"], e["code"]) for e in report["errors"]] == [
        (2, "non_utf8"), (3, "wrong_type")]
    assert (tmp_path / "bad.jsonl").read_bytes() == bad_bytes + b'\n"text"\n'
    assert len((tmp_path / "ok.jsonl").read_bytes().splitlines()) == 2
