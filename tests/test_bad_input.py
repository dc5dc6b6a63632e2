"""The bad-input matrix (issue 12): every reader x every defect x every command that reads
feedback data. A malformed input exits with 2 and one message naming the file (or the shard of
a dataset folder), the record where there is one and the field where there is one; a valid
input exits with 0; no traceback anywhere, and ``--json`` prints one JSON object.

Readers: JSONL, JSON array, Parquet, Hugging Face dataset folder, ``FOLDER::split`` of a
DatasetDict folder. Commands: ``data validate``, ``data convert``, ``data stats``,
``store import``, ``arena rank``, ``rm score``, ``rm eval``, ``train preference``,
``train online --prompts``. Each command reads the shape it needs (pairs, battles, prompts);
every defect is built from that shape's rows, in record 2 where it is a record's defect. Every
cell passes (the commands that load a model are marked slow)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from prefkit.cli import app

runner = CliRunner()
WORDS = [f"w{i}" for i in range(16)]

# ---------------------------------------------------------------------------------------------
# Shapes: the rows each command reads, and which field a defect breaks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    rows: tuple[dict, ...]
    missing: str  # the field record 2 lacks in the "missing field" defect
    wrong: str  # the field record 2 has as a number in the "wrong type" defect


SHAPES = {
    "pairs": Shape(tuple({"prompt": f"w{i} w{i + 1}", "chosen": f" w{i + 2} w{i + 3}",
                          "rejected": f" w{i + 4}"} for i in range(4)), "rejected", "chosen"),
    "battles": Shape(tuple({"model_a": a, "model_b": b, "winner": w} for a, b, w in (
        ("m1", "m2", "model_a"), ("m2", "m3", "model_b"), ("m1", "m3", "tie"),
        ("m2", "m1", "model_a"), ("m3", "m2", "model_a"), ("m3", "m1", "model_b"))),
        "winner", "model_a"),
    "prompts": Shape(tuple({"prompt": f"w{i} w{i + 2}"} for i in range(4)), "prompt", "prompt"),
}

# ---------------------------------------------------------------------------------------------
# Readers: write rows (or raw bytes) in each source kind
# ---------------------------------------------------------------------------------------------


def _jsonl(rows: list[dict], path: Path) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return str(path)


def _json(rows: list[dict], path: Path) -> str:
    path.write_bytes(b"[\n" + b",\n".join(orjson.dumps(r) for r in rows) + b"\n]\n")
    return str(path)


def _parquet(rows: list[dict], path: Path) -> str:
    from prefkit.data.io import write_parquet_rows

    write_parquet_rows(rows, path)
    return str(path)


def _hf(rows: list[dict], path: Path) -> str:
    from prefkit.data.io import write_dataset_rows

    write_dataset_rows(rows, path)
    return str(path)


def _hf_dict(rows: list[dict], path: Path, split: str = "train") -> str:
    from prefkit.data.io import write_dataset_rows

    path.mkdir()
    write_dataset_rows(rows, path / "train")
    write_dataset_rows(rows[:2], path / "test")
    (path / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    return f"{path}::{split}"


READERS: dict[str, tuple[str, Callable[[list[dict], Path], str]]] = {
    "jsonl": ("data.jsonl", _jsonl),
    "json": ("data.json", _json),
    "parquet": ("data.parquet", _parquet),
    "hf": ("data_hf", _hf),
    "hf_split": ("data_dd", _hf_dict),
}


def _raw_line(reader: str, rows: list[dict], path: Path, raw: bytes) -> str:
    """Record 2 replaced by raw bytes (JSONL line or JSON array element)."""
    parts = [orjson.dumps(r) for r in rows]
    parts[1] = raw
    if reader == "jsonl":
        path.write_bytes(b"\n".join(parts) + b"\n")
    else:
        path.write_bytes(b"[\n" + b",\n".join(parts) + b"\n]\n")
    return str(path)


def _nest(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# ---------------------------------------------------------------------------------------------
# Inputs: (reader, defect) -> a file, the record and field its message must name
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    name: str
    reader: str
    build: Callable[[Shape, Path], str]
    record: int | None = None  # the record the message names
    field: str | None = None  # "missing" / "wrong" (the shape's field) or a literal field
    valid: bool = False


def _rows_input(reader: str, change: Callable[[list[dict], Shape], None]):
    def build(shape: Shape, folder: Path) -> str:
        rows = [dict(r) for r in shape.rows]
        change(rows, shape)
        name, write = READERS[reader]
        return write(rows, folder / name)

    return build


def _raw_input(reader: str, raw: Callable[[Shape], bytes]):
    def build(shape: Shape, folder: Path) -> str:
        return _raw_line(reader, list(shape.rows), folder / READERS[reader][0], raw(shape))

    return build


def _drop(rows, shape):
    del rows[1][shape.missing]


def _wrong(rows, shape):
    rows[1][shape.wrong] = 3


def _deep_field(rows, shape):
    rows[1]["meta"] = _nest(40)


def _unchanged(rows, shape):
    pass


def _deep_parquet(shape: Shape, folder: Path) -> str:
    """A Parquet schema nested deeper than pyarrow reads (200 list levels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {k: [r.get(k) for r in shape.rows] for k in shape.rows[0]}
    value_type = pa.int64()
    for _ in range(200):
        value_type = pa.list_(value_type)
    columns["meta"] = pa.array([None] * len(shape.rows), type=value_type)
    path = folder / "deep.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


def _int_column_parquet(shape: Shape, folder: Path) -> str:
    """A typed Parquet file whose column has the wrong type in every row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {k: [r.get(k) for r in shape.rows] for k in shape.rows[0]}
    columns[shape.wrong] = list(range(len(shape.rows)))
    path = folder / "typed.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


def _empty_file(name: str, content: bytes):
    def build(shape: Shape, folder: Path) -> str:
        path = folder / name
        path.write_bytes(content)
        return str(path)

    return build


def _empty_parquet(shape: Shape, folder: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "empty.parquet"
    pq.write_table(pa.table({k: pa.array([], pa.string()) for k in shape.rows[0]}), path)
    return str(path)


def _empty_dataset(shape: Shape, folder: Path) -> str:
    import datasets

    path = folder / "empty_hf"
    datasets.Dataset.from_dict({k: [] for k in shape.rows[0]}).save_to_disk(str(path))
    return str(path)


def _empty_folder(shape: Shape, folder: Path) -> str:
    path = folder / "empty_dir"
    path.mkdir()
    return str(path)


def _corrupt_parquet(shape: Shape, folder: Path) -> str:
    path = folder / "corrupt.parquet"
    path.write_bytes(b"not parquet at all" * 10)
    return str(path)


def _truncated_parquet(shape: Shape, folder: Path) -> str:
    path = Path(_parquet(list(shape.rows), folder / "truncated.parquet"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _corrupt_shard(shape: Shape, folder: Path) -> str:
    path = Path(_hf(list(shape.rows), folder / "shard_hf"))
    for shard in path.glob("*.arrow"):
        shard.write_bytes(b"garbage" * 20)
    return str(path)


def _missing_split(shape: Shape, folder: Path) -> str:
    return _hf_dict(list(shape.rows), folder / "data_dd", split="validation")


def _no_split(shape: Shape, folder: Path) -> str:
    return _hf_dict(list(shape.rows), folder / "data_dd").split("::")[0]


def _split_of_a_file(shape: Shape, folder: Path) -> str:
    return _jsonl(list(shape.rows), folder / "data.jsonl") + "::train"


def _unknown_columns(shape: Shape, folder: Path) -> str:
    rows = [{"question": "w1", "answer": "w2"} for _ in range(3)]
    return _jsonl(rows, folder / "data.jsonl")


INPUTS: list[Input] = [
    *(Input(f"{r}-valid", r, _rows_input(r, _unchanged), valid=True) for r in READERS),
    *(Input(f"{r}-missing-field", r, _rows_input(r, _drop), 2, "missing") for r in READERS),
    *(Input(f"{r}-wrong-type", r, _rows_input(r, _wrong), 2, "wrong") for r in READERS),
    *(Input(f"{r}-nested-40", r, _rows_input(r, _deep_field),
            2 if r in ("jsonl", "json") else None, "meta") for r in READERS),
    *(Input(f"{r}-malformed-json", r, _raw_input(r, lambda s: b'{"prompt": "w1", "chosen": '),
            2) for r in ("jsonl", "json")),
    *(Input(f"{r}-non-utf8", r, _raw_input(r, lambda s: b'{"prompt": "caf\xe9 \xff"}'), 2)
      for r in ("jsonl", "json")),
    *(Input(f"{r}-nested-100k", r, _raw_input(
        r, lambda s: b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 2)
      for r in ("jsonl", "json")),
    *(Input(f"{r}-not-an-object", r, _raw_input(r, lambda s: b'["w1", "w2"]'), 2)
      for r in ("jsonl", "json")),
    Input("jsonl-unknown-columns", "jsonl", _unknown_columns, 1),
    Input("jsonl-empty-file", "jsonl", _empty_file("empty.jsonl", b"")),
    Input("jsonl-blank-lines", "jsonl", _empty_file("blank.jsonl", b"\n\n  \n")),
    Input("json-empty-array", "json", _empty_file("empty.json", b"[]\n")),
    Input("json-unclosed-array", "json", _empty_file("open.json", b'[{"prompt": "w1"}')),
    Input("parquet-empty", "parquet", _empty_parquet),
    Input("parquet-corrupt", "parquet", _corrupt_parquet),
    Input("parquet-truncated", "parquet", _truncated_parquet),
    Input("parquet-schema-too-deep", "parquet", _deep_parquet),
    Input("parquet-typed-wrong-column", "parquet", _int_column_parquet, None, "wrong"),
    Input("hf-empty-dataset", "hf", _empty_dataset),
    Input("hf-empty-folder", "hf", _empty_folder),
    Input("hf-corrupt-shard", "hf", _corrupt_shard),
    Input("hf_split-missing-split", "hf_split", _missing_split),
    Input("hf_split-no-split-given", "hf_split", _no_split),
    Input("jsonl-split-of-a-file", "jsonl", _split_of_a_file),
]
INPUT_BY_NAME = {i.name: i for i in INPUTS}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    shape: str
    args: Callable[[str, Path, dict], list[str]]
    model: bool = False  # needs the tiny models: slow-marked (the cheap cells take < 30 s)


COMMANDS = [
    Command("data validate", "pairs", lambda f, t, m: ["data", "validate", f]),
    Command("data convert", "pairs",
            lambda f, t, m: ["data", "convert", f, str(t / "out.jsonl"), "--to", "prefkit"]),
    Command("data stats", "pairs", lambda f, t, m: ["data", "stats", f]),
    Command("store import", "pairs",
            lambda f, t, m: ["store", "import", f, "--db", str(t / "store.db")]),
    Command("arena rank", "battles",
            lambda f, t, m: ["arena", "rank", f, "--bootstrap", "5"]),
    Command("rm score", "pairs",
            lambda f, t, m: ["rm", "score", m["rm"], f, "--out", str(t / "scores.jsonl")],
            model=True),
    Command("rm eval", "pairs", lambda f, t, m: ["rm", "eval", m["rm"], f], model=True),
    Command("train preference", "pairs", lambda f, t, m: [
        "train", "preference", "--model", m["policy"], "--data", f, "--max-steps", "1",
        "--batch-size", "2", "--output-dir", str(t / "run"), "--set", "save_steps=0",
        "--set", "save_final=false", "--set", f"reference_cache={t / 'cache'}"],
        model=True),
    Command("train online", "prompts", lambda f, t, m: [
        "train", "online", "--model", m["policy"], "--prompts", f, "--reward", f"rm:{m['rm']}",
        "--algo", "grpo", "--iterations", "1", "--prompts-per-iteration", "2",
        "--set", "num_generations=2", "--set", "max_new_tokens=4",
        "--output-dir", str(t / "run"), "--set", "save_steps=0", "--set", "save_final=false"],
        model=True),
]

def _cells():
    for command in COMMANDS:
        for item in INPUTS:
            marks = [pytest.mark.slow] if command.model else []
            yield pytest.param(command, item, marks=marks,
                               id=f"{command.name.replace(' ', '-')}:{item.name}")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """A tiny policy file (random 1-layer Llama over a word-level tokenizer) and a saved
    scalar reward model on the same tokenizer."""
    from prefkit.models.tokenizer import word_level_tokenizer
    from prefkit.rewards import RewardModel

    root = tmp_path_factory.mktemp("bad_input_models")
    word_level_tokenizer(WORDS).save_pretrained(str(root / "tok"))
    policy = root / "tiny.json"
    policy.write_text(json.dumps({"tokenizer": "tok", "hidden_size": 16, "num_layers": 1,
                                  "num_heads": 2, "intermediate_size": 32,
                                  "max_position_embeddings": 64}))
    model, tokenizer = RewardModel.from_spec(policy, head="scalar", seed=0)
    model.save_pretrained(root / "rm", tokenizer=tokenizer)
    return {"policy": str(policy), "rm": str(root / "rm")}


def _record_pattern(n: int) -> re.Pattern:
    return re.compile(rf"(:{n}\b|\b(line|record|row) {n}\b)")


@pytest.mark.parametrize(("command", "item"), list(_cells()))
def test_bad_input_matrix(command: Command, item: Input, tmp_path, request):
    shape = SHAPES[command.shape]
    source = item.build(shape, tmp_path)
    tools = request.getfixturevalue("models") if command.model else {}
    result = runner.invoke(app, [*command.args(source, tmp_path, tools), "--json"])
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    payload = json.loads(result.stdout)  # one JSON object, nothing else on stdout
    assert isinstance(payload, dict)
    if item.valid:
        assert result.exit_code == 0, output[-3000:]
        return
    assert result.exit_code == 2, output[-3000:]
    assert payload.get("ok") is False, payload
    message = json.dumps(payload) + result.stderr
    named = Path(source.split("::")[0]).name
    assert named in message, (named, message[-2000:])
    if item.record is not None:
        assert _record_pattern(item.record).search(message), message[-2000:]
    if item.field is not None:
        field = getattr(shape, item.field) if item.field in ("missing", "wrong") else item.field
        assert f"'{field}'" in message or f'"{field}"' in message, message[-2000:]


def test_the_matrix_covers_every_reader_defect_and_command():
    assert len(INPUTS) >= 40 and len({i.reader for i in INPUTS}) == 5
    assert sum(not i.valid for i in INPUTS) >= 35
    assert [c.name for c in COMMANDS] == [
        "data validate", "data convert", "data stats", "store import", "arena rank",
        "rm score", "rm eval", "train preference", "train online"]


@pytest.mark.slow
def test_online_prompts_txt_with_non_utf8_bytes_names_file_and_line(models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"w1 w2\nw3\nw4 \xfe w5\n")
    train_online = COMMANDS[-1]
    assert train_online.name == "train online"
    result = runner.invoke(app, [*train_online.args(str(prompts), tmp_path, models), "--json"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["error"] == (
        f"{prompts}:3: [non_utf8] expected UTF-8 text, got 'byte 0xfe at byte 3 of the line'")
