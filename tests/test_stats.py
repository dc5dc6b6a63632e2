"""Feedback statistics: rates, length distributions, token counts and annotator agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from prefkit.data.records import (
    Annotator,
    Battle,
    Binary,
    Comparison,
    Critique,
    Outcome,
    Ranking,
    Rating,
)
from prefkit.data.stats import (
    Distribution,
    TokenCounter,
    feedback_stats,
    krippendorff_alpha_interval,
    krippendorff_alpha_nominal,
    load_tokenizer,
    quantile,
)

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the cat ran"]


@pytest.fixture
def tiny_tokenizer() -> Tokenizer:
    """A WordLevel tokenizer trained locally: one token per whitespace-separated word."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return tok


def cmp(prompt, a, b, outcome, annotator=None):
    return Comparison(prompt=prompt, response_a=a, response_b=b, outcome=outcome,
                      annotator=Annotator(annotator) if annotator else None)


def test_outcome_rates_and_length_bias():
    records = [
        cmp("p", "long answer", "x", Outcome.A),      # chosen longer
        cmp("p", "long answer", "x", Outcome.A),      # chosen longer
        cmp("p", "ab", "abcd", Outcome.B),            # chosen longer
        cmp("p", "abcdef", "abc", Outcome.B),         # chosen shorter
        cmp("p", "abc", "xyz", Outcome.A),            # equal length
        cmp("p", "abc", "xyz", Outcome.A),            # equal length
        cmp("p", "u", "v", Outcome.TIE),
        cmp("p", "u", "v", Outcome.TIE),
        cmp("p", "u", "v", Outcome.TIE),
        cmp("p", "u", "v", Outcome.BOTH_BAD),
        Battle(model_a="m1", model_b="m2", outcome=Outcome.A),
        Battle(model_a="m1", model_b="m2", outcome=Outcome.TIE),
    ]
    stats = feedback_stats(records)
    comparison = stats["outcomes"]["comparison"]
    assert comparison["count"] == 10
    assert comparison["tie_rate"] == pytest.approx(0.3)
    assert comparison["both_bad_rate"] == pytest.approx(0.1)
    assert comparison["decisive_rate"] == pytest.approx(0.6)
    assert stats["outcomes"]["battle"]["tie_rate"] == pytest.approx(0.5)
    assert stats["outcomes"]["pairwise"]["tie_rate"] == pytest.approx(4 / 12)
    assert stats["length_bias"] == {"decisive": 6, "chosen_longer": 3, "chosen_shorter": 1,
                                    "equal_length": 2, "chosen_longer_rate": 0.5}
    assert stats["kinds"] == {"battle": 2, "comparison": 10}
    chars = stats["lengths"]["chars"]
    assert chars["chosen"]["count"] == 6 and chars["response"]["count"] == 8
    assert chars["chosen"]["max"] == 11 and chars["rejected"]["min"] == 1
    json.dumps(stats, allow_nan=False)


def test_length_quantiles_on_a_small_set():
    lengths = [1, 2, 3, 4, 10]
    records = [Binary(prompt="q" * n, response="r" * (2 * n), desirable=n % 2 == 0)
               for n in lengths]
    stats = feedback_stats(records)
    prompt = stats["lengths"]["chars"]["prompt"]
    assert prompt.pop("p90") == pytest.approx(7.6)  # h = 0.9 * 4 = 3.6: 4 + 0.6 * (10 - 4)
    assert prompt == {"count": 5, "min": 1, "mean": 4.0, "p50": 3.0, "max": 10,
                      "quantiles_exact": True}
    response = stats["lengths"]["chars"]["response"]
    assert response["p90"] == pytest.approx(np.percentile([2 * n for n in lengths], 90))
    assert stats["binary"] == {"count": 5, "desirable": 3, "desirable_rate": 0.6}  # 2, 4, 10
    assert "tokens" not in stats["lengths"]


def test_conversation_lengths_count_contents():
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    stats = feedback_stats([Binary(prompt=chat, response="abc", desirable=True)])
    assert stats["lengths"]["chars"]["prompt"]["max"] == 7


def test_quantile_and_reservoir():
    values = [5.0, 1.0, 9.0, 3.0]
    ordered = sorted(values)
    for q in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert quantile(ordered, q) == pytest.approx(np.percentile(values, q * 100))
    dist = Distribution(size=100)
    for v in range(1000):
        dist.add(v)
    summary = dist.summary()
    assert (summary["count"], summary["min"], summary["max"]) == (1000, 0, 999)
    assert summary["mean"] == pytest.approx(499.5)
    assert summary["quantiles_exact"] is False and len(dist.sample) == 100
    assert 300 < summary["p50"] < 700  # a uniform sample of 0..999; loose but seeded
    assert Distribution().summary()["p50"] is None


def test_token_lengths_with_a_local_tokenizer(tiny_tokenizer):
    records = [
        Rating(prompt="the cat sat", response="the cat sat on the mat", scores={"h": 3}),
        Rating(prompt="a dog", response="ran", scores={"h": 1}),
    ]
    stats = feedback_stats(records, tokenizer=tiny_tokenizer)
    tokens = stats["lengths"]["tokens"]
    assert tokens["prompt"]["count"] == 2
    assert (tokens["prompt"]["min"], tokens["prompt"]["max"]) == (2, 3)
    assert (tokens["response"]["min"], tokens["response"]["max"]) == (1, 6)
    assert tokens["response"]["mean"] == 3.5
    assert stats["rating"]["attributes"]["h"] == {"count": 2, "min": 1, "mean": 2.0, "max": 3}


def test_token_counter_accepts_list_returning_tokenizers():
    class ListTokenizer:  # transformers-like: encode returns a list; no keyword arguments
        def encode(self, text):
            return list(range(len(text.split()) + 1))  # +1: a BOS token

    count = TokenCounter(ListTokenizer())
    assert count("one two three") == 4
    assert count("one") == 2
    with pytest.raises(TypeError):
        TokenCounter(object())


def test_load_tokenizer(tmp_path, tiny_tokenizer):
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    tiny_tokenizer.save(str(path))
    for where in (path, path.parent):
        loaded = load_tokenizer(where)  # a tokenizers.Tokenizer, or transformers' for a folder
        assert TokenCounter(loaded)("the cat ran") == 3
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)


def test_krippendorff_alpha_published_example():
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units
    with missing values: alpha_nominal = 0.743, alpha_interval = 0.849."""
    table = [  # one row per coder, None = missing
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[row[u] for row in table if row[u] is not None] for u in range(12)]
    counts = []
    for values in units:
        c: dict[str, int] = {}
        for v in values:
            c[str(v)] = c.get(str(v), 0) + 1
        counts.append(c)
    assert krippendorff_alpha_nominal(counts) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha_interval(units) == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha_nominal([{"a": 2}, {"a": 3}]) is None  # no variation
    assert krippendorff_alpha_interval([[1.0]]) is None


def test_comparison_agreement_three_annotators_four_items():
    """Items (normalized category per annotator x, y, z):

    - p1: a, a, a     - p2: a, a, b     - p3: b, b, b     - p4: tie, a, b

    Pairwise agreement = (3 + 1 + 3 + 0) / 12 = 7/12. Krippendorff's alpha (nominal):
    n = 12, n_a = 6, n_b = 5, n_tie = 1; sum_u (m_u^2 - sum_c n_uc^2) / (m_u - 1)
    = 0 + (9 - 5)/2 + 0 + (9 - 3)/2 = 5; alpha = 1 - (n - 1) * 5 / (n^2 - (36 + 25 + 1))
    = 1 - 55/82 = 27/82.
    """
    a, b = "alpha", "beta"  # canonical order: "alpha" < "beta"; category a = alpha wins
    records = [
        cmp("p1", a, b, Outcome.A, "x"), cmp("p1", b, a, Outcome.B, "y"),  # y sees it swapped
        cmp("p1", a, b, Outcome.A, "z"),
        cmp("p2", a, b, Outcome.A, "x"), cmp("p2", a, b, Outcome.A, "y"),
        cmp("p2", b, a, Outcome.A, "z"),  # swapped: beta wins = category b
        cmp("p3", a, b, Outcome.B, "x"), cmp("p3", b, a, Outcome.A, "y"),
        cmp("p3", a, b, Outcome.B, "z"),
        cmp("p4", a, b, Outcome.BOTH_BAD, "x"), cmp("p4", b, a, Outcome.B, "y"),
        cmp("p4", a, b, Outcome.B, "z"),
        # not agreement items: a single annotator, an anonymous vote, a repeat by x
        cmp("p5", a, b, Outcome.A, "x"), cmp("p1", a, b, Outcome.B), cmp("p1", a, b,
                                                                            Outcome.B, "x"),
    ]
    agreement = feedback_stats(records)["agreement"]["comparison"]
    assert agreement["items"] == 4 and agreement["annotations"] == 12
    assert agreement["pairwise_agreement"] == pytest.approx(7 / 12)
    assert agreement["krippendorff_alpha"] == pytest.approx(27 / 82)
    assert agreement["annotations_without_annotator"] == 1
    assert agreement["repeated_annotations"] == 1


def test_battle_agreement_groups_by_prompt_and_unordered_models():
    def battle(qid, ma, mb, outcome, judge):
        return Battle(model_a=ma, model_b=mb, outcome=outcome, prompt_id=qid,
                      annotator=Annotator(judge))

    records = [
        battle("q1", "m1", "m2", Outcome.A, "u"), battle("q1", "m2", "m1", Outcome.B, "v"),
        battle("q2", "m1", "m2", Outcome.A, "u"), battle("q2", "m1", "m2", Outcome.B, "v"),
        battle(None, "m1", "m2", Outcome.A, "u"), battle(None, "m1", "m2", Outcome.A, "v"),
    ]
    agreement = feedback_stats(records)["agreement"]["battle"]
    assert agreement["items"] == 2 and agreement["pairwise_agreement"] == 0.5
    # n = 4 (a: 3, b: 1); observed: q1 0, q2 (4 - 2)/1 = 2 -> alpha = 1 - 3 * 2 / (16 - 10) = 0
    assert agreement["krippendorff_alpha"] == pytest.approx(0.0)


def test_rating_agreement():
    def rating(response, scores, who):
        return Rating(prompt="p", response=response, scores=scores, annotator=Annotator(who))

    records = [
        rating("r1", {"help": 1, "safe": 4}, "u"), rating("r1", {"help": 3, "safe": 4}, "v"),
        rating("r2", {"help": 4}, "u"), rating("r2", {"help": 4}, "v"),
        rating("r3", {"help": 0}, "u"),
    ]
    agreement = feedback_stats(records)["agreement"]["rating"]
    assert agreement["items"] == 2
    help_ = agreement["attributes"]["help"]
    # units [1, 3] and [4, 4]: MAD (2 + 0) / 2; alpha_interval = 1 - 3 * 8 / 48 = 0.5
    assert help_ == {"items": 2, "pairs": 2, "mean_abs_diff": 1.0, "exact_agreement": 0.5,
                     "krippendorff_alpha_interval": 0.5}
    safe = agreement["attributes"]["safe"]
    assert safe["mean_abs_diff"] == 0.0 and safe["krippendorff_alpha_interval"] is None
    assert agreement["mean_abs_diff"] == pytest.approx(2 / 3)


def test_mixed_kinds_summary():
    records = [
        Ranking(prompt="p", responses=["a", "bb", "ccc"], tiers=[[0], [1], [2]]),
        Ranking(prompt="p", responses=["a", "bb"], tiers=[[0, 1]]),
        Critique(text="too long"),
        Binary(prompt="p", response="x", desirable=True),
    ]
    stats = feedback_stats(iter(records))
    assert stats["records"] == 4
    assert stats["kinds"] == {"binary": 1, "critique": 1, "ranking": 2}
    assert stats["ranking"] == {"count": 2, "mean_responses": 2.5, "max_responses": 3,
                                "strict_rate": 0.5}
    assert stats["lengths"]["chars"]["critique"]["max"] == 8
    assert stats["lengths"]["chars"]["response"]["count"] == 6
    assert stats["outcomes"]["comparison"]["tie_rate"] is None
    assert stats["agreement"]["comparison"]["krippendorff_alpha"] is None
    json.dumps(stats, allow_nan=False)


def test_cli_prints_a_dash_for_missing_values_and_json_keeps_null(tmp_path):
    from typer.testing import CliRunner

    from prefkit.commands.data import app

    path = tmp_path / "ranking.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}\n')
    human = CliRunner().invoke(app, ["stats", str(path)])
    assert human.exit_code == 0, human.output
    assert "None" not in human.stdout and "{}" not in human.stdout
    assert "    tie_rate: -" in human.stdout and "  desirable_rate: -" in human.stdout
    payload = json.loads(CliRunner().invoke(app, ["stats", str(path), "--json"]).stdout)
    assert payload["binary"]["desirable_rate"] is None
    assert payload["outcomes"]["comparison"]["tie_rate"] is None
