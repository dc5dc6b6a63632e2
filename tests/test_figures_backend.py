"""Figures are drawn on standalone Figure objects: a caller's matplotlib backend is not switched
and no pyplot figure is left open."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np

from prefkit.rank.simulate import plot_convergence
from prefkit.report.figures import plot_lab_win_rates, plot_leaderboard, plot_training_curves


def test_figures_leave_the_backend_and_pyplot_alone(tmp_path):
    before = matplotlib.get_backend()
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    matplotlib.use("template")  # what an interactive session's backend would be
    try:
        out = [
            plot_leaderboard(["a", "b"], np.array([1000.0, 1010.0]), np.array([990.0, 1000.0]),
                             np.array([1010.0, 1020.0]), tmp_path / "board.png"),
            plot_lab_win_rates(["sft", "dpo"], [0.5, 0.6], [None, 0.55], [None, 0.65],
                               tmp_path / "wins.png"),
            plot_training_curves({"dpo": [{"step": 0, "gold_reward": 0.1},
                                          {"step": 10, "gold_reward": 0.3}]},
                                 tmp_path / "curves.png"),
            plot_convergence([{"n_items": 5, "k": 2, "method": "bt", "strategy": "random",
                               "noise": 0.0, "votes": 100, "max_votes": 1000}],
                             tmp_path / "conv.png"),
        ]
        assert matplotlib.get_backend() == "template"
        for path in out:
            assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        if not pyplot_loaded:
            assert "matplotlib.pyplot" not in sys.modules
    finally:
        matplotlib.use(before)
