"""The self-contained HTML lab report (prefkit.report.html), its CLI, and the page as a user sees
it in headless Chromium (Playwright with the system's chromium binary)."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.report import lab_report_html, write_lab_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"


def _method(gold, win, lo, hi, lc, kl, length, **extra):
    return {"gold_reward": gold, "gold_reward_se": 0.031, "win_rate_vs_sft": win,
            "win_rate_ci": [lo, hi], "lc_win_rate_vs_sft": lc, "mean_length": length,
            "kl_to_sft": kl, **extra}


def small_result() -> dict:
    """A hand-made result shaped like run_lab's (no training)."""
    return {
        "config": {"task": "sort", "workdir": "/tmp/x & y", "n_prompts": 32, "k": 4,
                   "methods": ["dpo", "kto"], "learning_rate": 1e-05, "beta": 0.1,
                   "overopt_ns": [1, 2, 4], "cache_dir": None, "training_flips": False},
        "sft_model": "/tmp/cache/base/sort-123",
        "data": {"pairs": 57, "ties_dropped": 1, "identical_or_empty_samples_dropped": 6,
                 "labels_agreeing_with_gold": 0.9123},
        "reward_model": {"train_accuracy": 0.8125},
        "methods": {
            "sft": _method(0.5799, 0.5, 0.5, 0.5, 0.5, None, 4.703),
            "dpo": _method(0.6609, 0.5898, 0.5471, 0.6325, 0.5895, 0.2642, 4.734),
            EVIL: _method(0.6276, 0.5781, 0.5383, 0.618, 0.5731, 0.0925, 4.852),
            "best_of_8": _method(0.756, 0.6406, 0.5702, 0.711, 0.6126, 1.2044, 4.367),
        },
        "overoptimization": None,
    }


def full_result() -> dict:
    """small_result plus over-optimization, training curves and extra method keys."""
    result = small_result()
    result["methods"]["dpo"].update(algo="dpo", kind="pairwise")
    result["methods"]["best_of_8"]["kind"] = "inference-time"
    curve = [{"n": n, "proxy_mean": 1.0 + 0.5 * i, "gold_mean": g, "gold_se": 0.03,
              "kl_bound": 0.1 * i} for i, (n, g) in enumerate(zip([1, 2, 4, 8, 16],
                                                                  [0.59, 0.65, 0.68, 0.55,
                                                                   0.48], strict=True))]
    result["overoptimization"] = {"curve": curve, "n": 5, "argmax_gold": 2,
                                  "x_at_gold_max": 4.0, "gold_max": 0.68, "gold_drop": 0.2,
                                  "overoptimized": True}
    result["training_curves"] = {
        name: [{"step": s, "gold_reward": 0.58 + 0.001 * s * (i + 1),
                "proxy_reward": 1 + 0.01 * s, "kl": 0.002 * s} for s in range(0, 121, 20)]
        for i, name in enumerate(["dpo", "kto"])}
    return result


LEADERBOARD = [  # (model, rating, ci_low, ci_high, rank), best first, as run_lab writes it
    ("best_of_8", 1119.18, 1096.67, 1137.91, 1), ("dpo", 1059.56, 1042.89, 1074.6, 2),
    (EVIL, 1048.6, 1030.83, 1063.62, 2), ("sft", 1000.0, 1000.0, 1000.0, 4)]
JUDGES = {  # method: (pool win rate, its CI, proxy-RM win rate, its CI, ranking accuracy)
    "sft": (0.5, [0.5, 0.5], 0.5, [0.5, 0.5], 0.8716),
    "dpo": (0.8516, [0.8073, 0.8959], 0.5547, [0.4832, 0.6262], 0.9083),
    EVIL: (0.8945, [0.8559, 0.9332], 0.5508, [0.4796, 0.6219], 0.9174),
    "best_of_8": (0.7344, [0.6648, 0.8039], 0.8359, [0.7815, 0.8904], None),
}
RANKING = {  # method: (95% Wilson interval of its ranking accuracy, [fixed, broken] vs SFT)
    "sft": ([0.8213, 0.9106], [0, 0]), "dpo": ([0.8606, 0.9404], [9, 2]),
    EVIL: ([0.8714, 0.9471], [11, 1])}
BINS = [{"lo": i / 10, "hi": (i + 1) / 10, "count": c, "mean_prob": round(i / 10 + 0.05, 4),
         "accuracy": a} for i, (c, a) in enumerate(zip(
             [25, 23, 22, 22, 17, 17, 22, 22, 23, 25],
             [0.12, 0.3043, 0.3636, 0.2273, 0.1176, 0.8824, 0.7727, 0.6364, 0.6957, 0.88],
             strict=True))]


def lab_result() -> dict:
    """full_result plus the keys of the current run_lab: the arena leaderboard, the three
    judges, ranking accuracy, the reward model on held-out pairs, annotator agreement."""
    result = full_result()
    result["stage"] = "/tmp/lab/stages/abc"
    result["feedback_store"] = "/tmp/lab/stages/abc/feedback.db"
    result["leaderboard"] = [
        {"rank": rank, "model": model, "rating": rating, "ci_low": lo, "ci_high": hi,
         "votes": 384, "wins": 100 + i, "losses": 50 + i, "ties": 234 - 2 * i}
        for i, (model, rating, lo, hi, rank) in enumerate(LEADERBOARD)]
    for name, (pool, pool_ci, proxy, proxy_ci, ranking) in JUDGES.items():
        result["methods"][name].update(
            win_rate_vs_sft_pool=pool, win_rate_ci_pool=pool_ci,
            win_rate_vs_sft_proxy_rm=proxy, win_rate_ci_proxy_rm=proxy_ci,
            ranking_accuracy=ranking)
        if name in RANKING:
            result["methods"][name].update(ranking_accuracy_ci=RANKING[name][0],
                                           ranking_pairs=218,
                                           ranking_flips_vs_sft=RANKING[name][1])
    result["idealized_ranking_accuracy"] = 0.945
    result["reward_model"]["heldout"] = {
        "n": 109, "accuracy": 0.7706, "accuracy_ties_half": 0.7706, "n_ties": 0,
        "mean_margin": 0.9655,
        "calibration": {"ece": 0.1511, "bins": BINS, "n_pairs": 109, "mean_confidence": 0.7701,
                        "scale": 1.0},
        "length": {"correlation": {"pearson": -0.413, "spearman": -0.4078, "n": 218},
                   "rules": {"overall": {"n": 109, "longer_wins": 0.3761, "shorter_wins": 0.6239,
                                         "solved_by_length_rule": False},
                             "subsets": {}, "flagged": [], "flag_threshold": 0.8}},
        "gold": {"agreement": 0.7982, "cohen_kappa": 0.1737, "n": 109}}
    result["annotators"] = {"items": 199, "annotations": 599, "pairwise_agreement": 0.8891,
                            "krippendorff_alpha": 0.7497, "annotations_without_annotator": 0,
                            "repeated_annotations": 1, "gold_agreement": 0.9479,
                            "gold_labels": 576}
    return result


def figures(text: str) -> list[tuple[str, str, bytes]]:
    """``(id, caption, png)`` of every <figure> of the page."""
    found = re.findall(r'<figure id="([^"]+)"><img [^>]*src="data:image/png;base64,'
                       r'([A-Za-z0-9+/=]+)">\s*<figcaption>(.*?)</figcaption></figure>', text,
                       flags=re.S)
    return [(ident, caption, base64.b64decode(b64)) for ident, b64, caption in found]


def table_rows(text: str, table_id: str) -> list[str]:
    table = re.search(rf'<table id="{table_id}"[^>]*>(.*?)</table>', text, flags=re.S).group(1)
    return re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S)


def png_images(text: str) -> list[bytes]:
    return [base64.b64decode(b64) for b64 in
            re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def check_png(data: bytes) -> tuple[int, int]:
    from PIL import Image

    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= 200 and height >= 150
    return width, height


# --- the HTML text -------------------------------------------------------------------------------

def test_html_contains_every_method_and_the_ci_numbers():
    result = small_result()
    text = lab_report_html(result)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "Lab report: sort" in text and "<title>prefkit lab report: sort</title>" in text
    for name in result["methods"]:
        assert f'data-method="{html_escaped(name)}"' in text
    assert text.count('<tr class="reference" data-method="sft">') == 1
    assert "[0.547, 0.632]" in text and "[0.570, 0.711]" in text  # CIs, 3 decimals
    assert "0.590" in text and "0.661" in text and "1.204" in text
    assert "<th>train accuracy</th><td>0.812</td>" in text  # reward model, 3 decimals
    assert "57" in text and "0.912" in text  # data summary
    assert "1e-05" in text  # a tiny learning rate is not shown as 0.000
    assert "Highest gold win rate vs SFT: <strong>best_of_8</strong>" in text


def test_html_escapes_every_string():
    result = small_result()
    result["config"]["task"] = "<b>task</b>"
    text = lab_report_html(result)
    assert "<script" not in text.lower()
    assert html_escaped(EVIL) in text
    assert "<b>task</b>" not in text and "&lt;b&gt;task&lt;/b&gt;" in text
    assert "/tmp/x &amp; y" in text


def html_escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_old_shaped_result_skips_the_new_sections():
    text = lab_report_html(small_result())
    images = png_images(text)
    assert len(images) == 3 == text.count("<img ") == len(figures(text))
    for data in images:
        check_png(data)
    assert [f[0] for f in figures(text)] == ["fig-win-rate", "fig-reward-kl", "fig-length"]
    assert "over-optimization</h2>" not in text.lower() and "Training curves" not in text
    for absent in ('id="leaderboard"', "fig-leaderboard", "fig-judges", "fig-reliability",
                   'id="annotators"', "Arena leaderboard", "Annotator agreement", ">ECE<",
                   "judged by</th>", "annotator pool", "proxy RM", "Idealized", "Check the judges",
                   "ranking accuracy"):
        assert absent not in text
    # no external resources and no JavaScript (links only within the page)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', text)


def test_all_four_figures_and_extra_method_keys():
    result = full_result()
    text = lab_report_html(result)
    images = png_images(text)
    assert len(images) == 5
    for data in images:
        check_png(data)
    for fig in ("fig-win-rate", "fig-reward-kl", "fig-length", "fig-overoptimization",
                "fig-training"):
        assert f'id="{fig}"' in text
    assert ">algorithm</th>" in text and ">kind</th>" in text
    assert "pairwise" in text and "inference-time" in text
    assert 'id="overopt-curve"' in text and "kl_bound" in text
    assert "peaked at n = 4" in text


def test_overoptimization_against_kl_when_the_curve_has_kl():
    result = full_result()
    for point in result["overoptimization"]["curve"]:
        point["kl"] = point["kl_bound"]
    text = lab_report_html(result)
    assert 'id="fig-overoptimization"' in text and "peaked at KL = 4" in text


def test_missing_values_and_tolerant_shapes():
    result = small_result()
    del result["methods"]["dpo"]["lc_win_rate_vs_sft"]
    result["methods"]["dpo"]["new_metric"] = 0.123456
    result["methods"]["broken"] = "not a mapping"
    del result["reward_model"]
    result["future_stage"] = {"score": 0.25, "label": "<i>x</i>"}
    text = lab_report_html(result)
    row = re.search(r'<tr data-method="dpo">(.*?)</tr>', text).group(1)
    assert "–" in row and "0.123" in row
    assert ">new metric</th>" in text
    assert 'data-method="broken"' not in text
    assert "future_stage.score" in text and "&lt;i&gt;x&lt;/i&gt;" in text
    assert len(png_images(text)) == 3
    # the minimal result: no config, no methods
    minimal = lab_report_html({"methods": {}})
    assert "No methods in this result." in minimal and not png_images(minimal)
    with pytest.raises(ValueError, match="JSON object"):
        lab_report_html([1, 2])  # type: ignore[arg-type]


def test_write_lab_report_creates_the_file(tmp_path):
    path = write_lab_report(small_result(), tmp_path / "sub" / "report.html")
    assert path == tmp_path / "sub" / "report.html" and path.is_file()
    assert path.read_text(encoding="utf-8").count("data:image/png;base64,") == 3


# --- the new sections: arena, judges, reward model, length, annotators, assets --------------------

ALL_FIGURES = ["fig-leaderboard", "fig-win-rate", "fig-judges", "fig-reward-kl", "fig-length",
               "fig-reliability", "fig-overoptimization", "fig-training"]


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
@pytest.mark.parametrize("no_kl", [False, True])
def test_every_figure_has_a_one_sentence_caption(no_kl):
    result = lab_result()
    if no_kl:  # a method left out of a figure is named in the same sentence
        result["methods"]["dpo"]["kl_to_sft"] = None
    text = lab_report_html(result)
    found = figures(text)
    assert [f[0] for f in found] == ALL_FIGURES
    if no_kl:
        assert "not shown, without a KL or gold reward: dpo." in dict(
            (i, c) for i, c, _ in found)["fig-reward-kl"]
    assert text.count("<figure") == text.count("<figcaption>") == len(found)
    for ident, caption, png in found:
        check_png(png)
        plain = re.sub(r"<[^>]+>", "", caption).strip()
        assert len(plain) > 60, ident
        # one sentence: a single full stop at the end (numbers and "n − (n−1)/n" aside)
        assert plain.endswith("."), ident
        assert len(re.findall(r"\.(\s|$)", plain)) == 1, (ident, plain)


def test_leaderboard_rows_in_order_with_their_intervals():
    result = lab_result()
    text = lab_report_html(result)
    rows = table_rows(text, "leaderboard")
    assert len(rows) == len(LEADERBOARD)
    for row, (model, rating, lo, hi, rank) in zip(rows, LEADERBOARD, strict=True):
        assert html_escaped(model) in row
        assert f"<td class=\"num\">{rating:.1f}</td>" in row
        assert f"[{lo:.1f}, {hi:.1f}]" in row
        assert row.startswith(f'<td class="num">{rank}</td>')
    order = re.findall(r'<tr[^>]*data-model="([^"]*)"', text)
    assert order == [html_escaped(m) for m, *_ in LEADERBOARD]
    assert 'class="reference" data-model="sft"' in text and ">anchor</span>" in text
    assert "<script" not in text.lower()  # the evil model name is escaped here too
    assert ("Top of the gold-judged arena leaderboard: <strong>best_of_8</strong> "
            "(rating 1119.2, 95% interval [1096.7, 1137.9])") in text


def test_three_judges_and_ranking_accuracy_in_the_methods_table():
    text = lab_report_html(lab_result())
    assert "win rate vs SFT [95% CI], judged by" in text
    for label in (">gold</th>", ">annotator pool</th>", ">proxy RM</th>",
                  ">ranking accuracy</th>"):
        assert label in text
    row = re.search(r'<tr data-method="dpo">(.*?)</tr>', text).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[:3] == ["dpo", "dpo", "pairwise"]  # method, algorithm, kind
    assert cells[3] == '0.661 <span class="se">± 0.031</span>'
    assert cells[4] == '0.590 <span class="ci">[0.547, 0.632]</span>'  # gold
    assert cells[5] == '0.852 <span class="ci">[0.807, 0.896]</span>'  # annotator pool
    assert cells[6] == '0.555 <span class="ci">[0.483, 0.626]</span>'  # proxy RM
    assert '<td class="num">0.908 <span class="ci">[0.861, 0.940]</span></td>' in row  # ranking
    # the CI keys are shown beside their values, not as columns of their own
    assert ">win rate ci pool</th>" not in text and ">gold reward se</th>" not in text
    bo8 = re.search(r'<tr data-method="best_of_8">(.*?)</tr>', text).group(1)
    assert '<span class="best" title="best of the methods">0.756</span>' in bo8
    assert "–" in bo8  # no ranking accuracy for best-of-n
    # the proxy RM's interval above gold's for best_of_8: named as gamed; idealized accuracy
    assert "best_of_8 (0.836 by the proxy RM vs 0.641 by gold)" in text
    assert "Idealized ranking accuracy" in text and "0.945" in text
    assert "Check the judges" not in text
    assert 'id="fig-judges"' in text


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_ranking_accuracy_with_its_interval_pairs_and_reorderings():
    text = lab_report_html(lab_result())
    row = re.search(r'<tr data-method="dpo">(.*?)</tr>', text, flags=re.S).group(1)
    assert '0.908 <span class="ci">[0.861, 0.940]</span>' in row
    best = re.search(rf'<tr data-method="{re.escape(html_escaped(EVIL))}">(.*?)</tr>', text,
                     flags=re.S).group(1)
    assert '0.917 <span class="ci">[0.871, 0.947]</span>' in best
    # the count and the re-orderings are the same kind for every row: a note, not columns
    assert ">ranking pairs</th>" not in text and ">ranking flips vs sft</th>" not in text
    assert "ranking accuracy on 218 held-out pairs with 95% Wilson intervals" in text
    assert ("Held-out pairs each policy orders differently from SFT (fixed / broken): dpo 9 / 2, "
            f"{html_escaped(EVIL)} 11 / 1.") in text
    # an older result without them still renders the plain accuracy
    old = lab_result()
    for m in old["methods"].values():
        for key in ("ranking_accuracy_ci", "ranking_pairs", "ranking_flips_vs_sft"):
            m.pop(key, None)
    text = lab_report_html(old)
    assert '<td class="num">0.908</td>' in text and "orders differently" not in text
    assert "with 95% Wilson intervals)" not in text


def test_a_judge_that_does_not_give_sft_half_against_itself_is_flagged():
    result = lab_result()
    result["methods"]["sft"].update(win_rate_vs_sft_pool=0.9336,
                                    win_rate_ci_pool=[0.9129, 0.9543])
    text = lab_report_html(result)
    assert "Check the judges: SFT against itself should win half the time" in text
    assert "the annotator pool gives 0.934" in text


def test_reward_model_section():
    text = lab_report_html(lab_result())
    assert '<th title="expected calibration error' in text
    assert re.search(r">ECE</th><td>0.151</td>", text)
    for label, value in (("accuracy", "0.771"), ("accuracy vs gold", "0.798"),
                         ("reward–length Pearson r", "-0.413"),
                         ("“longer wins” rule accuracy", "0.376"),
                         ("“shorter wins” rule accuracy", "0.624"),
                         ("solved by a length rule", "no"), ("mean confidence", "0.770")):
        assert re.search(rf">{re.escape(label)}</th><td>{re.escape(value)}</td>", text), label
    assert "<th>train accuracy</th><td>0.812</td>" in text
    assert "mean_prob" not in re.search(r'<table class="kv" id="rm-calibration">(.*?)</table>',
                                   text, flags=re.S).group(1)  # the bins are the figure
    caption = dict((i, c) for i, c, _ in figures(text))["fig-reliability"]
    assert "ECE = 0.151" in caption and "diagonal" in caption


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_annotators_data_and_files():
    text = lab_report_html(lab_result())
    table = re.search(r'<table class="kv" id="annotators">(.*?)</table>', text,
                      flags=re.S).group(1)
    joined = re.sub(r"<th title=\"[^\"]*\">", "<th>", table)
    for label, value in (("pairwise agreement", "0.889"), ("Krippendorff's α", "0.750"),
                         ("agreement with gold", "0.948"), ("items", "199"),
                         ("annotations", "599")):
        assert f"<th>{html_escaped(label)}</th><td>{value}</td>" in joined, label
    assert ">feedback store</th><td" in text and "/tmp/lab/stages/abc/feedback.db" in text
    # the old place of feedback_store (result["data"]) still shows
    result = lab_result()
    result["data"]["feedback_store"] = result.pop("feedback_store")
    assert "/tmp/lab/stages/abc/feedback.db" in lab_report_html(result)


def test_length_drift_figure_against_sft():
    result = small_result()
    text = lab_report_html(result)
    assert 'id="fig-length"' in text and "longer is not better" in text
    del result["methods"]["sft"]["mean_length"]  # no reference length: no figure
    assert 'id="fig-length"' not in lab_report_html(result)


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_write_lab_report_writes_the_assets(tmp_path):
    result = lab_result()
    path = write_lab_report(result, tmp_path / "out" / "lab.html")
    assert path == tmp_path / "out" / "lab.html"
    text = path.read_text(encoding="utf-8")
    folder = tmp_path / "out" / "lab_files"
    found = figures(text)
    assert len(found) == len(ALL_FIGURES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{ident}.png" for ident, _, _ in found] + ["result.json"])
    for ident, _, png in found:  # the same image as the inline one
        assert (folder / f"{ident}.png").read_bytes() == png
    assert json.loads((folder / "result.json").read_text(encoding="utf-8")) == result
    assert "lab_files/" in text and not re.search(r'(src|href)="(?!data:|#)', text)
    # a second report with fewer figures leaves no stale PNG behind
    write_lab_report(small_result(), path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "fig-length.png", "fig-reward-kl.png", "fig-win-rate.png", "result.json"]
    assert json.loads((folder / "result.json").read_text(encoding="utf-8")) == small_result()
    # assets=False: the HTML only
    other = write_lab_report(result, tmp_path / "bare.html", assets=False)
    assert other.is_file() and not (tmp_path / "bare_files").exists()
    assert "bare_files" not in other.read_text(encoding="utf-8")


# --- the CLI -------------------------------------------------------------------------------------

@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_cli_lab_report_renders_a_saved_json(tmp_path):
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(full_result()))
    out = tmp_path / "out" / "r.html"
    res = CliRunner().invoke(app, ["lab", "report", str(saved), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"report: {out}" in res.stdout
    assert len(png_images(out.read_text(encoding="utf-8"))) == 5
    assert (out.parent / "r_files" / "result.json").is_file()
    res = CliRunner().invoke(app, ["lab", "report", str(saved), "-o", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == {"ok": True, "report": str(out)}


@pytest.mark.parametrize("content, expected", [
    ('{"config": {"task": "sort"}, "methods": {', "not valid JSON"),
    ("[1, 2, 3]", "not a `prefkit lab run --json` output"),
    ('{"ok": false, "error": "boom"}', "not a `prefkit lab run --json` output"),
    (None, "cannot read"),
    ('{"methods": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_cli_lab_report_bad_input(tmp_path, content, expected):
    bad = tmp_path / "bad-result.json"
    if content is not None:
        bad.write_text(content)
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["lab", "report", str(bad), "-o", str(out), "--json"])
    assert res.exit_code == 2
    error = json.loads(res.stdout)["error"]
    assert str(bad) in error and expected in error
    assert "bad-result.json" in res.stderr
    assert not out.exists()


@pytest.fixture
def fake_run_lab(monkeypatch):
    """`prefkit lab run` without training: run_lab returns the hand-made result."""
    import prefkit.lab.pipeline as pipeline

    def run_lab(config=None, **overrides):
        result = copy.deepcopy(small_result())
        result["config"]["workdir"] = config.workdir
        return result

    monkeypatch.setattr(pipeline, "run_lab", run_lab)


def test_cli_lab_run_writes_the_report(tmp_path, fake_run_lab):
    work = tmp_path / "work"
    res = CliRunner().invoke(app, ["lab", "run", "--quick", "--workdir", str(work), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # still ONE JSON object
    assert out["report"] == str(work / "report.html") and (work / "report.html").is_file()

    other = tmp_path / "elsewhere" / "lab.html"
    res = CliRunner().invoke(app, ["lab", "run", "--quick", "--workdir", str(work),
                                   "--report", str(other)])
    assert res.exit_code == 0, res.output
    assert f"report: {other}" in res.stdout and other.is_file()

    (work / "report.html").unlink()
    res = CliRunner().invoke(app, ["lab", "run", "--quick", "--workdir", str(work),
                                   "--no-report", "--json"])
    assert res.exit_code == 0 and "report" not in json.loads(res.stdout)
    assert not (work / "report.html").exists()

    res = CliRunner().invoke(app, ["lab", "run", "--quick", "--workdir", str(work),
                                   "--report", str(other), "--no-report", "--json"])
    assert res.exit_code == 2 and "--no-report" in json.loads(res.stdout)["error"]


def test_cli_lab_run_survives_a_failing_report(tmp_path, fake_run_lab):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = CliRunner().invoke(app, ["lab", "run", "--quick", "--workdir", str(tmp_path),
                                   "--report", str(blocker / "report.html"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["report"] is None and "report.html" in out["report_error"]
    assert "sft" in out["methods"] and "warning" in res.stderr


# --- in a browser --------------------------------------------------------------------------------

def _chromium() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


# [page width, methods table width - the width of its box]: > 0 = it overflows
FITS = ("[document.documentElement.scrollWidth, document.querySelector('#methods').scrollWidth"
        " - document.querySelector('#methods').parentElement.clientWidth]")
# elements reaching past the window that no horizontally scrolling box holds
SPILLS = """() => {
  const out = [];
  for (const e of document.querySelectorAll('main *')) {
    if (e.getBoundingClientRect().right <= window.innerWidth + 1) continue;
    let box = e.parentElement;
    while (box && getComputedStyle(box).overflowX !== 'auto') box = box.parentElement;
    if (!box) out.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : ''));
  }
  return out;
}"""


def test_report_in_headless_chromium(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    result = lab_result()
    page_file = write_lab_report(result, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            rows = page.locator("#methods tbody tr")
            n_rows = rows.count()
            sft_text = page.locator("#methods tr.reference").inner_text()
            first_cells = page.eval_on_selector_all(
                "#methods tbody tr td:first-child", "tds => tds.map(td => td.textContent)")
            title = page.title()
            board = page.eval_on_selector_all(
                "#leaderboard tbody tr td:nth-child(2)", "tds => tds.map(td => td.textContent)")
            captions = page.eval_on_selector_all(
                "figure", "fs => fs.map(f => f.querySelector('figcaption')?.innerText ?? '')")
            # the page fits the window: no horizontal scrolling, the methods table included
            overflow = page.evaluate(FITS)
            page.screenshot(path=str(shot), full_page=True)
            # ... in a wider font too (a fresh machine has only DejaVu, `.ci/run`; monospace is
            # wider than any sans), so the result does not hang on this machine's fonts
            page.add_style_tag(content="body, table { font-family: monospace !important; }")
            overflow_mono = page.evaluate(FITS)
            # a phone-sized window: the page itself never scrolls sideways; what cannot fit
            # (the wide tables) scrolls inside its own box
            narrow = browser.new_page(viewport={"width": 480, "height": 900})
            narrow.goto(page_file.as_uri(), wait_until="load")
            narrow_width, spills = narrow.evaluate("document.documentElement.scrollWidth"), \
                narrow.evaluate(SPILLS)
            methods_box = narrow.evaluate(
                "getComputedStyle(document.querySelector('#methods').parentElement).overflowX")
            narrow.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(widths) == len(ALL_FIGURES) and all(w > 0 for w in widths)
    assert len(captions) == len(ALL_FIGURES) and all(len(c) > 60 for c in captions)
    assert board == [m + ("anchor" if m == "sft" else "") for m, *_ in LEADERBOARD]
    assert overflow[0] <= 1200 and overflow[1] <= 0, overflow
    assert overflow_mono[0] <= 1200 and overflow_mono[1] <= 0, overflow_mono
    assert narrow_width == 480 and spills == [] and methods_box == "auto"
    assert check_png((tmp_path / "narrow.png").read_bytes())[0] == 480
    assert n_rows == len(result["methods"])
    assert "sft" in sft_text and "reference" in sft_text and "0.580" in sft_text
    assert first_cells[2].startswith(EVIL)  # the escaped name shows as text
    assert title == "prefkit lab report: sort"
    width, height = check_png(shot.read_bytes())
    assert width == 1200 and height > 4000 and shot.stat().st_size > 200_000


def test_cli_lab_report_too_deep_to_render(tmp_path, monkeypatch):
    import prefkit.report as report

    def too_deep(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(report, "write_lab_report", too_deep)
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(small_result()))
    res = CliRunner().invoke(app, ["lab", "report", str(saved), "--json"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert json.loads(res.stdout)["error"] == f"{saved}: values nested too deeply to render"
