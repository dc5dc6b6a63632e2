"""Readers and writers on bad sources and outputs (issue 12 items 8-9): every problem is a
RecordError / OutputPathError naming the file (or shard), the record and the field where there
are ones; nothing crashes with a RecursionError or a pyarrow / datasets exception; outputs that
cannot be written fail before any work and create nothing."""

from __future__ import annotations

import json
import os

import orjson
import pytest

from prefkit.data import io
from prefkit.data.battles import aggregate_battle_file, load_battle_arrays
from prefkit.data.errors import (
    NO_RECORDS,
    NON_UTF8,
    TOO_DEEP,
    UNKNOWN_SPLIT,
    UNREADABLE_FILE,
    WRONG_TYPE,
    OutputPathError,
    RecordError,
)
from prefkit.data.io import (
    MAX_NESTING,
    check_output_path,
    iter_rows,
    read_records,
    too_deep,
    write_dataset_rows,
    write_parquet_rows,
    write_records,
)

PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}


def _nest(depth: int) -> list:
    """Arrays nested ``depth`` levels."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _errors(source, **kw):
    return [(r.line, r.error) for r in iter_rows(source, **kw) if r.error is not None]


def _raises(source, **kw) -> RecordError:
    with pytest.raises(RecordError) as info:
        list(read_records(source, **kw))
    return info.value


# ---------------------------------------------------------------------------------------------
# Nesting
# ---------------------------------------------------------------------------------------------


def test_too_deep_is_iterative_and_exact():
    assert not too_deep(_nest(MAX_NESTING)) and too_deep(_nest(MAX_NESTING + 1))
    assert not too_deep({"a": [{"b": 1}]}, 3) and too_deep({"a": [{"b": {}}]}, 3)
    assert too_deep(_nest(200_000))  # no RecursionError
    # a native row's metadata object holds extra columns: its values count as top-level fields
    assert io.deep_field({"metadata": {"x": _nest(MAX_NESTING - 1)}}) is None
    assert io.deep_field({"metadata": {"x": _nest(MAX_NESTING)}}) == "metadata.x"
    assert io.deep_field({"p": "t", "x": _nest(MAX_NESTING)}) == "x"


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deep_jsonl_line_names_line_and_field(tmp_path, depth):
    path = tmp_path / "deep.jsonl"
    deep = b"[" * depth + b"]" * depth
    path.write_bytes(orjson.dumps(PAIR) + b"\n" + b'{"prompt": "p", "chosen": "a", '
                     b'"rejected": "b", "meta": ' + deep + b"}\n" + orjson.dumps(PAIR) + b"\n")
    [(line, error)] = _errors(path)
    assert (line, error.code, error.line) == (2, TOO_DEEP, 2)
    assert f"at most {MAX_NESTING} levels" in str(error)
    assert error.field == ("meta" if depth == 40 else None)  # orjson stops past 1024 levels
    assert str(error).startswith(f"{path}:2: [too_deep]")


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deep_json_array_record(tmp_path, depth):
    path = tmp_path / "deep.json"
    deep = b"[" * depth + b"]" * depth
    path.write_bytes(b"[" + orjson.dumps(PAIR) + b", {\"prompt\": " + deep + b"}, "
                     + orjson.dumps(PAIR) + b"]")
    errors = _errors(path)
    assert [(line, e.code, e.row_kind) for line, e in errors] == [(2, TOO_DEEP, "record")]
    assert f"{path} record 2: [too_deep]" in str(errors[0][1])
    rows = list(iter_rows(path))
    # a record the parser could read is skipped and reading goes on; past the parser's own
    # recursion limit the end of the record is unknown, so reading stops there
    assert len(rows) == (3 if depth == 40 else 2)


def test_parquet_schema_deeper_than_pyarrow_reads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    value_type = pa.int64()
    for _ in range(200):
        value_type = pa.list_(value_type)
    path = tmp_path / "deep.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "x": pa.array([None], type=value_type)}), path)
    error = _raises(path)
    assert (error.source, error.code) == (str(path), UNREADABLE_FILE)
    assert "too deeply nested" in str(error)


def test_arrow_columns_nested_too_deep_name_the_column(tmp_path):
    rows = [dict(PAIR, meta=_nest(40)), dict(PAIR, prompt="q")]
    write_parquet_rows(rows, tmp_path / "d.parquet")
    write_dataset_rows(rows, tmp_path / "d_hf")
    for source in (tmp_path / "d.parquet", tmp_path / "d_hf"):
        error = _raises(source)
        assert (error.source, error.code, error.field) == (str(source), TOO_DEEP, "meta")


def test_json_text_columns_are_checked_like_jsonl(tmp_path):
    """prefkit's Parquet writer stores mixed-type columns as JSON text: decoded per row, with
    the same checks (depth, malformed text) and the row number."""
    rows = [dict(PAIR, meta="text"), dict(PAIR, meta=_nest(40)), dict(PAIR, meta=[1])]
    write_parquet_rows(rows, tmp_path / "mixed.parquet")
    [(line, error)] = _errors(tmp_path / "mixed.parquet")
    assert (line, error.code, error.field, error.row_kind) == (2, TOO_DEEP, "meta", "row")
    [bad] = [r for r in iter_rows(tmp_path / "mixed.parquet") if r.error]
    assert orjson.loads(bad.raw) == {**PAIR, "meta": orjson.dumps(_nest(40)).decode()}


def test_records_at_the_nesting_limit_round_trip_through_every_writer(tmp_path):
    """What the readers accept, every writer holds (Parquet reads ~49 list levels)."""
    deep = _nest(MAX_NESTING - 1)  # the record itself is level 1
    source = tmp_path / "in.jsonl"
    source.write_bytes(orjson.dumps(dict(PAIR, meta=deep)) + b"\n")
    [record] = read_records(source)
    for name in ("o.jsonl", "o.json", "o.parquet", "o_hf"):
        write_records([record], tmp_path / name)
        [back] = read_records(tmp_path / name)
        assert back == record


# ---------------------------------------------------------------------------------------------
# JSON arrays, empty sources
# ---------------------------------------------------------------------------------------------


def test_json_array_non_utf8_names_the_record_and_reading_goes_on(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'[{"prompt": "p", "chosen": "a", "rejected": "b"},\n'
                     b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"},\n'
                     b'{"prompt": "q", "chosen": "a", "rejected": "b"}]')
    rows = list(iter_rows(path))
    assert [r.line for r in rows] == [1, 2, 3]
    assert [r.error.code if r.error else None for r in rows] == [None, NON_UTF8, None]
    assert str(rows[1].error) == f"{path} record 2: [non_utf8] expected UTF-8 text, got byte " \
                                 "0xe9 in the record"


def test_json_array_elements_of_the_wrong_type(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"prompt": "p"}, "text", [1, 2]]')
    assert [(line, e.code) for line, e in _errors(path)] == [(2, WRONG_TYPE), (3, WRONG_TYPE)]


@pytest.mark.parametrize(("name", "content"), [
    ("e.jsonl", b""), ("blank.jsonl", b"\n \n"), ("e.json", b"[ ]"), ("e.json", b""),
])
def test_empty_files_have_no_records(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    error = _raises(path)
    assert (error.source, error.code) == (str(path), NO_RECORDS)
    assert str(error) == f"{path}: [no_records] expected at least one record, got none (empty)"


def test_empty_parquet_and_dataset_have_no_records(tmp_path):
    write_parquet_rows([], tmp_path / "e.parquet")
    write_dataset_rows([], tmp_path / "e_hf")
    for source in (tmp_path / "e.parquet", tmp_path / "e_hf"):
        assert _raises(source).code == NO_RECORDS


# ---------------------------------------------------------------------------------------------
# Parquet files and dataset folders
# ---------------------------------------------------------------------------------------------


def test_corrupt_and_truncated_parquet(tmp_path):
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet" * 20)
    write_parquet_rows([PAIR] * 3, tmp_path / "t.parquet")
    truncated = tmp_path / "t.parquet"
    truncated.write_bytes(truncated.read_bytes()[:100])
    for path in (garbage, truncated):
        error = _raises(path)
        assert (error.source, error.code, error.line) == (str(path), UNREADABLE_FILE, None)
        assert "expected a Parquet file" in str(error)


def test_dataset_folder_problems_name_the_folder_or_the_shard(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    error = _raises(empty)
    assert (error.source, error.code) == (str(empty), UNREADABLE_FILE)
    assert "an empty folder" in str(error)

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert "without state.json" in str(_raises(other))

    write_dataset_rows([PAIR] * 3, tmp_path / "ds")
    [shard] = (tmp_path / "ds").glob("*.arrow")
    shard.write_bytes(b"garbage" * 10)
    error = _raises(tmp_path / "ds")
    assert (error.source, error.code) == (str(shard), UNREADABLE_FILE)


def _dataset_dict(folder, splits=("train", "test")):
    folder.mkdir()
    for split in splits:
        write_dataset_rows([dict(PAIR, prompt=split), dict(PAIR, prompt=[
            {"role": "user", "content": split}])], folder / split)  # a JSON-text column
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder


def test_splits_of_a_dataset_dict_folder(tmp_path):
    folder = _dataset_dict(tmp_path / "dd")
    records = list(read_records(f"{folder}::test"))
    assert [r.prompt for r in records] == ["test", [{"role": "user", "content": "test"}]]
    assert [r.prompt for r in read_records(folder, split="train")][0] == "train"

    missing = _raises(f"{folder}::validation")
    assert (missing.source, missing.code) == (str(folder), UNKNOWN_SPLIT)
    assert str(missing) == (f"{folder}: [unknown_split] expected one of the splits train, "
                            "test, got 'validation'")
    none = _raises(folder)
    assert none.code == UNKNOWN_SPLIT and "the splits are train, test" in str(none)


def test_a_split_of_something_without_splits(tmp_path):
    write_dataset_rows([PAIR], tmp_path / "single")
    assert _raises(f"{tmp_path / 'single'}::train").code == UNKNOWN_SPLIT
    (tmp_path / "p.jsonl").write_bytes(orjson.dumps(PAIR) + b"\n")
    error = _raises(f"{tmp_path / 'p.jsonl'}::train")
    assert error.code == UNKNOWN_SPLIT and "is not a folder" in str(error)


def test_a_missing_source_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        io.check_source_exists(f"{tmp_path / 'nope.jsonl'}")
    with pytest.raises(FileNotFoundError, match="dd: no such file"):
        io.check_source_exists(f"{tmp_path / 'dd'}::train")


# ---------------------------------------------------------------------------------------------
# Battle files (the arena's column fast path)
# ---------------------------------------------------------------------------------------------


def test_battle_parquet_columns_are_checked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"model_a": [1, 2], "model_b": ["x", "y"],
                             "winner": ["model_a", "tie"]}), typed)
    with pytest.raises(RecordError, match="'model_a': expected a column of strings, got a "
                                          "column of int64"):
        aggregate_battle_file(typed)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"model_a": ["a", "b"], "model_b": ["x", "y"],
                             "winner": ["model_a", None]}), nulls)
    with pytest.raises(RecordError, match=r"row 2: \[missing_field\] field 'winner'"):
        aggregate_battle_file(nulls)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({k: pa.array([], pa.string())
                             for k in ("model_a", "model_b", "winner")}), empty)
    with pytest.raises(RecordError, match="no_records"):
        aggregate_battle_file(empty)


def test_battle_parquet_with_json_text_columns_reads_row_by_row(tmp_path):
    """Mixed-type columns are JSON text in prefkit's Parquet: the fast path would read the
    text; the row path decodes and checks each row."""
    rows = [{"model_a": "m1", "model_b": "m2", "winner": "model_a"},
            {"model_a": 3, "model_b": "m2", "winner": "tie"}]
    write_parquet_rows(rows, tmp_path / "b.parquet")
    with pytest.raises(RecordError, match=r"row 2: \[wrong_type\] field 'model_a'"):
        aggregate_battle_file(tmp_path / "b.parquet")


def test_battle_rows_name_the_missing_winner_and_bad_style(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"model_a": "m1", "model_b": "m2", "winner": "model_a"}\n'
                    '{"model_a": "m1", "model_b": "m2"}\n')
    with pytest.raises(RecordError, match=r"b\.jsonl:2: \[unknown_outcome\] field 'winner'"):
        aggregate_battle_file(path)
    path.write_text('{"model_a": "m1", "model_b": "m2", "winner": "model_a", '
                    '"conv_metadata": [1]}\n')
    with pytest.raises(RecordError, match=r":1: \[wrong_type\] field 'conv_metadata'"):
        load_battle_arrays(path, with_style=True)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "reason"), [
    ("/proc/prefkit-test/out.jsonl", "cannot create files in /proc"),
    ("/sys/out.jsonl", "cannot create files in /sys"),  # read-only even for root
])
def test_unwritable_outputs(path, reason):
    with pytest.raises(OutputPathError, match=f"cannot write {path}: {reason}"):
        check_output_path(path)


def test_impossible_outputs_fail_before_any_work_and_create_nothing(tmp_path):
    a_file = tmp_path / "f.jsonl"
    a_file.write_text("x")
    (tmp_path / "dir.jsonl").mkdir()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OutputPathError, match="f.jsonl is a file, not a folder"):
        check_output_path(a_file / "deeper" / "out.jsonl")
    with pytest.raises(OutputPathError, match="it is a folder; expected a file name"):
        check_output_path(tmp_path / "dir.jsonl")
    with pytest.raises(OutputPathError, match="it is a file; expected a folder"):
        check_output_path(a_file, folder=True)

    def records():
        raise AssertionError("read before the output was checked")
        yield

    with pytest.raises(OutputPathError):
        write_records(records(), a_file / "out.jsonl")
    assert sorted(os.listdir(tmp_path)) == before
    assert check_output_path(tmp_path / "new" / "sub" / "o.jsonl") == tmp_path / "new" / \
        "sub" / "o.jsonl"
    assert not (tmp_path / "new").exists()


def test_a_dataset_output_never_replaces_a_folder_of_other_files(tmp_path):
    [record] = read_records(_one_pair(tmp_path))
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "thesis.tex").write_text("precious")
    with pytest.raises(OutputPathError, match="not a dataset folder; refusing to replace it"):
        write_records([record], keep)
    assert (keep / "thesis.tex").read_text() == "precious"
    write_records([record], tmp_path / "ds")
    write_records([record, record], tmp_path / "ds")  # a dataset folder is replaced
    assert len(list(read_records(tmp_path / "ds"))) == 2


def _one_pair(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(PAIR) + b"\n")
    return path


def test_keep_empty_false_writes_nothing_and_keeps_an_existing_file(tmp_path):
    [record] = read_records(_one_pair(tmp_path))
    out = tmp_path / "out.jsonl"
    report = write_records([record], out, "rating", keep_empty=False)
    assert (report.written, report.dropped) == (0, {"comparison record": 1})
    assert not out.exists()
    out.write_text("old\n")
    write_records([record], out, "rating", keep_empty=False)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "out.jsonl"]
    write_records([record], tmp_path / "kept.jsonl", "rating")  # the default keeps it
    assert (tmp_path / "kept.jsonl").read_bytes() == b""


def test_text_lines_name_a_non_utf8_file_and_line(tmp_path):
    from prefkit.train.online import read_prompts

    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffsort: 3 1\r\n\nsort: 2 9\n".encode() + b"ok \xff bad\nlast\n")
    lines = io.iter_text_lines(path)
    assert [next(lines), next(lines), next(lines)] == [(1, "sort: 3 1"), (2, ""),
                                                       (3, "sort: 2 9")]
    with pytest.raises(RecordError) as info:
        next(lines)
    err = info.value
    assert (err.source, err.line, err.code) == (str(path), 4, NON_UTF8)
    assert str(err) == (f"{path}:4: [non_utf8] expected UTF-8 text, "
                        "got 'byte 0xff at byte 3 of the line'")
    # --prompts FILE.txt reads through it (was a UnicodeDecodeError naming neither)
    with pytest.raises(RecordError, match=rf"^{path}:4: \[non_utf8\]"):
        read_prompts(str(path))
    path.write_bytes(b"\xef\xbb\xbf one \n\n two\r\n")
    assert read_prompts(str(path)) == ["one", "two"]


def test_parquet_battles_with_unused_dictionary_values(tmp_path):
    """A dictionary-encoded Parquet column is read as stored (no re-encoding): values its
    dictionary holds but no row uses -- even an empty name or an unknown outcome -- are not
    models, errors or outcomes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefkit.data.battles import load_battle_arrays

    names = pa.array(["m1", "m2", "ghost", ""])
    outcomes = pa.array(["model_a", "model_b", "tie", "bogus"])

    def encoded(codes, values):
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), values)

    path = tmp_path / "votes.parquet"
    pq.write_table(pa.table({"model_a": encoded([0, 1, 0, 1], names),
                             "model_b": encoded([1, 0, 1, 0], names),
                             "winner": encoded([0, 1, 2, 0], outcomes)}), path)
    arrays = load_battle_arrays(str(path))
    assert arrays.models == ["m1", "m2"]
    assert arrays.a.tolist() == [0, 1, 0, 1] and arrays.b.tolist() == [1, 0, 1, 0]
    assert arrays.outcome.tolist() == [0, 1, 2, 0]
