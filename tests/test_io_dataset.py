"""The README's ``to_dataset``: records -> a ``datasets.Dataset`` with TRL's columns, and back
through ``read_records`` with every value equal."""

import dataclasses
import warnings

import pytest

from prefkit.data.errors import RecordError
from prefkit.data.io import WriteReport, read_records, to_dataset
from prefkit.data.records import Annotator, Comparison, Outcome


def _chat(role, text):
    return [{"role": role, "content": text}]


def _canonical(record):
    """The record as a TRL row stores it: the preferred response first (outcome A)."""
    if record.outcome is Outcome.B:
        soft = None if record.soft_label is None else 1.0 - record.soft_label
        return dataclasses.replace(record, response_a=record.response_b,
                                   response_b=record.response_a, outcome=Outcome.A,
                                   soft_label=soft)
    return record


def test_text_pairs_become_trl_columns_and_read_back_equal():
    records = [Comparison(prompt="2+2?", response_a=" 4", response_b=" 5", outcome=Outcome.A),
               Comparison(prompt="capital of France?", response_a=" Lyon",
                          response_b=" Paris", outcome=Outcome.B)]
    ds = to_dataset(records)
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds.to_list() == [
        {"prompt": "2+2?", "chosen": " 4", "rejected": " 5"},
        {"prompt": "capital of France?", "chosen": " Paris", "rejected": " Lyon"},
    ]
    assert list(read_records(ds, "trl-preference")) == [_canonical(r) for r in records]


def test_conversations_keep_their_messages():
    records = [Comparison(prompt=_chat("user", f"q{i}"), response_a=_chat("assistant", "good"),
                          response_b=_chat("assistant", "bad"), outcome=Outcome.A)
               for i in range(3)]
    ds = to_dataset(records)
    assert ds[1] == {"prompt": [{"role": "user", "content": "q1"}],
                     "chosen": [{"role": "assistant", "content": "good"}],
                     "rejected": [{"role": "assistant", "content": "bad"}]}
    assert list(read_records(ds, "trl-preference")) == records


def test_optional_fields_on_every_row_survive_the_round_trip():
    records = [Comparison(prompt=f"p{i}", response_a=f" a{i}", response_b=f" b{i}",
                          outcome=Outcome.A if i % 2 else Outcome.B, strength=float(i + 1),
                          soft_label=0.75, rationale=f"because {i}",
                          annotator=Annotator(id=f"ann{i}"), metadata={"source": "s"},
                          id=f"r{i}")
               for i in range(4)]
    ds = to_dataset(records)
    assert {"prompt", "chosen", "rejected", "strength", "soft_label"} <= set(ds.column_names)
    assert ds["soft_label"] == [0.25, 0.75, 0.25, 0.75]  # P(chosen preferred)
    assert list(read_records(ds, "trl-preference")) == [_canonical(r) for r in records]


def test_other_formats_and_unknown_ones():
    records = [Comparison(prompt="p", response_a=" a", response_b=" b", outcome=Outcome.A)]
    assert to_dataset(records, "trl-preference-implicit").to_list() == [
        {"chosen": "p a", "rejected": "p b"}]
    with pytest.raises(ValueError, match="nope"):
        to_dataset(records, "nope")


def test_a_field_only_later_rows_have_is_kept():
    records = [Comparison(prompt="p0", response_a=" a", response_b=" b", outcome=Outcome.A),
               Comparison(prompt="p1", response_a=" a", response_b=" b", outcome=Outcome.A,
                          strength=2.0),
               Comparison(prompt="p2", response_a=" a", response_b=" b", outcome=Outcome.B,
                          soft_label=0.25, metadata={"source": "s"}, id="r2")]
    ds = to_dataset(records)
    assert ds.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert ds["strength"] == [None, 2.0, None]
    assert ds["soft_label"] == [None, None, 0.75]
    assert ds["id"] == [None, None, "r2"]
    assert list(read_records(ds, "trl-preference")) == [_canonical(r) for r in records]


def test_mixed_text_and_messages_is_a_clear_error():
    text = Comparison(prompt="p", response_a=" a", response_b=" b", outcome=Outcome.A)
    tie = Comparison(prompt="t", response_a=" a", response_b=" b", outcome=Outcome.TIE)
    chat = Comparison(prompt=_chat("user", "p"), response_a=_chat("assistant", "a"),
                      response_b=_chat("assistant", "b"), outcome=Outcome.A)
    with pytest.raises(RecordError) as info:  # a ValueError: exit 2 in the CLI
        to_dataset([text, text, tie, chat, text])
    err = info.value
    # the first message-list prompt, numbered among the input records (the tie counts)
    assert (err.field, err.line, err.row_kind, err.code) == ("prompt", 4, "record", "wrong_type")
    assert "to_dataset record 4: [wrong_type] field 'prompt'" in str(err)
    assert "write_records" in str(err)


def test_ties_the_format_cannot_hold_are_reported_not_lost():
    records = [Comparison(prompt=f"p{i}", response_a=" a", response_b=" b",
                          outcome=Outcome.TIE if i in (1, 3) else Outcome.A, id=f"r{i}")
               for i in range(5)]
    with pytest.warns(UserWarning, match=r"to_dataset: 2 records the format trl-preference "
                      r"cannot hold left out: tie 2 \(e\.g\. r1, r3\)"):
        ds = to_dataset(records)
    assert ds["prompt"] == ["p0", "p2", "p4"]
    report = WriteReport("<dataset>", "trl-preference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a caller's own report replaces the warning
        ds = to_dataset(records, report=report)
    assert len(ds) == 3
    assert (report.written, report.dropped, report.examples) == (3, {"tie": 2},
                                                                 {"tie": ["r1", "r3"]})
