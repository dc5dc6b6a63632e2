"""report/figures.py: what each figure draws -- the data of its markers, whiskers, lines and
bars, the order of its rows, its labels -- read back from the matplotlib figure it saved."""

import io

import matplotlib.figure
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from prefkit.report import figures

PNG = b"\x89PNG\r\n\x1a\n"


def _errorbars(ax):
    """[(x, y, whisker segment ((x0, y0), (x1, y1)))] of the axes' error bars, in draw order."""
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            (x, y), = c.lines[0].get_xydata()
            (seg,) = c.lines[2][0].get_segments()
            out.append((float(x), float(y), [tuple(map(float, p)) for p in seg]))
    return out


def _markers(ax, marker="o"):
    """(x, y) of every point drawn with ``marker`` (error-bar centres included)."""
    return [tuple(map(float, xy)) for line in ax.lines if line.get_marker() == marker
            for xy in line.get_xydata()]


def _labels(ticklabels):
    return [t.get_text() for t in ticklabels]


def test_a_path_target_gets_a_png_and_its_path_back(tmp_path, drawn):
    out = figures.plot_lab_win_rates(["sft", "dpo"], [0.5, 0.7], [0.4, 0.6], [0.6, 0.8],
                                     tmp_path / "w.png")
    assert out == str(tmp_path / "w.png")
    assert (tmp_path / "w.png").read_bytes().startswith(PNG)
    buffer = io.BytesIO()
    assert figures.plot_lab_win_rates(["sft"], [0.5], [None], [None], buffer) is buffer
    assert buffer.getvalue().startswith(PNG)


def test_leaderboard_sorted_with_interval_whiskers(tmp_path, drawn):
    figures.plot_leaderboard(["a", "b", "c"], np.array([1000.0, 1100.0, 900.0]),
                             np.array([980.0, 1090.0, 850.0]), np.array([1010.0, 1120.0, 950.0]),
                             tmp_path / "lb.png", title="Arena")
    ax = drawn[-1].axes[0]
    assert _labels(ax.get_yticklabels()) == ["c", "a", "b"]  # best on top (largest y)
    (bar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(bar.lines[0].get_xydata(), [[900, 0], [1000, 1], [1100, 2]])
    segments = bar.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 0] for s in segments], [[850, 950], [980, 1010],
                                                             [1090, 1120]])
    assert ax.get_title() == "Arena" and "95% bootstrap interval" in ax.get_xlabel()
    figures.plot_leaderboard(["a", "b"], np.array([2.0, 1.0]), None, None, tmp_path / "p.png")
    ax = drawn[-1].axes[0]
    assert _markers(ax) == [(1.0, 0.0), (2.0, 1.0)] and not ax.containers
    assert ax.get_xlabel() == "rating (Elo scale)"


def test_leaderboard_interval_that_misses_the_estimate(tmp_path, drawn):
    # a percentile interval from few bootstrap rounds need not contain the estimate:
    # the whisker runs from the estimate to the interval's far end (was a ValueError,
    # "'xerr' must not contain negative values")
    figures.plot_leaderboard(["a", "b", "c"], np.array([1000.0, 1100.0, 900.0]),
                             np.array([1005.0, 1050.0, 850.0]),
                             np.array([1020.0, 1090.0, 950.0]), tmp_path / "lb.png",
                             interval="95% sandwich interval")
    ax = drawn[-1].axes[0]
    (bar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = bar.lines[2][0].get_segments()
    # rows bottom-up: c (inside), a (interval above the estimate), b (interval below it)
    np.testing.assert_allclose([s[:, 0] for s in segments], [[850, 950], [1000, 1020],
                                                             [1050, 1100]])
    assert ax.get_xlabel() == "rating (Elo scale), 95% sandwich interval"
    assert (tmp_path / "lb.png").read_bytes().startswith(PNG)


def test_win_rate_matrices_show_the_numbers(tmp_path, drawn):
    observed = np.array([[np.nan, 0.75, 0.9], [0.25, np.nan, np.nan], [0.1, np.nan, np.nan]])
    predicted = np.array([[np.nan, 0.7, 0.8], [0.3, np.nan, 0.6], [0.2, 0.4, np.nan]])
    figures.plot_win_rates(["a", "b", "c"], observed, predicted, tmp_path / "wr.png")
    left, right = drawn[-1].axes[:2]
    for ax, matrix, title in ((left, observed, "observed"), (right, predicted, "predicted")):
        shown = ax.images[0].get_array()
        np.testing.assert_array_equal(shown.mask, np.isnan(matrix))
        np.testing.assert_allclose(shown.filled(-1), np.where(np.isnan(matrix), -1, matrix))
        assert ax.get_title() == f"P(row beats column), {title}"
        assert _labels(ax.get_yticklabels()) == ["a", "b", "c"]
    assert sorted(t.get_text() for t in left.texts) == ["0.10", "0.25", "0.75", "0.90"]
    assert len(right.texts) == 6  # every off-diagonal cell


def test_lab_win_rates_rows_whiskers_and_the_tie_line(drawn):
    figures.plot_lab_win_rates(["sft", "dpo", "ipo"], [0.5, 0.7, 0.6], [0.45, 0.6, None],
                               [0.55, 0.8, None], io.BytesIO())
    ax = drawn[-1].axes[0]
    assert _errorbars(ax) == [(0.5, 0.0, [(0.45, 0.0), (0.55, 0.0)]),
                              (0.7, 1.0, [(0.6, 1.0), (0.8, 1.0)])]
    assert _markers(ax) == [(0.5, 0.0), (0.7, 1.0), (0.6, 2.0)]  # ipo: no bounds, no whisker
    centres = [line for line in ax.lines if line.get_marker() == "o"]
    assert [c.get_color() for c in centres] == ["#808080", "#1f5fa8", "#1f5fa8"]  # sft grey
    (tie,) = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert set(tie.get_xdata()) == {0.5}
    assert _labels(ax.get_yticklabels()) == ["sft", "dpo", "ipo"]
    assert ax.get_ylim() == (2.5, -0.5)  # first method on top


def test_reward_vs_kl_points_are_labelled(drawn):
    figures.plot_reward_vs_kl(["sft", "dpo", "ppo"], [0.0, 1.5, 3.0], [0.2, 0.6, 0.5],
                              io.BytesIO(), gold_se=[None, 0.05, 0.1])
    ax = drawn[-1].axes[0]
    assert _markers(ax) == [(0.0, 0.2), (1.5, 0.6), (3.0, 0.5)]
    assert [(x, y) for x, y, _ in _errorbars(ax)] == [(1.5, 0.6), (3.0, 0.5)]
    np.testing.assert_allclose(_errorbars(ax)[0][2], [(1.5, 0.55), (1.5, 0.65)])
    assert [(a.get_text(), a.xy) for a in ax.texts] == [("sft", (0.0, 0.2)),
                                                         ("dpo", (1.5, 0.6)),
                                                         ("ppo", (3.0, 0.5))]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("KL to SFT (nats per answer)",
                                                  "mean gold reward")


def test_overoptimization_gold_and_proxy_on_their_own_axes(drawn):
    figures.plot_overoptimization([4, 1, 16, 2, 8], [0.3, 0.1, 0.2, 0.25, 0.35],
                                  [1.0, 0.0, 3.0, 0.5, 2.0], io.BytesIO())
    gold_ax, proxy_ax = drawn[-1].axes
    (gold, star) = [line for line in gold_ax.lines]
    np.testing.assert_allclose(gold.get_xydata(), [[1, 0.1], [2, 0.25], [4, 0.3], [8, 0.35],
                                                   [16, 0.2]])  # sorted along n
    assert star.get_marker() == "*" and star.get_xydata().tolist() == [[8.0, 0.35]]
    (proxy,) = proxy_ax.lines
    np.testing.assert_allclose(proxy.get_xydata(), [[1, 0], [2, 0.5], [4, 1], [8, 2], [16, 3]])
    assert gold_ax.get_xscale() == "log" and _labels(gold_ax.get_xticklabels()) == [
        "1", "2", "4", "8", "16"]
    assert proxy_ax.get_ylabel() == "mean proxy reward (reward model)"
    legend = [t.get_text() for t in drawn[-1].legends[0].get_texts()]
    assert legend == ["gold reward", "gold maximum", "proxy reward"]


def test_training_curves_one_panel_per_key_lines_sorted_by_step(drawn):
    curves = {
        "dpo": [{"step": 2, "gold_reward": 0.2, "kl": 0.5}, {"step": 1, "gold_reward": 0.1},
                {"step": 3, "gold_reward": float("nan")}],
        "ppo": [{"step": 1, "gold_reward": 0.0, "kl": 0.3}, {"step": 2, "kl": 0.4}],
    }
    figures.plot_training_curves(curves, io.BytesIO())
    fig = drawn[-1]
    assert [ax.get_title() for ax in fig.axes] == ["gold reward", "kl"]  # no proxy panel
    gold, kl = fig.axes
    assert [line.get_label() for line in gold.lines] == ["dpo", "ppo"]
    np.testing.assert_allclose(gold.lines[0].get_xydata(), [[1, 0.1], [2, 0.2]])  # NaN dropped
    np.testing.assert_allclose(kl.lines[1].get_xydata(), [[1, 0.3], [2, 0.4]])
    # one colour per method in every panel
    assert gold.lines[1].get_color() == kl.lines[1].get_color() != kl.lines[0].get_color()
    with pytest.raises(ValueError, match="no curve has any of"):
        figures.plot_training_curves({"dpo": [{"step": 1}]}, io.BytesIO())


def test_training_curves_legend_names_every_method(drawn):
    curves = {"sft": [{"step": 1, "kl": 0.0}],
              "dpo": [{"step": 1, "gold_reward": 0.1, "kl": 0.2}],
              "ppo": [{"step": 1, "kl": 0.3}, {"step": 2, "kl": 0.4}],
              "none": [{"step": 1}]}
    figures.plot_training_curves(curves, io.BytesIO())
    legend = drawn[-1].legends[0]
    # methods without a line in the first panel too, in the order given; no line, no entry
    assert [t.get_text() for t in legend.get_texts()] == ["sft", "dpo", "ppo"]
    kl = drawn[-1].axes[1]
    assert [h.get_color() for h in legend.legend_handles] == [
        line.get_color() for line in kl.lines]


def test_lab_leaderboard_best_on_top_with_rank_labels_and_the_anchor(drawn):
    figures.plot_lab_leaderboard(["sft", "dpo", "ppo"], [1000.0, 1100.0, 1050.0],
                                 [None, 1080.0, 1020.0], [None, 1120.0, 1075.0], io.BytesIO(),
                                 ranks=[3, 1, 2])
    ax = drawn[-1].axes[0]
    assert _labels(ax.get_yticklabels()) == ["dpo", "ppo", "sft (anchor)"]
    assert _markers(ax) == [(1100.0, 0.0), (1050.0, 1.0), (1000.0, 2.0)]
    assert [(x, y) for x, y, _ in _errorbars(ax)] == [(1100.0, 0.0), (1050.0, 1.0)]
    assert [a.get_text() for a in ax.texts] == ["1100  (rank 1)", "1050  (rank 2)",
                                               "1000  (rank 3)"]
    (anchor,) = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert set(anchor.get_xdata()) == {1000.0}
    low, high = ax.get_xlim()
    assert low < 1000.0 and high > 1120.0  # every whisker and label inside


def test_judge_win_rates_one_marker_per_judge_and_method(drawn):
    judges = {"gold": ([0.5, 0.7], [0.4, 0.6], [0.6, 0.8]),
              "pool": ([0.5, None], [None, None], [None, None])}
    figures.plot_judge_win_rates(["sft", "dpo"], judges, io.BytesIO())
    ax = drawn[-1].axes[0]
    assert _markers(ax, "o") == [(0.5, -0.22), (0.7, 0.78)]  # gold, shifted up in its row
    assert _markers(ax, "s") == [(0.5, 0.22)]  # pool: no marker where the rate is None
    assert [t.get_text() for t in drawn[-1].legends[0].get_texts()] == ["gold", "pool"]
    assert _labels(ax.get_yticklabels()) == ["sft (reference)", "dpo"]


def test_judge_legend_follows_the_order_of_the_judges(drawn):
    # the first judge has only plain markers, the second error bars: matplotlib's own legend
    # lists plain markers before error bars whatever the order; ours follows the judges
    judges = {"pool": ([0.5, 0.6], [None, None], [None, None]),
              "gold": ([0.5, 0.7], [0.4, 0.6], [0.6, 0.8]),
              "never": ([None, None], [None, None], [None, None]),
              "rm": ([None, 0.65], [None, None], [None, None])}
    figures.plot_judge_win_rates(["sft", "dpo"], judges, io.BytesIO())
    legend = drawn[-1].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["pool", "gold", "rm"]


def test_reliability_diagram_bars_dots_counts_and_ece(drawn):
    bins = [{"lo": 0.0, "hi": 0.5, "count": 10, "mean_prob": 0.3, "accuracy": 0.2},
            {"lo": 0.5, "hi": 0.75, "count": 0, "mean_prob": None, "accuracy": None},
            {"lo": 0.75, "hi": 1.0, "count": 30, "mean_prob": 0.9, "accuracy": 0.8}]
    figures.plot_reliability_diagram(bins, io.BytesIO(), ece=0.1234)
    ax = drawn[-1].axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == [0.2, 0.8]  # the empty bin is skipped
    assert [b.get_width() for b in bars] == [0.5, 0.25]
    assert [b.get_x() + b.get_width() / 2 for b in bars] == [0.25, 0.875]
    assert _markers(ax) == [(0.3, 0.3), (0.9, 0.9)]  # mean predicted probability, on the diagonal
    assert [t.get_text() for t in ax.texts] == ["10", "30"]
    assert ax.get_title() == "Reward model calibration, ECE = 0.123"
    with pytest.raises(ValueError, match="no non-empty calibration bin"):
        figures.plot_reliability_diagram(bins[1:2], io.BytesIO())


def test_length_drift_bars_colours_and_labels(drawn):
    figures.plot_length_drift(["dpo", "simpo"], [0.5, -0.25], [0.1, -0.05], io.BytesIO(),
                              gold_se=[0.02, 0.03], reference_length=5.0)
    left, right = drawn[-1].axes
    assert [b.get_width() for b in left.patches] == [0.5, -0.25]
    assert [b.get_width() for b in right.patches] == [0.1, -0.05]
    orange, blue, green, red = (matplotlib.colors.to_rgba(c, 0.85) for c in
                                ("#d9822b", "#1f5fa8", "#2e8b57", "#c0392b"))
    assert [b.get_facecolor() for b in left.patches] == [orange, blue]
    assert [b.get_facecolor() for b in right.patches] == [green, red]
    assert [t.get_text() for t in left.texts] == ["+0.50", "-0.25"]
    assert left.get_xlabel() == "mean length − SFT's, words (SFT: 5.00)"
    assert _labels(left.get_yticklabels()) == ["dpo", "simpo"]
