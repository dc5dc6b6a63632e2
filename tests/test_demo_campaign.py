"""`make demo`'s step 6: the campaign's numbers (the README quotes them) and the lab judges
checked against its labels."""

from __future__ import annotations

import io

from rich.console import Console

from prefkit import demo


def test_campaign_step_numbers_and_judges_vs_people(tmp_path):
    out = demo._campaign_tour(Console(file=io.StringIO(), width=120), tmp_path)
    assert out["labels"] == 180
    assert round(out["agreement"]["krippendorff_alpha_nominal"], 2) == 0.51
    first_pick = next(a for a in out["annotators"] if a["name"] == "first-pick")
    assert round(first_pick["first_shown_rate"], 2) == 0.83
    judges = out["judges"]
    assert set(judges) == {"fair", "positional", "jury of 4 (majority)"}
    for report in judges.values():
        assert 0.8 < report["accuracy"] < 0.95
        assert abs(report["p_prefer_first"] - 0.5) < 0.1
    # the jury agrees with the people beyond chance more than one judge does (README: 0.61)
    assert judges["jury of 4 (majority)"]["cohen_kappa"] > judges["fair"]["cohen_kappa"] + 0.05
