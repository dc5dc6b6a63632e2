"""Agreement maths: Krippendorff's alpha and Fleiss' kappa against their reference packages,
each annotator vs the leave-one-out majority, position bias and labels per hour by hand."""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timezone

import numpy as np
import pytest

from prefkit.data import stats
from prefkit.evaluate.agreement import (
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    krippendorff_alpha_interval,
    krippendorff_alpha_nominal,
    krippendorff_alpha_ordinal,
    labels_per_hour,
    position_bias,
    vs_majority,
)

krippendorff = pytest.importorskip("krippendorff")
inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")

LEVELS = ("nominal", "ordinal", "interval")


def _units(table: np.ndarray) -> list[list[float]]:
    """Columns of a raters x items table with NaN gaps -> per-item lists of values."""
    return [[float(v) for v in table[:, u] if not np.isnan(v)] for u in range(table.shape[1])]


def _reference(table, level: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 where alpha is undefined
        return float(krippendorff.alpha(reliability_data=table, level_of_measurement=level))


def _random_table(rng: np.random.Generator, level: str) -> np.ndarray:
    raters, items = int(rng.integers(2, 7)), int(rng.integers(3, 40))
    if level == "interval":
        values = np.round(rng.normal(10.0, 3.0, size=(1, items)) + rng.normal(0, 2.0, size=(
            raters, items)), 2)
    else:
        k = int(rng.integers(2, 6))
        truth = rng.integers(0, k, size=(1, items))
        noisy = rng.integers(0, k, size=(raters, items))
        values = np.where(rng.random((raters, items)) < 0.6, truth, noisy).astype(float)
        if level == "ordinal":
            values = np.array([1.0, 2.5, 7.0, 10.0, 100.0])[values.astype(int)]  # uneven steps
    return np.where(rng.random(values.shape) < 0.3, np.nan, values)


@pytest.mark.parametrize("level", LEVELS)
def test_krippendorff_alpha_equals_reference_package_on_random_data(level):
    rng = np.random.default_rng(sum(map(ord, level)))
    checked = 0
    for _ in range(25):
        table = _random_table(rng, level)
        units = _units(table)
        pairable = [v for values in units if len(values) >= 2 for v in values]
        if len(set(pairable)) < 2:
            continue
        ours = krippendorff_alpha(units, level)
        assert ours is not None
        assert ours == pytest.approx(_reference(table, level), abs=1e-9)
        # a None in a unit is a missing value, exactly like leaving it out
        with_gaps = [[*values, None] for values in units]
        assert krippendorff_alpha(with_gaps, level) == pytest.approx(ours, abs=1e-12)
        checked += 1
    assert checked >= 20


def test_krippendorff_alpha_published_example_all_levels():
    """Krippendorff (2011), 4 coders x 12 units with gaps: nominal 0.743, ordinal 0.815,
    interval 0.849 -- and the reference package to 1e-9."""
    table = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
        [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
    ])
    units = _units(table)
    for level, published in zip(LEVELS, (0.743, 0.815, 0.849), strict=True):
        alpha = krippendorff_alpha(units, level)
        assert alpha == pytest.approx(published, abs=5e-4)
        assert alpha == pytest.approx(_reference(table, level), abs=1e-9)
    assert krippendorff_alpha_ordinal(units) == krippendorff_alpha(units, "ordinal")
    assert krippendorff_alpha_interval(units) == krippendorff_alpha(units, "interval")


def test_krippendorff_alpha_nominal_strings_and_any_hashable():
    table = np.array([["a", "b", "tie", "a", "nan", "b"],
                      ["a", "b", "a", "a", "b", "nan"],
                      ["nan", "b", "tie", "b", "b", "b"]])
    units = [[v for v in table[:, u] if v != "nan"] for u in range(table.shape[1])]
    reference = float(krippendorff.alpha(reliability_data=table, level_of_measurement="nominal"))
    assert krippendorff_alpha(units) == pytest.approx(reference, abs=1e-9)
    relabelled = [[(v, 1) for v in values] for values in units]  # tuples are labels too
    assert krippendorff_alpha(relabelled) == pytest.approx(reference, abs=1e-12)


def test_krippendorff_alpha_edge_cases():
    # one pairable item with two different values: D_o = D_e, alpha = 0 at every level
    for level in LEVELS:
        table = np.array([[1.0, 3.0], [2.0, np.nan]])
        assert krippendorff_alpha(_units(table), level) == pytest.approx(
            _reference(table, level), abs=1e-9)
        assert krippendorff_alpha([[1, 2], [3]], level) == pytest.approx(0.0, abs=1e-12)
    # perfect agreement
    table = np.array([[1.0, 2.0, 3.0, 1.0], [1.0, 2.0, 3.0, 1.0], [1.0, np.nan, 3.0, np.nan]])
    for level in LEVELS:
        assert krippendorff_alpha(_units(table), level) == pytest.approx(1.0, abs=1e-12)
        assert _reference(table, level) == pytest.approx(1.0, abs=1e-12)
    # systematic disagreement is negative; ordinal only sees the order
    assert krippendorff_alpha([[1, 2], [2, 1], [1, 2]], "nominal") < 0
    assert krippendorff_alpha([[1, 1000], [5, 6], [6, 5]], "ordinal") == pytest.approx(
        krippendorff_alpha([[1, 4], [2, 3], [3, 2]], "ordinal"), abs=1e-12)
    # large offsets: exact where sum-of-squares formulas cancel
    rng = np.random.default_rng(7)
    table = 1e9 + rng.integers(0, 5, size=(3, 30)).astype(float)
    table[rng.random(table.shape) < 0.2] = np.nan
    assert krippendorff_alpha(_units(table), "interval") == pytest.approx(
        _reference(table, "interval"), abs=1e-9)


def test_krippendorff_alpha_undefined_is_none():
    for level in LEVELS:
        assert krippendorff_alpha([], level) is None
        assert krippendorff_alpha([[1], [2], [None, 3]], level) is None  # nothing pairable
        assert krippendorff_alpha([[2, 2], [2, 2, 2], [5]], level) is None  # no variation
        # the reference package divides 0 by 0 when the only other value is unpairable
        assert math.isnan(_reference(np.array([[2.0, 2.0, 5.0], [2.0, 2.0, np.nan]]), level))
    assert krippendorff_alpha_nominal([{"a": 2}, {"a": 3}]) is None
    assert krippendorff_alpha_interval([[1.0]]) is None
    assert krippendorff_alpha_ordinal([[4.0, 4.0]]) is None
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha([[1, 2]], "ratio")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="numbers"):
        krippendorff_alpha([["a", "b"]], "interval")


def test_data_stats_uses_the_same_functions():
    assert stats.krippendorff_alpha_nominal is krippendorff_alpha_nominal
    assert stats.krippendorff_alpha_interval is krippendorff_alpha_interval


# --------------------------------------------------------------------------- Fleiss' kappa


def test_fleiss_kappa_equals_statsmodels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        items, raters = int(rng.integers(2, 40)), int(rng.integers(2, 8))
        k = int(rng.integers(2, 6))
        truth = rng.integers(0, k, size=(items, 1))
        labels = np.where(rng.random((items, raters)) < 0.5, truth,
                          rng.integers(0, k, size=(items, raters)))
        table, _ = inter_rater.aggregate_raters(labels)
        if (table.sum(axis=0) > 0).sum() < 2:
            continue
        result = fleiss_kappa(labels.tolist())
        assert result["kappa"] == pytest.approx(inter_rater.fleiss_kappa(table), abs=1e-9)
        assert (result["items_used"], result["items_skipped"], result["raters_per_item"]) == (
            items, 0, raters)
    # the worked example on Wikipedia's "Fleiss' kappa" page: 10 items, 14 raters, 5
    # categories; P_bar = 0.378, P_e = 0.213, kappa = 0.210
    counts = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])
    diagnoses = [[c for c in range(5) for _ in range(row[c])] for row in counts]
    result = fleiss_kappa(diagnoses, categories=range(5))
    assert result["kappa"] == pytest.approx(inter_rater.fleiss_kappa(counts), abs=1e-9)
    assert result["kappa"] == pytest.approx(0.210, abs=5e-4)
    assert result["observed_agreement"] == pytest.approx(0.378, abs=5e-4)
    assert result["expected_agreement"] == pytest.approx(0.213, abs=5e-4)


def test_fleiss_kappa_uses_the_most_common_number_of_raters():
    three = [["a", "a", "b"], ["b", "b", "b"], ["a", "b", None, "c"], ["c", "c", "a"]]
    others = [["a", "b"], ["a"], [], ["a", "a", "a", "b"], [None, None]]
    result = fleiss_kappa(three + others)
    table, _ = inter_rater.aggregate_raters(
        np.array([["a", "a", "b"], ["b", "b", "b"], ["a", "b", "c"], ["c", "c", "a"]]))
    assert result["kappa"] == pytest.approx(inter_rater.fleiss_kappa(table), abs=1e-9)
    assert (result["items_used"], result["items_skipped"], result["raters_per_item"]) == (4, 2, 3)
    # a tie between numbers of raters goes to the larger one
    tied = fleiss_kappa([["a", "b"], ["a", "a"], ["a", "a", "b"], ["b", "b", "b"]])
    assert (tied["raters_per_item"], tied["items_used"], tied["items_skipped"]) == (3, 2, 2)


def test_fleiss_kappa_undefined_and_bad_labels():
    assert fleiss_kappa([["a", "a"], ["a", "a"]])["kappa"] is None  # P_e = 1
    empty = fleiss_kappa([["a"], []])
    assert empty["kappa"] is None and empty["items_used"] == 0 and empty["items_skipped"] == 0
    assert empty["raters_per_item"] is None
    with pytest.raises(ValueError, match="categories"):
        fleiss_kappa([["a", "z"]], categories=["a", "b"])


# --------------------------------------------------------------------------- vs majority


def test_vs_majority_hand_computed():
    labels = [
        ("i1", "A", "y"),  # replaced by A's later label on i1
        ("i1", "A", "x"), ("i1", "B", "x"), ("i1", "C", "x"),
        ("i2", "A", "x"), ("i2", "B", "y"), ("i2", "C", "y"),
        ("i3", "A", "y"), ("i3", "B", "y"), ("i3", "C", "y"), ("i3", "D", "x"),
        ("i4", "A", "x"), ("i4", "B", "x"),  # only 2 labels: not used
        ("i5", "A", "x"), ("i5", "B", "x"), ("i5", "C", "y"),
        ("i6", "E", "x"),
    ]
    out = vs_majority(labels)
    assert list(out) == ["A", "B", "C", "D", "E"]
    # A: i1 (x, x), i2 (x, y: others y y), i3 (y, y); i5 others x / y tied -> skipped.
    # kappa: m = 3, matches 2, A uses x2 y1, majority x1 y2 -> chance 2+2 = 4,
    # (3*2 - 4) / (9 - 4) = 0.4.  Without leave-one-out A would agree on i5 too (3/4).
    assert out["A"] == {"labels": 5, "n": 4, "compared": 3, "others_tied": 1,
                        "agreement": pytest.approx(2 / 3), "cohen_kappa": pytest.approx(0.4)}
    # B: i2 and i5 tied; i1 (x, x), i3 (y, y): kappa (2*2 - 2) / (4 - 2) = 1
    assert out["B"] == {"labels": 5, "n": 4, "compared": 2, "others_tied": 2,
                        "agreement": 1.0, "cohen_kappa": 1.0}
    # C: i2 tied; i1 (x, x), i3 (y, y), i5 (y, x): C x1 y2, majority x2 y1 -> 0.4
    assert out["C"] == {"labels": 4, "n": 4, "compared": 3, "others_tied": 1,
                        "agreement": pytest.approx(2 / 3), "cohen_kappa": pytest.approx(0.4)}
    # D: i3 (x, y): p_o = 0, p_e = 0 -> kappa 0
    assert out["D"] == {"labels": 1, "n": 1, "compared": 1, "others_tied": 0,
                        "agreement": 0.0, "cohen_kappa": 0.0}
    assert out["E"] == {"labels": 1, "n": 0, "compared": 0, "others_tied": 0,
                        "agreement": None, "cohen_kappa": None}


def test_vs_majority_leaves_the_annotator_out():
    """A lone dissenter among three: including their own vote would make the majority of
    {x, y, y} on item 2 agree with B, C and with A on item 1."""
    labels = [("1", "A", "x"), ("1", "B", "x"), ("1", "C", "y"),
              ("2", "A", "x"), ("2", "B", "y"), ("2", "C", "y"),
              ("3", "A", "x"), ("3", "B", "y"), ("3", "C", "x"), ("3", "D", "y")]
    out = vs_majority(labels)
    # item 1: A and B see a tie (x / y); C sees x, x. item 2: A sees y, y; B, C a tie.
    # item 3: everyone sees two of the other label and one of their own -> disagrees.
    assert out["A"]["compared"] == 2 and out["A"]["agreement"] == 0.0
    assert out["B"]["compared"] == 1 and out["B"]["agreement"] == 0.0
    assert out["C"]["compared"] == 2 and out["C"]["agreement"] == 0.0
    assert out["D"]["compared"] == 1 and out["D"]["agreement"] == 0.0


def test_vs_majority_undefined_kappa_and_cohen_kappa():
    out = vs_majority([(i, a, "x") for i in range(3) for a in "ABC"])
    assert out["A"]["agreement"] == 1.0 and out["A"]["cohen_kappa"] is None  # p_e = 1
    assert cohen_kappa([]) is None
    assert cohen_kappa([("a", "a"), ("b", "b"), ("a", "b"), ("b", "b")]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="min_labels"):
        vs_majority([], min_labels=1)


# --------------------------------------------------------------------------- position bias


def test_position_bias_hand_computed():
    choices = ([("u", True)] * 8 + [("u", False)] * 2 + [("v", True)] * 3
               + [("w", True), ("w", False)] * 5)
    out = position_bias(choices)
    assert list(out) == ["u", "v", "w"]
    u = out["u"]
    assert (u["n"], u["first"], u["rate"]) == (10, 8, 0.8)
    # two-sided exact: 2 * P(X >= 8 | 10, 1/2) = 2 * (45 + 10 + 1) / 1024
    assert u["p_value"] == pytest.approx(112 / 1024, abs=1e-12)
    assert u["ci"] == pytest.approx((0.4902, 0.9433), abs=1e-4)  # Wilson 8/10
    v = out["v"]
    assert (v["n"], v["rate"]) == (3, 1.0) and v["p_value"] == pytest.approx(0.25)
    assert v["ci"][0] == pytest.approx(0.4385, abs=1e-4) and v["ci"][1] == 1.0
    assert out["w"]["rate"] == 0.5 and out["w"]["p_value"] == pytest.approx(1.0)
    assert position_bias([]) == {}
    with pytest.raises(TypeError, match="bool"):
        position_bias([("u", "a")])


# --------------------------------------------------------------------------- labels per hour


def test_labels_per_hour_sessions():
    out = labels_per_hour({
        # sessions [0..180], [2000, 2030], [5000]; no seconds_spent: each session's first label
        # gets the median within-session gap, median(60, 60, 60, 30) = 60
        "a": [120, 0, 60, 180, 2000, 2030, 5000],
        # [0, 100], [1000], [1700]; first labels: 45 s, unknown -> median gap 100, 900 capped at
        # 600 s. Active 100 + 45 + 100 + 600 = 845
        "b": [(0, 45), (100, 20), (1000, None), (1700, 900)],
        # a gap of exactly 600 s stays in the session, 601 s splits: 600 + 600 + 600
        "c": [0, 600, 1201],
        "d": [100.0],  # one label, no time known
    })
    assert out["a"] == {"labels": 7, "sessions": 3, "active_seconds": 390.0,
                        "labels_per_hour": pytest.approx(7 * 3600 / 390)}
    assert out["b"] == {"labels": 4, "sessions": 3, "active_seconds": 845.0,
                        "labels_per_hour": pytest.approx(4 * 3600 / 845)}
    assert out["c"]["sessions"] == 2 and out["c"]["labels_per_hour"] == pytest.approx(6.0)
    assert out["d"] == {"labels": 1, "sessions": 1, "active_seconds": 0.0,
                        "labels_per_hour": None}
    # a single-label session counts its own label time
    assert labels_per_hour({"d": [(100.0, 30.0)]})["d"]["labels_per_hour"] == pytest.approx(120)
    assert labels_per_hour({"d": [100.0]}, default_label_s=30)["d"]["labels_per_hour"] == 120
    # datetimes work like epoch seconds; a custom gap
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    dts = [t0.replace(minute=m) for m in (0, 5, 30)]
    as_dt = labels_per_hour({"e": dts}, gap_s=1200)["e"]
    assert as_dt == labels_per_hour({"e": [d.timestamp() for d in dts]}, gap_s=1200)["e"]
    assert as_dt["sessions"] == 2 and as_dt["active_seconds"] == 300 + 300 + 300
    assert labels_per_hour({}) == {}


def test_data_stats_does_not_load_scipy_stats():
    """`prefkit data stats` uses the agreement maths; prefkit.evaluate imports its members on
    first use, so that costs no scipy.stats / matplotlib import (~1 s on a loaded machine)."""
    import subprocess
    import sys

    code = ("import sys, prefkit.data.stats, prefkit.evaluate.agreement; "
            "print(sorted(m for m in ('scipy.stats', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
