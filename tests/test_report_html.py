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


def test_two_figures_without_overoptimization_or_training_curves():
    text = lab_report_html(small_result())
    images = png_images(text)
    assert len(images) == 2 == text.count("<img ")
    for data in images:
        check_png(data)
    assert 'id="fig-win-rate"' in text and 'id="fig-reward-kl"' in text
    assert "over-optimization</h2>" not in text.lower() and "Training curves" not in text
    # no external resources and no JavaScript
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:)', text)


def test_all_four_figures_and_extra_method_keys():
    result = full_result()
    text = lab_report_html(result)
    images = png_images(text)
    assert len(images) == 4
    for data in images:
        check_png(data)
    for fig in ("fig-win-rate", "fig-reward-kl", "fig-overoptimization", "fig-training"):
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
    assert len(png_images(text)) == 2
    # the minimal result: no config, no methods
    minimal = lab_report_html({"methods": {}})
    assert "No methods in this result." in minimal and not png_images(minimal)
    with pytest.raises(ValueError, match="JSON object"):
        lab_report_html([1, 2])  # type: ignore[arg-type]


def test_write_lab_report_creates_the_file(tmp_path):
    path = write_lab_report(small_result(), tmp_path / "sub" / "report.html")
    assert path == tmp_path / "sub" / "report.html" and path.is_file()
    assert path.read_text(encoding="utf-8").count("data:image/png;base64,") == 2


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_lab_report_renders_a_saved_json(tmp_path):
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(full_result()))
    out = tmp_path / "out" / "r.html"
    res = CliRunner().invoke(app, ["lab", "report", str(saved), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"report: {out}" in res.stdout
    assert len(png_images(out.read_text(encoding="utf-8"))) == 4
    res = CliRunner().invoke(app, ["lab", "report", str(saved), "-o", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == {"ok": True, "report": str(out)}


@pytest.mark.parametrize("content, expected", [
    ('{"config": {"task": "sort"}, "methods": {', "not valid JSON"),
    ("[1, 2, 3]", "not a `prefkit lab run --json` output"),
    ('{"ok": false, "error": "boom"}', "not a `prefkit lab run --json` output"),
    (None, "cannot read"),
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


def test_report_in_headless_chromium(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    result = full_result()
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
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(widths) == 4 and all(w > 0 for w in widths)
    assert n_rows == len(result["methods"])
    assert "sft" in sft_text and "reference" in sft_text and "0.580" in sft_text
    assert first_cells[2].startswith(EVIL)  # the escaped name shows as text
    assert title == "prefkit lab report: sort"
    width, height = check_png(shot.read_bytes())
    assert width == 1200 and height > 1500 and shot.stat().st_size > 50_000
