"""train/preference_data.py: a record is tokenized through windows sized by the length budget
(the prompt's end, each response's start), and truncation keeps the same tokens as it does from
the whole texts -- `train preference` and `rm train` no longer tokenize a 10 MB prompt in full
(issue 12, item 2)."""

from __future__ import annotations

import random

import pytest

from _spy_tokenizer import TEMPLATE, WORDS, Spy
from prefkit.data.records import Binary, Comparison, Outcome, Ranking
from prefkit.models.packing import PromptGroup, truncate_groups
from prefkit.models.tokenizer import train_tokenizer, word_level_tokenizer
from prefkit.train.preference_data import DataReport, length_budgets, records_to_examples
from prefkit.train.reward import records_to_rm_examples


@pytest.fixture(scope="module", params=["words", "bpe"])
def tok(request):
    if request.param == "words":
        tok = word_level_tokenizer(WORDS, add_bos=True)
    else:
        rng = random.Random(0)
        texts = [" ".join(rng.choice(WORDS[:12] + ["!", "?", "alpha"]) for _ in range(30))
                 for _ in range(200)]
        tok = train_tokenizer(texts, vocab_size=300)
    tok.chat_template = TEMPLATE
    return tok


def _text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS[:30]) for _ in range(n_words))


def _records(long_words: int) -> list:
    """Normal rows and rows with a long prompt / a long response, text and conversations."""
    long = _text(long_words, 1)
    return [
        Comparison(prompt="w1 w2 w3", response_a=" w4 w5", response_b=" w6", outcome=Outcome.A),
        Comparison(prompt=long, response_a=" w7 w8", response_b=" w9", outcome=Outcome.B),
        Comparison(prompt="w3 w1", response_a=" " + _text(long_words, 2),
                   response_b=" w2", outcome=Outcome.A),
        Ranking(prompt=_text(40, 3), responses=[" w1", " " + _text(long_words, 4), " w5"],
                tiers=[[2], [0], [1]]),
        Binary(prompt=long, response=" w3 w3", desirable=True),
        Comparison(prompt=[{"role": "system", "content": "w1"},
                           {"role": "user", "content": _text(long_words, 5)}],
                   response_a=" w1", response_b=" w2 w2", outcome=Outcome.A),
        Comparison(prompt=[{"role": "user", "content": "w4 w5"}],
                   response_a=[{"role": "assistant", "content": _text(long_words, 6)}],
                   response_b=[{"role": "assistant", "content": "w6"}], outcome=Outcome.B),
    ]


@pytest.mark.parametrize(("max_length", "max_prompt_length"), [(48, 16), (64, None), (20, 30)])
def test_bounded_tokenization_keeps_the_same_tokens(tok, max_length, max_prompt_length):
    records = _records(20_000)
    whole = records_to_examples(records, tok)
    spy = Spy(tok)
    bounded = records_to_examples(records, spy, max_length=max_length,
                                  max_prompt_length=max_prompt_length)
    assert [e.index for e in bounded] == [e.index for e in whole]
    kept = []
    for examples in (whole, bounded):
        groups = [PromptGroup(e.prompt_ids, e.response_ids) for e in examples]
        kept.append(truncate_groups(groups, max_length=max_length,
                                    max_prompt_length=max_prompt_length))
    (want, want_report), (got, got_report) = kept
    assert [(g.prompt_ids, g.response_ids) for g in got] == [
        (g.prompt_ids, g.response_ids) for g in want]
    assert got_report.kept_indices == want_report.kept_indices
    assert got_report.n_prompt_truncated == want_report.n_prompt_truncated
    assert got_report.n_response_truncated == want_report.n_response_truncated
    assert [s.index for s in got_report.skipped] == [s.index for s in want_report.skipped]
    assert want_report.n_prompt_truncated + want_report.n_skipped >= 2  # the long rows matter
    # ~20k words (~70k characters) per long text; the windows are a few hundred characters
    assert spy.longest < 2_000


def test_without_budgets_nothing_is_cut(tok):
    records = _records(300)
    assert [(e.prompt_ids, e.response_ids) for e in records_to_examples(records, tok)] == [
        (e.prompt_ids, e.response_ids)
        for e in records_to_examples(records, tok, max_length=None, max_prompt_length=None)]
    assert length_budgets(None, None) == (None, None)
    assert length_budgets(100, None) == (100, 100)
    assert length_budgets(100, 30) == (30, 100)


def test_reward_model_examples_are_bounded_too(tok):
    records = [r for r in _records(20_000) if isinstance(r, Comparison)]
    spy = Spy(tok)
    common = dict(kind_needed="pairs", keep_ties=False, attributes=[],
                  margin_from_strength=False)
    bounded = records_to_rm_examples(records, spy, report=DataReport(), max_length=48,
                                     max_prompt_length=16, **common)
    whole = records_to_rm_examples(records, tok, report=DataReport(), **common)
    got, _ = truncate_groups([e.group for e in bounded], max_length=48, max_prompt_length=16)
    want, _ = truncate_groups([e.group for e in whole], max_length=48, max_prompt_length=16)
    assert [(g.prompt_ids, g.response_ids) for g in got] == [
        (g.prompt_ids, g.response_ids) for g in want]
    assert spy.longest < 2_000
