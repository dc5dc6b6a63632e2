"""Simulated annotators: statistical checks with seeds and sample-size-derived tolerances.

Tolerances are ``Z`` binomial standard errors, ``Z * sqrt(p (1 - p) / n)``, with ``Z = 4.5``
(a false alarm about once in 150,000 runs for each check; the seeds make runs deterministic
anyway).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefkit.data.records import AnnotatorKind, Outcome
from prefkit.lab.annotators import (
    PERSONAS,
    AnnotatorPool,
    SimulatedAnnotator,
    agreement,
    alpacafarm_pool,
    word_length,
)

Z = 4.5


def tol(p: float, n: int) -> float:
    return Z * math.sqrt(max(p * (1 - p), 1e-12) / n)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def table_gold(table: dict[str, float]):
    return lambda prompt, response: table[response]


def flat_gold(prompt, response) -> float:
    return 0.0


def numbered(n: int, seed: int = 0) -> tuple[list[str], dict[str, float]]:
    """``n`` one-word responses with distinct uniform gold rewards."""
    rng = np.random.default_rng(seed)
    names = [f"r{i}" for i in range(n)]
    return names, dict(zip(names, rng.permutation(n) / n, strict=True))


def random_pairs(names: list[str], n: int, seed: int = 1) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), size=2, replace=False)
        out.append(("p", names[i], names[j]))
    return out


def test_zero_temperature_reproduces_gold_order():
    names, gold = numbered(30)
    ann = SimulatedAnnotator("exact", table_gold(gold), temperature=0.0)
    for prompt, a, b in random_pairs(names, 500):
        c = ann.compare(prompt, a, b)
        assert c.outcome is (Outcome.A if gold[a] > gold[b] else Outcome.B)
        assert ann.prob_first_wins(prompt, a, b) == float(gold[a] > gold[b])
        assert c.annotator.kind is AnnotatorKind.SIMULATED and c.annotator.id == "exact"
        assert c.metadata["gold_a"] == gold[a] and c.metadata["gold_b"] == gold[b]
        assert not c.metadata["flipped"]


def test_flip_rate_measured():
    names, gold = numbered(50)
    ann = SimulatedAnnotator("flip", table_gold(gold), temperature=0.0, flip_rate=0.25, seed=3)
    pairs = random_pairs(names, 4000)
    records = [ann.compare(*p) for p in pairs]
    wrong = [r.outcome is not (Outcome.A if gold[r.response_a] > gold[r.response_b] else Outcome.B)
             for r in records]
    rate = float(np.mean(wrong))
    assert abs(rate - 0.25) < 0.03  # 4.4 standard errors at n = 4000
    assert wrong == [r.metadata["flipped"] for r in records]


def test_position_bias_on_equal_gold():
    n = 4000
    biased = SimulatedAnnotator("pos", flat_gold, temperature=1.0, position_bias=1.0, seed=1)
    fair = SimulatedAnnotator("fair", flat_gold, temperature=1.0, seed=1)
    first = np.mean([biased.compare("p", "x y", "z w").outcome is Outcome.A for _ in range(n)])
    base = np.mean([fair.compare("p", "x y", "z w").outcome is Outcome.A for _ in range(n)])
    expected = sigmoid(1.0)
    assert biased.prob_first_wins("p", "x y", "z w") == pytest.approx(expected)
    assert abs(first - expected) < tol(expected, n)
    assert abs(base - 0.5) < tol(0.5, n)
    assert first - base > 0.15


def test_length_bias_makes_longer_win():
    rng = np.random.default_rng(5)
    n = 3000
    verbose = SimulatedAnnotator("verbose", flat_gold, temperature=0.5, length_bias=1.0, seed=2)
    fair = SimulatedAnnotator("fair", flat_gold, temperature=0.5, seed=2)
    longer_wins = {"verbose": 0, "fair": 0}
    expected = 0.0
    decisive = 0
    for _ in range(n):
        la, lb = rng.choice(np.arange(1, 13), size=2, replace=False)
        a, b = " ".join(["w"] * int(la)), " ".join(["w"] * int(lb))
        for ann in (verbose, fair):
            c = ann.compare("p", a, b)
            longer_wins[ann.id] += (c.outcome is Outcome.A) == (la > lb)
        p_a = verbose.prob_first_wins("p", a, b)
        expected += p_a if la > lb else 1 - p_a
        decisive += 1
    expected /= decisive
    assert expected > 0.6
    assert abs(longer_wins["verbose"] / n - expected) < tol(expected, n)
    assert abs(longer_wins["fair"] / n - 0.5) < tol(0.5, n)
    c = verbose.compare("p", "w w w w", "w")
    assert c.metadata["length_term"] == pytest.approx(0.75)
    assert (c.metadata["len_a"], c.metadata["len_b"]) == (4, 1)


def test_ties_only_within_margin_and_at_modelled_rate():
    names, gold = numbered(40, seed=2)
    ann = SimulatedAnnotator("ties", table_gold(gold), temperature=0.2, tie_margin=0.1,
                             tie_prob=0.9, seed=4)
    pairs = random_pairs(names, 4000, seed=3)
    records = [ann.compare(*p) for p in pairs]
    ties = [r for r in records if r.outcome is Outcome.TIE]
    assert ties
    assert all(abs(r.metadata["gold_a"] - r.metadata["gold_b"]) < 0.1 for r in ties)
    expected = float(np.mean([ann.outcome_probs(*p)["tie"] for p in pairs]))
    assert abs(len(ties) / len(records) - expected) < tol(expected, len(records))
    # ties are never flipped; equal gold with tie_prob 1 is always a tie
    assert not any(r.metadata["flipped"] for r in ties)
    always = SimulatedAnnotator("t", flat_gold, tie_margin=0.1, tie_prob=1.0)
    assert all(always.compare("p", "a", "b").outcome is Outcome.TIE for _ in range(50))


@pytest.mark.parametrize("params", [
    {"temperature": 0.3},
    {"temperature": 0.5, "flip_rate": 0.2, "position_bias": 0.1},
    {"temperature": 0.4, "length_bias": -0.4, "tie_margin": 0.5, "tie_prob": 0.6},
])
def test_prob_first_wins_matches_frequency(params):
    gold = {"short good": 0.6, "a much longer worse answer": 0.4}
    ann = SimulatedAnnotator("m", table_gold(gold), seed=7, **params)
    a, b = "a much longer worse answer", "short good"
    n = 4000
    probs = ann.outcome_probs("p", a, b)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs["a"] == pytest.approx(ann.prob_first_wins("p", a, b))
    outcomes = [ann.compare("p", a, b).outcome for _ in range(n)]
    for key, outcome in (("a", Outcome.A), ("b", Outcome.B), ("tie", Outcome.TIE)):
        freq = sum(o is outcome for o in outcomes) / n
        assert abs(freq - probs[key]) < tol(probs[key], n) + 1e-9


def test_rank_zero_temperature_gives_gold_order():
    names, gold = numbered(8, seed=4)
    ann = SimulatedAnnotator("exact", table_gold(gold), temperature=0.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        responses = list(rng.permutation(names))
        r = ann.rank("p", responses)
        assert r.is_strict
        assert r.ranked == sorted(range(8), key=lambda i: -gold[responses[i]])
        assert r.metadata["gold"] == [gold[x] for x in responses]


def test_rank_plackett_luce_frequencies_match_pairwise_and_softmax():
    gold = {"a": 0.5, "b": 0.2, "c": 0.0}
    ann = SimulatedAnnotator("pl", table_gold(gold), temperature=0.3, position_bias=0.1, seed=9)
    n = 4000
    # K = 2: P(first ranked first) equals the pairwise model, flips included
    flip = SimulatedAnnotator("pl2", table_gold(gold), temperature=0.3, flip_rate=0.2, seed=9)
    p = flip.prob_first_wins("p", "b", "a")
    freq = np.mean([flip.rank("p", ["b", "a"]).ranked[0] == 0 for _ in range(n)])
    assert abs(freq - p) < tol(p, n)
    # K = 3: top-choice frequencies are softmax(u / T)
    u = np.array(ann.utilities("p", ["c", "b", "a"])["utility"])
    assert u.tolist() == pytest.approx([0.1, 0.2, 0.5])
    soft = np.exp(u / 0.3) / np.exp(u / 0.3).sum()
    tops = np.bincount([ann.rank("p", ["c", "b", "a"]).ranked[0] for _ in range(n)],
                       minlength=3) / n
    for k in range(3):
        assert abs(tops[k] - soft[k]) < tol(soft[k], n)


def test_rank_ties_within_margin():
    names, gold = numbered(20, seed=6)
    ann = SimulatedAnnotator("t", table_gold(gold), temperature=0.1, tie_margin=0.15, seed=1)
    rng = np.random.default_rng(2)
    tied = 0
    for _ in range(300):
        responses = list(rng.choice(names, size=6, replace=False))
        r = ann.rank("p", responses)
        assert sorted(r.ranked) == list(range(6))
        for tier in r.tiers:
            g = [gold[responses[i]] for i in tier]
            assert max(g) - min(g) < 0.15
            tied += len(tier) > 1
    assert tied > 0


def test_rate_within_scale_and_noise():
    names, gold = numbered(20)
    truth = {name: 4.0 * g for name, g in gold.items()}
    ann = SimulatedAnnotator("rater", table_gold(gold), seed=2)

    def attributes(prompt, response):
        return {"helpfulness": truth[response], "verbosity": 2.0}

    sd, n = 0.5, 2000
    records = [ann.rate("p", "r5", attributes, noise_sd=sd) for _ in range(n)]
    for r in records:
        assert set(r.scores) == {"helpfulness", "verbosity"}
        assert all(0.0 <= v <= 4.0 for v in r.scores.values())
        assert r.scales["verbosity"] == (0.0, 4.0)
    v = np.array([r.scores["verbosity"] for r in records])  # centre of the scale: no clipping
    assert abs(v.mean() - 2.0) < Z * sd / math.sqrt(n)
    # sample sd: standard error about sd / sqrt(2 n)
    assert abs(v.std(ddof=1) - sd) < Z * sd / math.sqrt(2 * n)
    exact = ann.rate("p", "r3", attributes, noise_sd=0.0)
    assert exact.scores["helpfulness"] == pytest.approx(truth["r3"])
    # clipping and discrete scores
    extreme = [ann.rate("p", "r0", lambda p, r: {"x": 3.9}, scale=(1, 5), noise_sd=2.0,
                        discrete=True).scores["x"] for _ in range(200)]
    assert all(1 <= x <= 5 and float(x).is_integer() for x in extreme)
    default = ann.rate("p", "r7")
    assert set(default.scores) == {"gold"}
    assert default.metadata["true_scores"] == {"gold": gold["r7"]}
    assert default.metadata["noise_sd"] == ann.rating_noise_sd


def test_pool_reproducible_and_assignment():
    names, gold = numbered(20)
    pairs = random_pairs(names, 200)

    def run(seed: int) -> list[tuple[str, str]]:
        pool = alpacafarm_pool(table_gold(gold), n=6, scale=0.3, seed=seed)
        return [(c.annotator.id, c.outcome.value) for c in pool.annotate_pairs(pairs)]

    assert run(0) == run(0)
    assert run(0) != run(1)
    # an annotator's own generator state does not leak into the pool's output
    pool = alpacafarm_pool(table_gold(gold), n=6, scale=0.3, seed=0)
    for a in pool:
        a.compare("p", "r1", "r2")
    assert [(c.annotator.id, c.outcome.value) for c in pool.annotate_pairs(pairs)] == run(0)
    rr = AnnotatorPool([SimulatedAnnotator(f"a{i}", table_gold(gold)) for i in range(3)],
                       assignment="round_robin")
    ids = [c.annotator.id for c in rr.annotate_pairs(pairs[:7])]
    assert ids == ["a0", "a1", "a2", "a0", "a1", "a2", "a0"]
    ranks = rr.annotate_rankings([("p", names[:4]), {"prompt": "p", "responses": names[4:7]}])
    assert [len(r.responses) for r in ranks] == [4, 3]
    ratings = rr.annotate_ratings([("p", "r1"), {"prompt": "p", "response": "r2"}])
    assert [r.response for r in ratings] == ["r1", "r2"]
    with pytest.raises(ValueError):
        AnnotatorPool([SimulatedAnnotator("a", flat_gold), SimulatedAnnotator("a", flat_gold)])


def test_alpacafarm_pool_personas_and_training_flips():
    names, gold = numbered(40)
    pool = alpacafarm_pool(table_gold(gold), n=12, scale=0.3)
    assert len(pool) == 12
    assert {a.id.rsplit("-", 1)[0] for a in pool} == set(PERSONAS)
    verbose = next(a for a in pool if a.id.startswith("verbose_lover"))
    assert verbose.length_bias == pytest.approx(0.15) and verbose.flip_rate == 0.0
    train = alpacafarm_pool(table_gold(gold), n=12, scale=0.3, training=True)
    assert all(a.flip_rate == pytest.approx(0.25) for a in train)
    pairs = random_pairs(names, 3000)
    clean = agreement(pool.annotate_pairs(pairs))["gold_agreement"]
    noisy = agreement(train.annotate_pairs(pairs))["gold_agreement"]
    # flipping 25% of labels maps accuracy q to 0.75 q + 0.25 (1 - q)
    expected = 0.75 * clean + 0.25 * (1 - clean)
    assert abs(noisy - expected) < 2 * tol(expected, 3000)
    careful = alpacafarm_pool(table_gold(gold), n=2, personas=["careful"], scale=0.3)
    assert [a.id for a in careful] == ["careful-0", "careful-1"]
    with pytest.raises(ValueError):
        alpacafarm_pool(table_gold(gold), personas=["nobody"])


def test_agreement_high_for_low_noise_and_lower_for_noisy():
    names, gold = numbered(60)
    # one item per unordered pair (repeated pairs would merge into one agreement item)
    pairs = list({frozenset(p[1:]): p for p in random_pairs(names, 900)}.values())[:600]
    assert len(pairs) == 600
    sharp = [SimulatedAnnotator(f"s{i}", table_gold(gold), temperature=0.01) for i in range(4)]
    noisy = [SimulatedAnnotator(f"n{i}", table_gold(gold), temperature=0.3, flip_rate=0.2)
             for i in range(4)]
    hi = agreement(sharp, pairs, n_repeats=3, seed=1)
    lo = agreement(noisy, pairs, n_repeats=3, seed=1)
    assert hi["items"] == 600 and hi["annotations"] == 1800
    assert hi["pairwise_agreement"] > 0.95 and hi["krippendorff_alpha"] > 0.9
    assert lo["pairwise_agreement"] < hi["pairwise_agreement"] - 0.2
    assert lo["krippendorff_alpha"] < 0.5
    assert hi["gold_agreement"] > lo["gold_agreement"]
    # a list of annotators is pooled with the seed; records give the same statistics
    again = agreement(AnnotatorPool(noisy, seed=1), pairs, n_repeats=3)
    assert again == lo
    records = []
    for prompt, a, b in pairs[:100]:
        records += [ann.compare(prompt, a, b) for ann in noisy[:3]]
        records += [ann.rate(prompt, a) for ann in noisy[:2]]
    from_records = agreement(records)
    assert from_records["items"] == 100 and from_records["annotations"] == 300
    assert from_records["rating"]["items"] == len({a for _, a, _ in pairs[:100]})


def test_validation_and_word_length():
    assert word_length([{"role": "user", "content": "a b"}, {"role": "x", "content": "c"}]) == 3
    for bad in ({"temperature": -1}, {"flip_rate": 1.5}, {"tie_margin": -0.1},
                {"tie_prob": 2.0}):
        with pytest.raises(ValueError):
            SimulatedAnnotator("bad", flat_gold, **bad)
    with pytest.raises(ValueError):
        SimulatedAnnotator("a", flat_gold).rank("p", ["only"])
    with pytest.raises(ValueError):
        agreement([SimulatedAnnotator("a", flat_gold)], [("p", "x", "y")])
