"""Every format -> records -> the same format is lossless, through every kind of file."""

import orjson
import pytest

from prefkit.data.errors import FieldError, Unrepresentable
from prefkit.data.formats import FORMATS, detect_format, split_shared_prompt
from prefkit.data.io import detect_source_format, iter_rows, read_records, write_records
from prefkit.data.records import Battle, Comparison, Outcome, Ranking, record_id, to_dict
from prefkit.demo import EXAMPLES, example_path

EXPECTED_FORMAT = {
    "pairs.jsonl": "trl-preference",
    "pairs_implicit.jsonl": "trl-preference-implicit",
    "unpaired.jsonl": "trl-unpaired",
    "rankings.jsonl": "ranking",
    "ratings.jsonl": "rating",
    "helpsteer.jsonl": "helpsteer",
    "alpaca_eval.json": "alpaca-eval",
    "arena_battles.json": "arena",
    "rewardbench.jsonl": "rewardbench",
    "feedback.jsonl": "prefkit",
}


def test_every_format_has_an_example():
    assert set(EXPECTED_FORMAT.values()) == set(FORMATS)
    assert set(EXPECTED_FORMAT) == set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_detects_format(name):
    assert detect_source_format(example_path(name)).name == EXPECTED_FORMAT[name]


@pytest.mark.parametrize("name", EXAMPLES)
def test_rows_round_trip_exactly(name):
    """decode then encode gives back every original row, every field."""
    fmt = FORMATS[EXPECTED_FORMAT[name]]
    rows = [row.data for row in iter_rows(example_path(name))]
    again = [fmt.encode(fmt.decode(dict(row))) for row in rows]
    assert again == rows


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", "_dataset"])
def test_file_round_trip(tmp_path, name, suffix):
    fmt = EXPECTED_FORMAT[name]
    records = list(read_records(example_path(name)))
    out = tmp_path / f"out{suffix}"
    report = write_records(records, out, fmt)
    assert report.written == len(records) and not report.dropped
    back = list(read_records(out, fmt))
    assert [to_dict(r) for r in back] == [to_dict(r) for r in records]
    if suffix in (".jsonl", ".json"):  # and the rows themselves are the original rows
        assert [r.data for r in iter_rows(out)] == [r.data for r in iter_rows(example_path(name))]


def test_dataset_object_and_dataset_dict_split(tmp_path):
    import datasets

    rows = [r.data for r in iter_rows(example_path("rewardbench.jsonl"))]
    ds = datasets.Dataset.from_list(rows)
    assert [r.metadata["subset"] for r in read_records(ds)] == [r["subset"] for r in rows]
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="splits"):
        list(read_records(tmp_path / "dd"))
    assert len(list(read_records(f"{tmp_path / 'dd'}::test"))) == 1
    assert len(list(read_records(tmp_path / "dd", split="train"))) == len(rows)


def test_native_round_trip_every_kind():
    for record in read_records(example_path("feedback.jsonl")):
        assert FORMATS["prefkit"].decode(orjson.loads(orjson.dumps(to_dict(record)))) == record


def test_trl_implicit_prompt_extraction():
    prompt, chosen, rejected = split_shared_prompt("Q: 2+2? A: 4", "Q: 2+2? A: 5")
    assert (prompt, chosen, rejected) == ("Q: 2+2? A:", " 4", " 5")
    msgs = [{"role": "user", "content": "hi"}]
    p, c, r = split_shared_prompt(msgs + [{"role": "assistant", "content": "a"}],
                                  msgs + [{"role": "assistant", "content": "b"}])
    assert p == msgs and c[0]["content"] == "a" and r[0]["content"] == "b"


def test_outcomes_and_unrepresentable():
    tie = Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.TIE)
    with pytest.raises(Unrepresentable, match="tie"):
        FORMATS["trl-preference"].encode(tie)
    b_wins = Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.B)
    row = FORMATS["trl-preference"].encode(b_wins)
    assert (row["chosen"], row["rejected"]) == ("b", "a")
    assert FORMATS["alpaca-eval"].encode(b_wins)["preference"] == 2
    assert FORMATS["alpaca-eval"].encode(tie)["preference"] == 1.5
    ranking = Ranking(prompt="p", responses=["a", "b"], tiers=[[0], [1]])
    with pytest.raises(Unrepresentable, match="ranking"):
        FORMATS["trl-preference"].encode(ranking)
    battle = Battle(model_a="x", model_b="y", outcome=Outcome.BOTH_BAD)
    assert FORMATS["arena"].encode(battle)["winner"] == "tie (bothbad)"


def test_alpaca_soft_preferences_are_exact():
    fmt = FORMATS["alpaca-eval"]
    for pref in (1.0, 1.1, 1.2345678901234, 1.5, 1.77, 1.9999999, 2.0, 0):
        row = {"instruction": "i", "output_1": "a", "output_2": "b", "preference": pref}
        record = fmt.decode(row)
        expected = 1.5 if pref == 0 else pref  # legacy 0 = draw
        assert fmt.encode(record)["preference"] == expected
    assert fmt.decode({"instruction": "i", "output_1": "a", "output_2": "b",
                       "preference": 1.3}).outcome is Outcome.A


def test_ids_are_stable_and_content_derived():
    a = Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.A)
    b = Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.A)
    c = Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.B)
    assert record_id(a) == record_id(b) != record_id(c)
    assert record_id(a).startswith("comparison-")


def test_unknown_columns_name_the_formats():
    with pytest.raises(FieldError, match="--format"):
        detect_format(["question", "answer"])
