"""Conversions between feedback kinds: pair counts, accounting, ids, round trips."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefkit.data.convert import (
    TARGETS,
    ConversionReport,
    binary_to_pairs,
    collect,
    comparisons_to_battles,
    no_conversion,
    pairs_to_binary,
    prompt_hash,
    ranking_to_pairs,
    rating_score,
    ratings_to_pairs,
    to_kind,
)
from prefkit.data.records import (
    Annotator,
    Battle,
    Binary,
    Comparison,
    Critique,
    Outcome,
    Ranking,
    Rating,
    record_id,
)

FAST = settings(max_examples=60, deadline=None)


def ranking(tiers, k=None, **kw):
    k = k if k is not None else max(i for t in tiers for i in t) + 1
    return Ranking(prompt="p", responses=[f"r{i}" for i in range(k)], tiers=tiers, **kw)


def index(text: str) -> int:
    return int(text[1:])


# ---------------------------------------------------------------------------------------------
# Rankings
# ---------------------------------------------------------------------------------------------


@FAST
@given(st.integers(2, 8).flatmap(lambda k: st.permutations(list(range(k)))))
def test_strict_ranking_all_pairs(order):
    k = len(order)
    rec = ranking([[i] for i in order], k=k, id="rk")
    pairs, report = collect(ranking_to_pairs, [rec])
    assert len(pairs) == k * (k - 1) // 2
    position = {i: p for p, i in enumerate(order)}
    seen = set()
    for pair in pairs:
        a, b = index(pair.response_a), index(pair.response_b)
        assert pair.outcome is Outcome.A
        assert position[a] < position[b]
        assert pair.metadata["ranks"] == {"a": position[a] + 1, "b": position[b] + 1}
        assert pair.metadata["source_id"] == "rk"
        assert pair.id == f"rk:{a}>{b}"
        seen.add(frozenset((a, b)))
    assert len(seen) == k * (k - 1) // 2  # every unordered pair exactly once
    assert report.to_dict()["dropped"] == {} and report.skipped == {}
    assert (report.inputs, report.used, report.outputs) == (1, 1, len(pairs))

    adjacent, areport = collect(ranking_to_pairs, [rec], mode="adjacent")
    assert len(adjacent) == k - 1
    for pair in adjacent:
        assert position[index(pair.response_b)] == position[index(pair.response_a)] + 1
    assert areport.skipped.get("non-adjacent tiers", 0) == k * (k - 1) // 2 - (k - 1)


@st.composite
def partial_rankings(draw):
    """(tiers, K): a random subset of K responses in random order, cut into tiers."""
    k = draw(st.integers(2, 8))
    order = draw(st.permutations(list(range(k))))
    m = draw(st.integers(1, k))
    cuts = draw(st.lists(st.booleans(), min_size=m - 1, max_size=m - 1))
    tiers, current = [], [order[0]]
    for i, cut in zip(order[1:m], cuts, strict=True):
        if cut:
            tiers.append(current)
            current = []
        current.append(i)
    tiers.append(current)
    return tiers, k


@FAST
@given(partial_rankings())
def test_partial_rankings_with_ties(case):
    tiers, k = case
    rec = ranking(tiers, k=k)
    sizes = [len(t) for t in tiers]
    cross = sum(sizes[s] * sizes[t] for s, t in combinations(range(len(sizes)), 2))
    within = sum(n * (n - 1) // 2 for n in sizes)
    unranked = k - sum(sizes)

    pairs, report = collect(ranking_to_pairs, [rec])
    assert len(pairs) == cross
    assert report.inputs == 1 and report.balanced
    assert report.skipped.get("tie within tier", 0) == within
    assert report.skipped.get("unranked response", 0) == unranked
    tier_of = {i: s for s, t in enumerate(tiers) for i in t}
    for pair in pairs:
        assert tier_of[index(pair.response_a)] < tier_of[index(pair.response_b)]
    if cross == 0:
        assert report.dropped == {"no ordered pair": 1} and report.used == 0
    else:
        assert report.used == 1 and report.outputs == cross

    kept, kreport = collect(ranking_to_pairs, [rec], ties="keep")
    assert len(kept) == cross + within
    assert sum(p.outcome is Outcome.TIE for p in kept) == within
    assert "tie within tier" not in kreport.skipped and kreport.balanced

    adjacent, _ = collect(ranking_to_pairs, [rec], mode="adjacent")
    assert len(adjacent) == sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))


def test_ranking_details_and_dropping():
    ann = Annotator("ann1")
    good = ranking([[2], [0, 1]], k=4, annotator=ann, metadata={"src": "x"}, id="g",
                   critiques=[Critique(text="meh")])
    flat = ranking([[0, 1]], k=2, id="flat")
    bad = ranking([[0], [0]], k=2, id="bad")
    rating = Rating(prompt="p", response="r", scores={"h": 1.0}, id="rt")
    pairs, report = collect(ranking_to_pairs, [good, flat, bad, rating])
    assert [p.id for p in pairs] == ["g:2>0", "g:2>1"]
    assert all(p.annotator == ann and p.metadata["src"] == "x" for p in pairs)
    assert pairs[0].response_a == "r2" and pairs[0].response_b == "r0"
    assert report.dropped == {"no ordered pair": 1, "invalid ranking": 1, "not a ranking": 1}
    assert report.skipped == {"tie within tier": 2, "unranked response": 1,
                              "critiques not carried": 1}
    assert report.examples["invalid ranking"] == ["bad"]
    assert (report.inputs, report.used, report.outputs) == (4, 1, 2)

    tie_pairs, _ = collect(ranking_to_pairs, [flat], ties="keep")
    assert [(p.id, p.outcome, p.metadata["ranks"]) for p in tie_pairs] == [
        ("flat:0=1", Outcome.TIE, {"a": 1, "b": 1})]
    with pytest.raises(ValueError):
        list(ranking_to_pairs([good], mode="some"))


def test_identical_texts_in_ranking_are_skipped():
    rec = Ranking(prompt="p", responses=["same", "same", "other"], tiers=[[0], [1], [2]], id="r")
    pairs, report = collect(ranking_to_pairs, [rec])
    assert [p.id for p in pairs] == ["r:0>2", "r:1>2"]
    assert report.skipped == {"identical responses": 1}


# ---------------------------------------------------------------------------------------------
# Ratings
# ---------------------------------------------------------------------------------------------


def test_rating_score_rules():
    r = Rating(prompt="p", response="r", scores={"h": 3.0, "c": 1.0})
    assert rating_score(r, "h") == 3.0
    assert rating_score(r, weights={"h": 0.5, "c": 2.0}) == 3.5
    assert rating_score(r) == 2.0
    assert rating_score(r, "v") is None
    assert rating_score(r, weights={"v": 1.0}) is None
    with pytest.raises(ValueError):
        rating_score(r, "h", {"h": 1.0})


def test_ratings_to_pairs_reasons():
    def rt(prompt, response, h, rid):
        return Rating(prompt=prompt, response=response, scores={"h": h}, id=rid)

    records = [
        rt("p1", "a", 4, "a"), rt("p1", "b", 1, "b"), rt("p1", "c", 1, "c"),
        rt("p1", "d", 3.5, "d"),
        rt("p2", "x", 2, "x"),  # single response
        rt("p3", "y", 2, "y"), rt("p3", "z", 2, "z"),  # equal
        Rating(prompt="p1", response="e", scores={"other": 1}, id="e"),  # missing attribute
        Binary(prompt="p1", response="a", desirable=True, id="bin"),
    ]
    pairs, report = collect(ratings_to_pairs, records, attribute="h", min_gap=1.0)
    got = {(p.response_a, p.response_b): p.strength for p in pairs}
    assert got == {("a", "b"): 3.0, ("a", "c"): 3.0, ("d", "b"): 2.5, ("d", "c"): 2.5}
    first = pairs[0]
    assert first.id == "a>b" and first.outcome is Outcome.A
    assert first.metadata == {"source_ids": ["a", "b"], "scores": {"a": 4.0, "b": 1.0}}
    # pairs not kept: b-c (gap 0), a-d (gap 0.5), y-z (gap 0)
    assert report.skipped == {"equal ratings": 2, "gap below min_gap": 1}
    assert report.dropped == {"single response for prompt": 1, "equal ratings": 2,
                              "missing attribute": 1, "not a rating": 1}
    assert report.used == 4 and report.balanced and report.outputs == 4


def test_ratings_of_the_same_response_are_averaged():
    records = [
        Rating(prompt="p", response="a", scores={"h": 4}, annotator=Annotator("u"), id="a1"),
        Rating(prompt="p", response="a", scores={"h": 2}, annotator=Annotator("v"), id="a2"),
        Rating(prompt="p", response="b", scores={"h": 1}, annotator=Annotator("u"), id="b1"),
    ]
    pairs, report = collect(ratings_to_pairs, records, min_gap=2.0)
    assert len(pairs) == 1
    assert pairs[0].strength == 2.0 and pairs[0].metadata["source_ids"] == ["a1", "a2", "b1"]
    assert pairs[0].annotator is None  # annotators differ
    assert report.used == 3 and report.balanced


@st.composite
def rating_sets(draw):
    n = draw(st.integers(0, 14))
    records = []
    for i in range(n):
        records.append(Rating(
            prompt=f"p{draw(st.integers(0, 2))}", response=f"r{draw(st.integers(0, 4))}",
            scores={"h": draw(st.sampled_from([0, 0.5, 1, 1.5, 2, 3, 4]))}, id=f"id{i}"))
    return records


@FAST
@given(rating_sets(), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_ratings_to_pairs_properties(records, min_gap):
    pairs, report = collect(ratings_to_pairs, records, min_gap=min_gap)
    # independent reference: mean score per (prompt, response)
    scores: dict[str, dict[str, list[float]]] = {}
    for r in records:
        scores.setdefault(r.prompt, {}).setdefault(r.response, []).append(r.scores["h"])
    expected = {}
    total_pairs = 0
    for prompt, responses in scores.items():
        mean = {k: sum(v) / len(v) for k, v in responses.items()}
        for x, y in combinations(mean, 2):
            total_pairs += 1
            hi, lo = (x, y) if mean[x] >= mean[y] else (y, x)
            gap = mean[hi] - mean[lo]
            if gap > 0 and gap >= min_gap:
                expected[(prompt, hi, lo)] = gap
    got = {(p.prompt, p.response_a, p.response_b): p.strength for p in pairs}
    assert got == pytest.approx(expected)
    for p in pairs:
        assert p.strength >= min_gap and p.strength > 0
        assert p.metadata["scores"]["a"] - p.metadata["scores"]["b"] == pytest.approx(p.strength)
    # every non-kept pair is reported
    not_kept = report.skipped.get("equal ratings", 0) + report.skipped.get("gap below min_gap", 0)
    assert len(pairs) + not_kept == total_pairs
    assert report.inputs == len(records) and report.balanced and report.outputs == len(pairs)


# ---------------------------------------------------------------------------------------------
# Binary <-> pairs
# ---------------------------------------------------------------------------------------------


def test_binary_to_pairs_rules():
    def b(prompt, response, desirable, rid):
        return Binary(prompt=prompt, response=response, desirable=desirable, id=rid)

    records = [
        b("p", "g1", True, "g1"), b("p", "g2", True, "g2"), b("p", "b1", False, "b1"),
        b("q", "only good", True, "q1"),
        b("s", "only bad", False, "s1"), b("s", "also bad", False, "s2"),
        Rating(prompt="p", response="g1", scores={"h": 1}, id="rt"),
    ]
    pairs, report = collect(binary_to_pairs, records)
    assert [(p.id, p.response_a, p.response_b, p.outcome) for p in pairs] == [
        ("g1>b1", "g1", "b1", Outcome.A), ("g2>b1", "g2", "b1", Outcome.A)]
    assert pairs[0].metadata == {"source_ids": ["g1", "b1"]}
    assert report.dropped == {"no undesirable response for prompt": 1,
                              "no desirable response for prompt": 2, "not a binary": 1}
    assert report.examples["no desirable response for prompt"] == ["s1", "s2"]
    assert report.used == 3 and report.balanced


def test_pairs_to_binary_rules():
    ann = Annotator("judge")
    comps = [
        Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.B,
                   annotator=ann, id="c1"),
        Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.TIE, id="c2"),
        Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.BOTH_BAD,
                   id="c3"),
    ]
    out, report = collect(pairs_to_binary, comps)
    assert [(b.id, b.response, b.desirable) for b in out] == [
        ("c1:chosen", "y", True), ("c1:rejected", "x", False),
        ("c3:a", "x", False), ("c3:b", "y", False)]
    assert out[0].annotator == ann and out[0].metadata == {"source_id": "c1", "role": "chosen"}
    assert report.dropped == {"tie": 1} and report.outputs == 4 and report.balanced

    out, report = collect(pairs_to_binary, comps, both_bad="drop")
    assert len(out) == 2 and report.dropped == {"tie": 1, "both_bad": 1}


@st.composite
def one_pair_per_prompt(draw):
    n = draw(st.integers(1, 8))
    comps = []
    for i in range(n):
        a, b = draw(st.lists(st.sampled_from(["u", "v", "w", "x"]), min_size=2, max_size=2,
                             unique=True))
        comps.append(Comparison(prompt=draw(st.sampled_from([f"p{i}", [
            {"role": "user", "content": f"p{i}"}]])), response_a=a, response_b=b,
            outcome=draw(st.sampled_from([Outcome.A, Outcome.B]))))
    return comps


@FAST
@given(one_pair_per_prompt())
def test_pairs_to_binary_to_pairs_round_trip(comps):
    binaries, r1 = collect(pairs_to_binary, comps)
    pairs, r2 = collect(binary_to_pairs, binaries)

    def key(c):
        return (repr(c.prompt), c.chosen, c.rejected)

    assert Counter(map(key, pairs)) == Counter(map(key, comps))
    assert r1.balanced and r2.balanced and r2.dropped == {}
    # ids are deterministic
    again, _ = collect(binary_to_pairs, collect(pairs_to_binary, comps)[0])
    assert [p.id for p in again] == [p.id for p in pairs]


# ---------------------------------------------------------------------------------------------
# Battles
# ---------------------------------------------------------------------------------------------


def test_comparisons_to_battles():
    ann = Annotator("voter")
    comps = [
        Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.A, annotator=ann,
                   metadata={"model_a": "m1", "model_b": "m2", "question_id": "q7",
                             "tstamp": 12.5, "lang": "en"}, id="c1"),
        Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.TIE,
                   soft_label=0.5, metadata={"generator_1": "g1", "generator_2": "g2"}, id="c2"),
        Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.B, id="c3"),
        Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.B,
                   metadata={"model_a": "m", "model_b": "m"}, id="c4"),
        Binary(prompt="p", response="x", desirable=True, id="b"),
    ]
    battles, report = collect(comparisons_to_battles, comps)
    first, second = battles
    assert (first.model_a, first.model_b, first.outcome, first.prompt_id) == (
        "m1", "m2", Outcome.A, "q7")
    assert first.timestamp == 12.5 and first.annotator == ann and first.id == "c1:battle"
    assert first.metadata == {"question_id": "q7", "lang": "en", "source_id": "c1"}
    assert (second.model_a, second.model_b, second.outcome) == ("g1", "g2", Outcome.TIE)
    assert second.prompt_id == prompt_hash("p") and second.metadata["soft_label"] == 0.5
    assert report.dropped == {"no model names": 1, "same model on both sides": 1,
                              "not a comparison": 1}
    assert report.balanced and report.outputs == 2

    custom = Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.A,
                        metadata={"left": "L", "right": "R"})
    (battle,), _ = collect(comparisons_to_battles, [custom], model_a_key="left",
                           model_b_key="right")
    assert (battle.model_a, battle.model_b) == ("L", "R")
    assert battle.id == f"{record_id(custom)}:battle"


# ---------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------


def test_to_kind_dispatch():
    comp = Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.A,
                      metadata={"model_a": "m1", "model_b": "m2"}, id="c")
    rank = ranking([[0], [1], [2]], id="r")
    battle = Battle(model_a="m1", model_b="m2", outcome=Outcome.B, id="bt")
    records = [comp, rank, battle]

    out, report = collect(to_kind, records, target_kind="comparison")
    assert out[0] is comp and [o.id for o in out[1:]] == ["r:0>1", "r:0>2", "r:1>2"]
    assert report.dropped == {no_conversion("battle", "comparison"): 1}

    out, report = collect(to_kind, records, target_kind="comparison", pairs="adjacent")
    assert len(out) == 3

    out, report = collect(to_kind, records, target_kind="ranking")
    assert out == [rank]
    assert report.dropped == {"no conversion from comparison to ranking": 1,
                              "no conversion from battle to ranking": 1}

    out, report = collect(to_kind, records, target_kind="battle")
    assert [o.id for o in out] == ["c:battle", "bt"]
    assert report.balanced and report.inputs == 3

    with pytest.raises(ValueError):
        list(to_kind(records, "essay"))


def test_report_examples_are_capped():
    report = ConversionReport()
    comps = [Comparison(prompt="p", response_a="x", response_b="y", outcome=Outcome.TIE,
                        id=f"t{i}") for i in range(8)]
    assert list(pairs_to_binary(comps, report=report)) == []
    d = report.to_dict()
    assert d["dropped"] == {"tie": 8} and d["examples"]["tie"] == [f"t{i}" for i in range(5)]
    assert d["inputs"] == 8 and d["outputs"] == 0


@st.composite
def mixed_records(draw):
    out = []
    for i in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["comparison", "ranking", "rating", "binary", "battle",
                                     "critique"]))
        prompt = f"p{draw(st.integers(0, 2))}"
        resp = draw(st.lists(st.sampled_from("uvwxyz"), min_size=3, max_size=3, unique=True))
        if kind == "comparison":
            meta = draw(st.sampled_from([{}, {"model_a": "m1", "model_b": "m2"}]))
            out.append(Comparison(prompt=prompt, response_a=resp[0], response_b=resp[1],
                                  outcome=draw(st.sampled_from(list(Outcome))), metadata=meta))
        elif kind == "ranking":
            out.append(Ranking(prompt=prompt, responses=resp,
                               tiers=draw(st.sampled_from([[[0], [1], [2]], [[2, 0], [1]],
                                                           [[1]], [[0, 1, 2]]]))))
        elif kind == "rating":
            out.append(Rating(prompt=prompt, response=resp[0],
                              scores={"h": draw(st.integers(0, 3))}))
        elif kind == "binary":
            out.append(Binary(prompt=prompt, response=resp[0], desirable=draw(st.booleans())))
        elif kind == "battle":
            out.append(Battle(model_a="m1", model_b="m2", outcome=Outcome.A))
        else:
            out.append(Critique(text="c"))
        out[-1].id = f"in{i}"
    return out


@FAST
@given(mixed_records(), st.sampled_from(TARGETS))
def test_to_kind_never_invents(records, target):
    out, report = collect(to_kind, records, target_kind=target)
    inputs = {r.id: r for r in records}
    for rec in out:
        assert rec.kind == target
        if any(rec is r for r in records):
            continue
        sources = rec.metadata.get("source_ids") or [rec.metadata["source_id"]]
        assert sources and all(s in inputs for s in sources)
    assert report.inputs == len(records) and report.balanced
    assert report.outputs == len(out)
    passed = sum(r.kind == target for r in records)
    assert report.used >= passed
    if target in ("ranking", "rating", "critique"):
        assert report.used == passed and len(out) == passed


# ---------------------------------------------------------------------------------------------
# `prefkit data convert`: nothing converts -> exit 2 with the ledger, no output left behind
# ---------------------------------------------------------------------------------------------


def _convert(*args):
    import json

    from typer.testing import CliRunner

    from prefkit.commands.data import app

    result = CliRunner().invoke(app, ["convert", *map(str, args), "--json"])
    assert "Traceback" not in result.stdout + result.stderr
    return result, json.loads(result.stdout)


def _pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                    '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    return path


def test_cli_convert_that_drops_everything_exits_2_and_writes_nothing(tmp_path):
    source, out = _pairs_file(tmp_path), tmp_path / "out.jsonl"
    result, payload = _convert(source, out, "--to", "rating")
    assert result.exit_code == 2 and payload["ok"] is False
    assert payload["conversion"]["dropped"] == {no_conversion("comparison", "rating"): 2}
    assert payload["write"]["written"] == 0
    assert payload["error"] == (f"{source}: no record converts to rating, so {out} was not "
                                "written; dropped: 2 no conversion from comparison to rating")
    assert not out.exists()
    out.write_text("an older file\n")  # never replaced by an empty one
    assert _convert(source, out, "--to", "rating")[0].exit_code == 2
    assert out.read_text() == "an older file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "pairs.jsonl"]


def test_cli_convert_ties_only_to_trl_shows_the_ledger(tmp_path):
    source = tmp_path / "ties.jsonl"
    source.write_text('{"kind": "comparison", "prompt": "p", "response_a": "a", '
                      '"response_b": "b", "outcome": "tie"}\n')
    result, payload = _convert(source, tmp_path / "o.parquet", "--to", "trl-preference")
    assert result.exit_code == 2 and "dropped: 1 tie" in payload["error"]
    assert not (tmp_path / "o.parquet").exists()


def test_cli_convert_checks_the_output_before_reading(tmp_path):
    source = _pairs_file(tmp_path)
    for out, reason in ((source / "o.jsonl", "is a file, not a folder"),
                        ("/proc/prefkit-test/o.jsonl", "cannot create files in /proc")):
        result, payload = _convert(source, out, "--to", "prefkit")
        assert result.exit_code == 2
        assert payload["error"].startswith(f"cannot write {out}: ") and reason in payload["error"]
    ok, payload = _convert(source, tmp_path / "o.jsonl", "--to", "prefkit")
    assert ok.exit_code == 0 and payload["write"]["written"] == 2
