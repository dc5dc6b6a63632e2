"""A self-contained HTML report of a lab run (:func:`prefkit.lab.pipeline.run_lab`'s result).

One HTML file with no external resources: inline CSS, the figures as base64 PNG ``data:`` URIs,
no JavaScript. Every string taken from the result is HTML-escaped; numbers are shown with three
decimals (integers as they are, ratings with one, missing values as "–"). Every figure is a
``<figure>`` with a one-sentence ``<figcaption>`` saying what it shows and how to read it.

Sections, each skipped when its key is missing (older results render too): the run (task, date,
config); the arena leaderboard (``result["leaderboard"]``: every pair of policies judged by the
gold reward, Bradley-Terry ratings with 95% intervals) and its figure; the methods table (one
row per entry of ``result["methods"]``, in the given order, the ``sft`` row marked as the
reference; win rates vs SFT judged by the gold reward, the annotator pool and the proxy reward
model, with 95% intervals) with the figures win rate vs SFT, the three judges side by side, gold
reward vs KL to SFT and length drift vs gold gain; the data; the reward model (held-out
accuracy, agreement with gold, calibration with a reliability diagram, length correlation and
rules); annotator agreement (``result["annotators"]``); the over-optimization curve
(``result["overoptimization"]["curve"]``); per-method training curves
(``result["training_curves"]``: gold / proxy / KL, and on a verifiable task the online methods'
accuracy, pass@G, maj@G and KL per iteration in a figure of their own, with the methods table's
held-out accuracy and gain over SFT, each with its 95% interval); and any other top-level
entries.

Layout: the page fits a 1200-px window with only the fonts a fresh machine has (DejaVu; the
methods table puts each interval under its value and wraps long method names); in a narrower
window the page itself never scrolls sideways, the wide tables scroll inside their own box.

:func:`write_lab_report` also writes ``<stem>_files/`` beside the HTML: every figure as a PNG
(named by its figure id) and ``result.json`` (the whole result, every number).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["assets_dir", "lab_report_html", "write_lab_report"]

MISSING = "–"
REFERENCE = "sft"

# Known method columns (label, tooltip), in display order; other keys follow in first-seen order.
# A column may show a second key beside its value (the standard error, the 95% interval) and
# belong to a group (a two-row header).
_TEXT_COLUMNS = {"algo": ("algorithm", "training algorithm"), "kind": ("kind", "kind of method")}
_NUMBER_COLUMNS = {
    "gold_reward": ("gold reward ±\u00a0se", "mean gold reward on the held-out prompts ± its "
                    "standard error"),
    "win_rate_vs_sft": ("gold", "judged by the task's gold reward: win rate against the SFT "
                        "policy's answer to the same prompt (ties count half), 95% interval"),
    "win_rate_vs_sft_pool": ("annotator pool", "judged by the simulated annotator pool (each "
                             "pair shown in both orders), 95% interval"),
    "win_rate_vs_sft_proxy_rm": ("proxy RM", "judged by the proxy reward model the policies "
                                 "were trained against, 95% interval"),
    "lc_win_rate_vs_sft": ("LC win rate", "length-controlled gold win rate vs SFT"),
    "ranking_accuracy": ("ranking accuracy", "share of held-out gold-ordered pairs where the "
                         "policy gives the better answer the higher log-probability (its own "
                         "log-probabilities), 95% Wilson interval"),
    "kl_to_sft": ("KL to SFT", "KL divergence to the SFT policy (for best-of-n: the analytic "
                  "bound log n - (n-1)/n)"),
    "mean_length": ("mean length", "mean answer length in words"),
    "accuracy": ("accuracy [95% CI]", "verifiable task: share of right answers (pass@1) over "
                 "the held-out prompts, several samples each, 95% bootstrap interval over "
                 "prompts"),
    "accuracy_gain": ("accuracy gain vs SFT [95% CI]", "accuracy minus the SFT policy's on the "
                      "same prompts, 95% paired bootstrap interval over prompts"),
}
# column key -> the key shown beside it: "se" as "± x", "ci" as "[lo, hi]"
_PAIRED = {"gold_reward": ("gold_reward_se", "se"), "win_rate_vs_sft": ("win_rate_ci", "ci"),
           "win_rate_vs_sft_pool": ("win_rate_ci_pool", "ci"),
           "win_rate_vs_sft_proxy_rm": ("win_rate_ci_proxy_rm", "ci"),
           "ranking_accuracy": ("ranking_accuracy_ci", "ci"),
           "accuracy": ("accuracy_ci", "ci"), "accuracy_gain": ("accuracy_gain_ci", "ci")}
# method keys that are the same kind for every row: said once in the notes, not as columns
_NOTE_KEYS = {"ranking_pairs", "ranking_flips_vs_sft", "eval_samples"}
_GROUPS = {"win_rate_vs_sft": "win rate vs SFT [95% CI], judged by",
           "win_rate_vs_sft_pool": "win rate vs SFT [95% CI], judged by",
           "win_rate_vs_sft_proxy_rm": "win rate vs SFT [95% CI], judged by"}
_JUDGES = (("gold reward", "win_rate_vs_sft", "win_rate_ci"),
           ("annotator pool", "win_rate_vs_sft_pool", "win_rate_ci_pool"),
           ("proxy reward model", "win_rate_vs_sft_proxy_rm", "win_rate_ci_proxy_rm"))
# Top-level keys with their own section (the rest go to "Other results").
_KNOWN = {"config", "sft_model", "data", "reward_model", "methods", "overoptimization",
          "training_curves", "report", "date", "created", "title", "leaderboard",
          "idealized_ranking_accuracy", "annotators", "stage", "feedback_store"}
_ANNOTATOR_LABELS = {
    "items": ("items", "pairs labelled by more than one annotator"),
    "annotations": ("annotations", "labels given to those items"),
    "pairwise_agreement": ("pairwise agreement", "share of pairs of labels on the same item "
                           "that agree (a / b / tie, presentation order removed)"),
    "krippendorff_alpha": ("Krippendorff's α", "nominal alpha: 1 = perfect agreement, 0 = "
                           "chance"),
    "gold_agreement": ("agreement with gold", "share of decisive labels that pick the "
                       "response with the higher gold reward"),
    "gold_labels": ("decisive labels checked against gold", ""),
    "repeated_annotations": ("repeated annotations", "the same annotator labelling the same "
                             "item again"),
    "annotations_without_annotator": ("annotations without annotator id", ""),
}

_CSS = """
:root { --fg: #1d2329; --muted: #5b6670; --line: #dde2e7; --accent: #1f5fa8;
        --ref: #f3f5f7; --head: #eef3f9; }
* { box-sizing: border-box; }
body { margin: 0; background: #fafbfc; color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       "Liberation Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 48px; background: #fff;
       min-height: 100vh; box-shadow: 0 0 0 1px var(--line); }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; color: var(--muted); }
.subtitle { color: var(--muted); margin: 0 0 6px; }
.subtitle code { font-size: 13px; }
.headline { margin: 14px 0 0; padding: 10px 14px; background: var(--head);
            border-left: 4px solid var(--accent); border-radius: 3px; }
.headline span { display: block; }
nav.toc { display: flex; flex-wrap: wrap; gap: 2px 14px; margin: 12px 0 0; font-size: 13px;
          color: var(--muted); }
nav.toc a { color: var(--accent); text-decoration: none; white-space: nowrap; }
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
       font-size: 13px; background: var(--ref); padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { background: var(--head); text-align: left; font-weight: 600;
           border-bottom: 2px solid #c9d3de; white-space: nowrap; }
thead th.group { text-align: center; border-bottom: 1px solid #c9d3de; font-weight: 500;
                 color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums;
                 white-space: nowrap; }
.ci, .se { color: var(--muted); font-size: 12.5px; }
table.kv th { text-align: left; font-weight: 500; color: var(--muted); background: none;
              white-space: nowrap; }
table.kv td { font-variant-numeric: tabular-nums; padding-right: 26px; }
table.kv td.wrap { word-break: break-all; }
.scroll { overflow-x: auto; max-width: 100%; }
table.wide { width: 100%; }
table.wide th, table.wide td { padding: 5px 8px; }
table.wide tbody tr:hover { background: #f7fafd; }
table.wide tr.reference { background: var(--ref); color: var(--muted); }
table.wide td.method { font-weight: 600; overflow-wrap: anywhere; min-width: 8.5em; }
#leaderboard { width: auto; min-width: 640px; }
#methods { font-size: 13.5px; min-width: 860px; }
#methods thead th { white-space: normal; vertical-align: bottom; }
#methods thead th.group { vertical-align: middle; }
#methods .ci, #methods .se { display: block; }
.badge { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 9px;
         font-size: 11px; font-weight: 500; color: #fff; background: #8a949e;
         vertical-align: 1px; white-space: nowrap; }
.best { font-weight: 700; color: var(--accent); }
.warn { color: #a4481b; }
.cards { display: flex; flex-wrap: wrap; gap: 14px 40px; }
figure { margin: 16px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 820px; }
.note { color: var(--muted); font-size: 13px; max-width: 860px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


# --- formatting ---------------------------------------------------------------------------------

def _e(value: Any) -> str:
    """``str(value)``, HTML-escaped (quotes too)."""
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    if not _is_number(value):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _fmt(value: Any) -> str:
    """A value for a table cell, escaped: floats with 3 decimals, integers as they are, lists of
    numbers as ``[a, b]``, booleans yes/no, None "–", anything else as (compact JSON) text."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _e(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"  # e.g. a learning rate of 1e-05, not 0.000
        return f"{value:.3f}"
    if isinstance(value, str):
        return _e(value)
    if isinstance(value, list | tuple):
        if all(_is_number(v) or v is None for v in value):
            return "[" + ", ".join(_fmt(v) for v in value) + "]"
        return _e(", ".join(str(v) for v in value))
    try:
        return _e(json.dumps(value, sort_keys=True, default=str))
    except (TypeError, ValueError):
        return _e(value)


def _numeric(value: Any) -> bool:
    """A number or a non-empty list of numbers (right-aligned in tables)."""
    return _is_number(value) or (isinstance(value, list | tuple) and bool(value)
                                 and all(_is_number(v) for v in value))


def _cell(value: Any, numeric: bool | None = None) -> str:
    """A ``<td>``, right-aligned when ``numeric`` (default: when ``value`` is numeric or
    missing)."""
    if numeric is None:
        numeric = value is None or _numeric(value)
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}>{_fmt(value)}</td>"


def _fmt_fixed(value: Any, digits: int) -> str:
    """A finite number with ``digits`` decimals, else :func:`_fmt`."""
    v = _finite(value)
    return f"{v:.{digits}f}" if v is not None and not isinstance(value, int) else _fmt(value)


def _ci(value: Any) -> tuple[float | None, float | None]:
    """A ``[low, high]`` pair as two finite floats (None where missing)."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return _finite(value[0]), _finite(value[1])
    return None, None


def _paired(value: Any, extra: Any, kind: str, digits: int = 3) -> str:
    """``value`` followed by its standard error (``kind`` "se": "± x") or its interval ("ci":
    "[lo, hi]") in a muted span; just ``value`` when ``extra`` is missing."""
    main = _fmt_fixed(value, digits)
    if kind == "se" and _finite(extra) is not None:
        return f'{main} <span class="se">± {_fmt_fixed(extra, digits)}</span>'
    if kind == "ci" and isinstance(extra, list | tuple) and len(extra) == 2:
        lo, hi = (_fmt_fixed(v, digits) for v in extra)
        return f'{main} <span class="ci">[{lo}, {hi}]</span>'
    return main


def _kv_table(items: Iterable[tuple[Any, ...]], per_row: int = 1, table_id: str = "") -> str:
    """A compact key/value table, ``per_row`` pairs per row (keys escaped, values formatted);
    an item may carry a third element, the key's tooltip."""
    items = list(items)
    ident = f' id="{_e(table_id)}"' if table_id else ""
    rows = []
    for start in range(0, len(items), per_row):
        cells = []
        for item in items[start:start + per_row]:
            key, value = item[0], item[1]
            tip = item[2] if len(item) > 2 and item[2] else ""
            title = f' title="{_e(tip)}"' if tip else ""
            wrap = ' class="wrap"' if isinstance(value, str) and len(value) > 40 else ""
            cells.append(f"<th{title}>{_e(key)}</th><td{wrap}>{_fmt(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="kv"{ident}>\n' + "\n".join(rows)
            + "\n</table></div>")


# --- figures ------------------------------------------------------------------------------------

@dataclass
class _Fig:
    """One figure: its id (also its PNG's file name), the PNG bytes and its HTML."""

    fig_id: str
    png: bytes
    html: str


def _render(plot: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """Run a :mod:`prefkit.report.figures` function into memory; the PNG bytes."""
    buf = io.BytesIO()
    plot(*args, buf, **kwargs)
    return buf.getvalue()


def _figure(png: bytes, alt: str, caption: str, fig_id: str) -> _Fig:
    """A ``<figure>`` with the PNG inline and ``caption`` (HTML, one sentence) below."""
    b64 = base64.b64encode(png).decode("ascii")
    return _Fig(fig_id, png, f'<figure id="{_e(fig_id)}"><img alt="{_e(alt)}" '
                f'src="data:image/png;base64,{b64}">\n'
                f"<figcaption>{caption}</figcaption></figure>")


def _leaderboard_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = result.get("leaderboard")
    if not isinstance(raw, list | tuple):
        return []
    return [dict(r) for r in raw if isinstance(r, Mapping) and r.get("model") is not None]


def _leaderboard_figure(rows: Sequence[Mapping[str, Any]]) -> _Fig | None:
    from .figures import plot_lab_leaderboard

    rows = [r for r in rows if _finite(r.get("rating")) is not None]
    if len(rows) < 2:
        return None
    ref = any(str(r["model"]) == REFERENCE for r in rows)
    png = _render(plot_lab_leaderboard, [str(r["model"]) for r in rows],
                  [_finite(r["rating"]) for r in rows], [_finite(r.get("ci_low")) for r in rows],
                  [_finite(r.get("ci_high")) for r in rows],
                  ranks=[r.get("rank", MISSING) for r in rows], reference=REFERENCE)
    anchor = (", SFT anchored at its rating (grey, dashed line), so its interval has zero "
              "width and the others' are relative to it" if ref else "")
    return _figure(png, "arena leaderboard: ratings with 95% intervals",
                   "Bradley-Terry rating (Elo scale) of every policy from gold-judged pairwise "
                   "comparisons on the held-out prompts, best on top, with 95% bootstrap "
                   f"intervals as whiskers{anchor}: a policy only ranks below those whose "
                   "interval lies entirely above its own.", "fig-leaderboard")


def _win_rate_figure(methods: Mapping[str, Mapping[str, Any]]) -> _Fig | None:
    from .figures import plot_lab_win_rates

    names, win, low, high = [], [], [], []
    for name, m in methods.items():
        w = _finite(m.get("win_rate_vs_sft"))
        if w is None:
            continue
        lo, hi = _ci(m.get("win_rate_ci"))
        names.append(str(name))
        win.append(w)
        low.append(lo)
        high.append(hi)
    if not names:
        return None
    png = _render(plot_lab_win_rates, names, win, low, high, reference=REFERENCE)
    return _figure(png, "gold win rate vs SFT per method with 95% intervals",
                   "Gold-judged win rate of each method's answer against the SFT policy's "
                   "answer to the same held-out prompt (ties count half) with its 95% "
                   "interval: right of the dashed line at 0.5 is better than SFT.",
                   "fig-win-rate")


def _judges_figure(methods: Mapping[str, Mapping[str, Any]]) -> _Fig | None:
    from .figures import plot_judge_win_rates

    present = [(label, key, ci) for label, key, ci in _JUDGES
               if any(_finite(m.get(key)) is not None for m in methods.values())]
    if len(present) < 2:  # one judge is the win-rate figure already
        return None
    names = [n for n, m in methods.items()
             if any(_finite(m.get(key)) is not None for _, key, _ in present)]
    judges = {}
    for label, key, ci in present:
        bounds = [_ci(methods[n].get(ci)) for n in names]
        judges[label] = ([_finite(methods[n].get(key)) for n in names],
                         [b[0] for b in bounds], [b[1] for b in bounds])
    png = _render(plot_judge_win_rates, names, judges, reference=REFERENCE)
    colors = {"gold reward": "blue", "annotator pool": "green", "proxy reward model": "orange"}
    which = ", ".join(f"{label} ({colors[label]})" for label, _, _ in present)
    return _figure(png, "win rate vs SFT per method, one marker per judge",
                   f"Each method's win rate against SFT judged by the {which}, with 95% "
                   "intervals: judges that agree put their markers together, and a proxy-RM "
                   "win rate above the gold one is the policy exploiting (gaming) the proxy "
                   "reward model.", "fig-judges")


def _reward_kl_figure(methods: Mapping[str, Mapping[str, Any]]) -> _Fig | None:
    from .figures import plot_reward_vs_kl

    names, kl, gold, se, skipped = [], [], [], [], []
    for name, m in methods.items():
        g = _finite(m.get("gold_reward"))
        k = _finite(m.get("kl_to_sft"))
        if k is None and name == REFERENCE:
            k = 0.0  # the reference is at KL 0 from itself
        if g is None or k is None:
            skipped.append(str(name))
            continue
        names.append(str(name))
        kl.append(k)
        gold.append(g)
        se.append(_finite(m.get("gold_reward_se")))
    if not any(n != REFERENCE for n in names):
        return None
    missing = (f"; not shown, without a KL or gold reward: {_e(', '.join(skipped))}"
               if skipped else "")
    caption = ("Mean gold reward of each method against its KL divergence to the SFT policy "
               "(whiskers ± one standard error; SFT at KL 0, best-of-n at the analytic bound "
               f"log n − (n−1)/n): up and to the left is a better trade of reward for drift"
               f"{missing}.")
    png = _render(plot_reward_vs_kl, names, kl, gold, gold_se=se, reference=REFERENCE)
    return _figure(png, "gold reward vs KL to SFT per method", caption, "fig-reward-kl")


def _length_figure(methods: Mapping[str, Mapping[str, Any]]) -> _Fig | None:
    from .figures import plot_length_drift

    ref = methods.get(REFERENCE, {})
    ref_len, ref_gold = _finite(ref.get("mean_length")), _finite(ref.get("gold_reward"))
    if ref_len is None or ref_gold is None:
        return None
    rows = [(str(n), length - ref_len, gold - ref_gold, _finite(m.get("gold_reward_se")))
            for n, m in methods.items() if n != REFERENCE
            and (length := _finite(m.get("mean_length"))) is not None
            and (gold := _finite(m.get("gold_reward"))) is not None]
    if not rows:
        return None
    names, dl, dg, se = (list(c) for c in zip(*rows, strict=True))
    png = _render(plot_length_drift, names, dl, dg, gold_se=se, reference_length=ref_len)
    return _figure(png, "change of mean length and of gold reward vs SFT per method",
                   "Each method's change in mean answer length from SFT's (left, words) beside "
                   "its change in mean gold reward (right, ± se): if the methods that grew "
                   "longer are not the ones that gained the most gold reward, longer is not "
                   "better.", "fig-length")


def _reliability_figure(calibration: Any) -> _Fig | None:
    from .figures import plot_reliability_diagram

    if not isinstance(calibration, Mapping) or not isinstance(calibration.get("bins"), list):
        return None
    bins = [b for b in calibration["bins"] if isinstance(b, Mapping)]
    ece = _finite(calibration.get("ece"))
    try:
        png = _render(plot_reliability_diagram, bins, ece=ece)
    except (ValueError, KeyError, TypeError):  # no usable bin
        return None
    return _figure(png, "reliability diagram of the proxy reward model",
                   "Reliability diagram of the proxy reward model on held-out pool-labelled "
                   "pairs (each pair counted in both orders, so it is symmetric about the "
                   "centre): per bin of predicted probability that the first response wins, "
                   "the bar is how often it did win and the dot the mean prediction, so bars "
                   "on the dashed diagonal mean perfect calibration"
                   + (f" (ECE = {ece:.3f}, the count-weighted mean gap)" if ece is not None
                      else "") + ".", "fig-reliability")


def _overopt_figure(curve: Sequence[Mapping[str, Any]]) -> _Fig | None:
    from .figures import plot_overoptimization

    points = [p for p in curve if isinstance(p, Mapping)]
    use_kl = bool(points) and all(_finite(p.get("kl")) is not None for p in points)
    xkey = "kl" if use_kl else "n"
    rows = [(_finite(p.get(xkey)), _finite(p.get("gold_mean")), _finite(p.get("proxy_mean")),
             _finite(p.get("gold_se"))) for p in points]
    rows = [r for r in rows if None not in r[:3]]
    if len(rows) < 2:
        return None
    xs, gold, proxy, se = zip(*rows, strict=True)
    log2 = not use_kl and min(xs) > 0
    png = _render(plot_overoptimization, list(xs), list(gold), list(proxy),
                  gold_se=None if None in se else list(se),
                  xlabel="KL to SFT" if use_kl else "n (best-of-n, log2 scale)", log2=log2)
    axis = "the KL to SFT" if use_kl else "n"
    return _figure(png, "over-optimization: gold and proxy reward",
                   "Best-of-n against a length-biased proxy reward model: gold reward (left "
                   f"axis, ± se) and proxy reward (right axis) against {axis}, and a proxy "
                   "that keeps rising while the gold reward peaks (star) and then falls is "
                   "over-optimization of the proxy.", "fig-overoptimization")


def _curve_sets(curves: Any) -> tuple[dict[str, list], dict[str, list]]:
    """``result["training_curves"]`` split in two: the curves of online methods on a
    verifiable task (their points have an ``accuracy``) and the others (gold / proxy / KL)."""
    if not isinstance(curves, Mapping):
        return {}, {}
    clean = {str(k): [p for p in v if isinstance(p, Mapping)] for k, v in curves.items()
             if isinstance(v, list | tuple)}
    accuracy = {k: v for k, v in clean.items() if any("accuracy" in p for p in v)}
    return accuracy, {k: v for k, v in clean.items() if k not in accuracy}


def _training_figure(curves: Any) -> _Fig | None:
    from .figures import plot_training_curves

    clean = _curve_sets(curves)[1]
    try:
        png = _render(plot_training_curves, clean)
    except ValueError:  # no curve has any of the plotted keys
        return None
    return _figure(png, "training curves per method",
                   "Gold reward, proxy (reward-model) reward and KL to SFT of each training "
                   "step's rollouts (that step's prompt batch, so methods sharing a seed share "
                   "its ups and downs), one line per method: a proxy that keeps rising while "
                   "the gold reward stalls or falls is reward over-optimization.", "fig-training")


def _sample_keys(curves: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> list[str]:
    """The ``metric@G`` keys (G > 1) the curves record, by G."""
    found = {str(k) for pts in curves.values() for p in pts for k in p
             if str(k).startswith(metric + "@") and str(k)[len(metric) + 1:].isdigit()
             and int(str(k)[len(metric) + 1:]) > 1}
    return sorted(found, key=lambda k: int(k.split("@")[1]))


def _accuracy_figure(curves: Any) -> _Fig | None:
    """Per-iteration accuracy, pass@G, maj@G and KL of the online methods trained on a
    verifiable task's checker (``plot_training_curves`` with those keys)."""
    from .figures import plot_training_curves

    clean = _curve_sets(curves)[0]
    if not clean:
        return None
    keys = ("accuracy", *_sample_keys(clean, "pass"), *_sample_keys(clean, "maj"), "kl")
    png = _render(plot_training_curves, clean, keys=keys, title="Accuracy over iterations")
    shown = ", ".join(keys)
    return _figure(png, "accuracy curves per method",
                   f"Per training iteration ({shown}): the share of right answers among the "
                   "rollouts, the unbiased pass@G and maj@G (majority vote) of each prompt's G "
                   "samples, mean over that iteration's prompts, and the KL to SFT, one line "
                   "per online method trained on the task's checker (for DAPO: its first "
                   "sampling round, before dynamic sampling drops any group).",
                   "fig-accuracy")


# --- sections -----------------------------------------------------------------------------------

def _methods(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``result["methods"]`` as ``{name: metrics}`` (a list of dicts with a "name" or "method"
    key is accepted too); entries that are not mappings are dropped."""
    raw = result.get("methods") or {}
    if isinstance(raw, list):
        raw = {str(m.get("name", m.get("method", i))): m for i, m in enumerate(raw)
               if isinstance(m, Mapping)}
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): dict(v) for k, v in raw.items() if isinstance(v, Mapping)}


def _pair(key: str) -> tuple[str, str] | None:
    """The key shown beside column ``key`` and how (:data:`_PAIRED`); a ``pass@k`` or
    ``maj@k`` column shows its ``_ci`` interval."""
    if key in _PAIRED:
        return _PAIRED[key]
    if key.split("@")[0] in ("pass", "maj") and key.split("@")[-1].isdigit():
        return key + "_ci", "ci"
    return None


def _columns(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for m in methods.values():
        for key in m:
            seen.setdefault(str(key), None)
    known = [k for k in (*_TEXT_COLUMNS, *_NUMBER_COLUMNS) if k in seen]
    shown_beside = {_PAIRED[k][0] for k in known if k in _PAIRED}
    shown_beside |= {k + "_ci" for k in seen if _pair(k) is not None}
    return known + [k for k in seen if k not in known and k not in shown_beside
                    and k not in _NOTE_KEYS and k not in ("name", "method")]


def _methods_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    cols = _columns(methods)
    labels = {**_TEXT_COLUMNS, **_NUMBER_COLUMNS}
    # the best value of the main columns, highlighted (the reference is not a candidate)
    best: dict[str, float] = {}
    for key in ("gold_reward", "win_rate_vs_sft", "lc_win_rate_vs_sft"):
        vals = [_finite(m.get(key)) for n, m in methods.items() if n != REFERENCE]
        vals = [v for v in vals if v is not None]
        if len(vals) > 1:
            best[key] = max(vals)
    numeric = {key: _pair(key) is not None or any(_numeric(m.get(key))
                                                  for m in methods.values())
               for key in cols}

    grouped = sum(key in _GROUPS for key in cols) >= 2

    def th(key: str, extra: str = "") -> str:
        label, tip = labels.get(key, (key.replace("_", " "), key))
        if key in _GROUPS and not grouped:  # a single judge: no group header
            label = ("" if key == "win_rate_vs_sft" else label + " ") + "win rate vs SFT [95% CI]"
        cls = ' class="num"' if numeric[key] else ""
        return f'<th scope="col"{cls}{extra} title="{_e(tip)}">{_e(label)}</th>'

    two_rows = grouped
    span = ' rowspan="2"' if two_rows else ""
    top, second = [f'<th scope="col"{span}>method</th>'], []
    i = 0
    while i < len(cols):
        group = _GROUPS.get(cols[i]) if grouped else None
        if group is None:
            top.append(th(cols[i], span))
            i += 1
            continue
        j = i
        while j < len(cols) and _GROUPS.get(cols[j]) == group:
            second.append(th(cols[j]))
            j += 1
        top.append(f'<th scope="colgroup" class="group" colspan="{j - i}">{_e(group)}</th>')
        i = j
    head = "<tr>" + "".join(top) + "</tr>" + ("<tr>" + "".join(second) + "</tr>"
                                               if two_rows else "")
    body = []
    for name, m in methods.items():
        ref = name == REFERENCE
        badge = '<span class="badge">reference</span>' if ref else ""
        cells = [f'<td class="method">{_e(name)}{badge}</td>']
        for key in cols:
            value = m.get(key)
            pair = _pair(key)
            text = _fmt(value) if pair is None else _paired(value, m.get(pair[0]), pair[1])
            if key in best and _finite(value) == best[key] and not ref:
                main = _fmt_fixed(value, 3)
                text = (f'<span class="best" title="best of the methods">{main}</span>'
                        + text[len(main):])
            cls = ' class="num"' if numeric[key] else ""
            cells.append(f"<td{cls}>{text}</td>")
        cls = ' class="reference"' if ref else ""
        body.append(f'<tr{cls} data-method="{_e(name)}">' + "".join(cells) + "</tr>")
    return ('<div class="scroll"><table id="methods" class="wide">\n<thead>' + head
            + "</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>")


def _judge_notes(methods: Mapping[str, Mapping[str, Any]], ideal: Any) -> list[str]:
    """Escaped sentences: the reference against itself under a judge that does not give 0.5
    (a broken judge), methods whose proxy-RM interval lies above their gold interval (the
    proxy gamed), and the idealized ranking accuracy."""
    out = []
    ref = methods.get(REFERENCE)
    if ref is not None:
        odd = []
        for label, key, ci in _JUDGES:
            w = _finite(ref.get(key))
            lo, hi = _ci(ref.get(ci))
            if w is not None and (abs(w - 0.5) > 0.05 or (lo is not None and hi is not None
                                                           and not lo <= 0.5 <= hi)):
                odd.append(f"the {label} gives {_paired(w, ref.get(ci), 'ci')}")
        if odd:
            out.append('<span class="warn">Check the judges: SFT against itself should win '
                       "half the time under every judge, but " + "; ".join(odd) + ".</span>")
    gamed = []
    for name, m in methods.items():
        g, p = _finite(m.get("win_rate_vs_sft")), _finite(m.get("win_rate_vs_sft_proxy_rm"))
        g_hi = _ci(m.get("win_rate_ci"))[1]
        p_lo = _ci(m.get("win_rate_ci_proxy_rm"))[0]
        if name != REFERENCE and None not in (g, p, g_hi, p_lo) and p_lo > g_hi:
            gamed.append(f"{_e(name)} ({_fmt(p)} by the proxy RM vs {_fmt(g)} by gold)")
    if gamed:
        out.append("Proxy reward model more impressed than the gold reward (its 95% interval "
                   "entirely above gold's): " + ", ".join(gamed) + ".")
    flips = [f"{_e(name)} {_fmt(f[0])} / {_fmt(f[1])}" for name, m in methods.items()
             if name != REFERENCE and isinstance(f := m.get("ranking_flips_vs_sft"), list | tuple)
             and len(f) == 2]
    if flips:
        out.append("Held-out pairs each policy orders differently from SFT (fixed / broken): "
                   + ", ".join(flips) + ". A pair flips only when training moves its "
                   "log-probability margin past SFT's, so policies with equal accuracies may "
                   "still differ pair by pair.")
    if _finite(ideal) is not None:
        out.append(f"Idealized ranking accuracy (the KL-regularised optimum of the gold reward "
                   f"with SFT as reference, on the same held-out pairs): {_fmt(ideal)}.")
    return out


def _leaderboard_table(rows: Sequence[Mapping[str, Any]]) -> str:
    known = ["rank", "model", "rating", "ci_low", "ci_high", "votes", "wins", "losses", "ties"]
    extra: dict[str, None] = {}
    for r in rows:
        for key in r:
            if key not in known:
                extra.setdefault(str(key), None)
    tips = {"rank": "CI-aware rank: 1 + the number of policies whose 95% interval lies "
                    "entirely above this one's",
            "rating": "Bradley-Terry rating on the Elo scale",
            "ci": "95% bootstrap interval of the rating",
            "votes": "comparisons this policy took part in",
            "wins": "comparisons won (higher gold reward)", "losses": "comparisons lost",
            "ties": "comparisons with equal gold reward (count half)"}
    head = ['<th scope="col" class="num" title="{}">rank</th>'.format(_e(tips["rank"])),
            '<th scope="col">model</th>']
    for key, label in (("rating", "rating"), ("ci", "95% CI"), ("votes", "votes"),
                       ("wins", "wins"), ("losses", "losses"), ("ties", "ties")):
        head.append(f'<th scope="col" class="num" title="{_e(tips[key])}">{label}</th>')
    head += [f'<th scope="col">{_e(k.replace("_", " "))}</th>' for k in extra]
    body = []
    for r in rows:
        name = str(r.get("model"))
        ref = name == REFERENCE
        badge = ('<span class="badge" title="rating fixed at this value; the others\' '
                 'intervals are relative to it">anchor</span>' if ref else "")
        lo, hi = r.get("ci_low"), r.get("ci_high")
        ci = (f"[{_fmt_fixed(lo, 1)}, {_fmt_fixed(hi, 1)}]" if lo is not None or hi is not None
              else MISSING)
        cells = [_cell(r.get("rank")), f'<td class="method">{_e(name)}{badge}</td>',
                 f'<td class="num">{_fmt_fixed(r.get("rating"), 1)}</td>',
                 f'<td class="num">{ci}</td>']
        cells += [_cell(r.get(k)) for k in ("votes", "wins", "losses", "ties")]
        cells += [_cell(r.get(k)) for k in extra]
        cls = ' class="reference"' if ref else ""
        body.append(f'<tr{cls} data-model="{_e(name)}">' + "".join(cells) + "</tr>")
    return ('<div class="scroll"><table id="leaderboard" class="wide">\n<thead><tr>'
            + "".join(head) + "</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody>\n</table></div>")


def _curve_table(curve: Sequence[Mapping[str, Any]]) -> str:
    cols: dict[str, None] = {}
    for p in curve:
        for key in p:
            cols.setdefault(str(key), None)
    head = "".join(f'<th class="num">{_e(k)}</th>' for k in cols)
    body = "\n".join("<tr>" + "".join(_cell(p.get(k)) for k in cols) + "</tr>" for p in curve)
    return (f'<div class="scroll"><table id="overopt-curve">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table></div>")


def _flat_items(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted.key, value)`` pairs of a nested mapping (lists stay values)."""
    if not isinstance(obj, Mapping):
        return [(prefix or "value", obj)]
    out: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.extend(_flat_items(value, name) if isinstance(value, Mapping) else [(name, value)])
    return out


def _labelled(obj: Mapping[str, Any], labels: Mapping[str, tuple[str, str]]
              ) -> list[tuple[str, Any, str]]:
    """``(label, value, tooltip)`` for the known keys of ``obj`` in ``labels``' order, then the
    others flattened with their underscores as spaces."""
    out = [(labels[k][0], obj[k], labels[k][1]) for k in labels if k in obj]
    for key, value in _flat_items({k: v for k, v in obj.items() if k not in labels}):
        out.append((key.replace("_", " "), value, ""))
    return out


def _reward_model_cards(rm: Mapping[str, Any]) -> str:
    """The reward model's numbers in cards: training, held-out accuracy and agreement with
    gold, calibration, length (the reliability bins go to the figure, not a table)."""
    cards = []
    top = [(k.replace("_", " "), v) for k, v in _flat_items({k: v for k, v in rm.items()
                                                             if k not in ("heldout",
                                                                          "generative")})]
    if top:
        cards.append(("training", top, "reward-model"))
    if isinstance(rm.get("generative"), Mapping):  # GenRM vs BT RM, same held-out pairs
        cards.append(("generative RM vs BT", [(k.replace("_", " "), v) for k, v in
                                              rm["generative"].items()], "rm-generative"))
    held = rm.get("heldout")
    if isinstance(held, Mapping):
        gold = held.get("gold") if isinstance(held.get("gold"), Mapping) else {}
        acc = [("pairs", held.get("n"), "held-out pairs labelled by the annotator pool"),
               ("accuracy", held.get("accuracy"), "share of pairs where the RM scores the "
                "pool's chosen response higher (ties wrong)"),
               ("accuracy, ties half", held.get("accuracy_ties_half"), ""),
               ("ties", held.get("n_ties"), "pairs the RM scores equally"),
               ("mean margin", held.get("mean_margin"), "mean r(chosen) − r(rejected)"),
               ("accuracy vs gold", gold.get("agreement"), "share of pairs where the RM's "
                "preference matches the gold reward's"),
               ("Cohen's κ vs gold", gold.get("cohen_kappa"), "agreement with gold beyond "
                "chance (low when gold nearly always prefers the pool's chosen response)"),
               ("pairs vs gold", gold.get("n"), "")]
        cards.append(("held-out pairs", [a for a in acc if a[1] is not None], "rm-heldout"))
        cal = held.get("calibration")
        if isinstance(cal, Mapping):
            rows = [("ECE", cal.get("ece"), "expected calibration error: count-weighted mean "
                     "|observed frequency − predicted probability| over the bins"),
                    ("mean confidence", cal.get("mean_confidence"), "mean max(p, 1 − p)"),
                    ("pairs", cal.get("n_pairs"), ""),
                    ("scale", cal.get("scale"), "p = sigmoid(scale · (r_a − r_b))")]
            rows += [(k.replace("_", " "), v, "") for k, v in _flat_items(
                {k: v for k, v in cal.items()
                 if k not in ("ece", "mean_confidence", "n_pairs", "scale", "bins")})]
            cards.append(("calibration", [r for r in rows if r[1] is not None],
                          "rm-calibration"))
        length = held.get("length")
        if isinstance(length, Mapping):
            corr = length.get("correlation") if isinstance(length.get("correlation"),
                                                           Mapping) else {}
            rules = length.get("rules") if isinstance(length.get("rules"), Mapping) else {}
            overall = rules.get("overall") if isinstance(rules.get("overall"), Mapping) else {}
            rows = [("reward–length Pearson r", corr.get("pearson"), "correlation of the "
                     "reward with the answer length in words, over both responses of every "
                     "pair"),
                    ("reward–length Spearman ρ", corr.get("spearman"), ""),
                    ("responses", corr.get("n"), ""),
                    ("“longer wins” rule accuracy", overall.get("longer_wins"), "accuracy on "
                     "the labels of always picking the longer response"),
                    ("“shorter wins” rule accuracy", overall.get("shorter_wins"), ""),
                    ("solved by a length rule", overall.get("solved_by_length_rule"), "a length "
                     "rule reaches the flag threshold"),
                    ("flag threshold", rules.get("flag_threshold"), "")]
            flagged = rules.get("flagged")
            if flagged:
                rows.append(("subsets solved by length", flagged, ""))
            subsets = rules.get("subsets")
            if isinstance(subsets, Mapping) and subsets:
                rows += [(f"subset {k}", v, "") for k, v in _flat_items(subsets)]
            cards.append(("length", [r for r in rows if r[1] is not None], "rm-length"))
        rest = {k: v for k, v in held.items() if k not in ("n", "accuracy",
                "accuracy_ties_half", "n_ties", "mean_margin", "gold", "calibration", "length")}
        if rest:
            cards.append(("more", [(k.replace("_", " "), v) for k, v in _flat_items(rest)],
                          "rm-more"))
    return ('<div class="cards">' + "".join(f"<div><h3>{_e(title)}</h3>"
                                            + _kv_table(items, table_id=ident) + "</div>"
                                            for title, items, ident in cards) + "</div>")


def _headline(methods: Mapping[str, Mapping[str, Any]], overopt: Any,
              board: Sequence[Mapping[str, Any]] = ()) -> str:
    """Escaped sentences: the top of the arena leaderboard, the best method by gold win rate
    vs SFT, and whether the over-optimization stage saw the gold reward peak and fall."""
    out = []
    rated = [r for r in board if _finite(r.get("rating")) is not None]
    if rated:
        top = max(rated, key=lambda r: _finite(r["rating"]))  # type: ignore[arg-type, return-value]
        lo, hi = top.get("ci_low"), top.get("ci_high")
        ci = (f", 95% interval [{_fmt_fixed(lo, 1)}, {_fmt_fixed(hi, 1)}]"
              if _finite(lo) is not None and _finite(hi) is not None else "")
        shared = [str(r["model"]) for r in rated if r is not top and r.get("rank") == 1
                  and top.get("rank") == 1]
        tie = (f"; sharing rank 1 (overlapping intervals): {_e(', '.join(shared))}"
               if shared else "")
        out.append(f"Top of the gold-judged arena leaderboard: <strong>{_e(top['model'])}"
                   f"</strong> (rating {_fmt_fixed(top['rating'], 1)}{ci}{tie}).")
    scored = [(w, n) for n, m in methods.items() if n != REFERENCE
              and (w := _finite(m.get("win_rate_vs_sft"))) is not None]
    if scored:
        w, name = max(scored)
        ci = methods[name].get("win_rate_ci")
        ci_text = f" {_fmt(list(ci))}" if isinstance(ci, list | tuple) and len(ci) == 2 else ""
        out.append(f"Highest gold win rate vs SFT: <strong>{_e(name)}</strong> "
                   f"({_fmt(w)}{ci_text}, 95% interval).")
    if isinstance(overopt, Mapping) and isinstance(overopt.get("overoptimized"), bool):
        if overopt["overoptimized"]:
            curve = [p for p in overopt.get("curve") or [] if isinstance(p, Mapping)]
            axis = "KL" if curve and all("kl" in p for p in curve) else "n"
            x = _finite(overopt.get("x_at_gold_max"))
            at = f" at {axis} = {x:g}" if x is not None else ""
            out.append(f"Over-optimization observed: the gold reward peaked{at} and fell by "
                       f"{_fmt(overopt.get('gold_drop'))} while the proxy kept rising.")
        else:
            out.append("No over-optimization seen in the best-of-n curve.")
    return "".join(f"<span>{s}</span>" for s in out)


def _date(result: Mapping[str, Any], generated: datetime | None) -> str:
    for key in ("date", "created"):
        if result.get(key):
            return str(result[key])
    when = generated or datetime.now().astimezone()
    return when.strftime("%Y-%m-%d %H:%M %Z").strip()


def _build(result: Mapping[str, Any], generated: datetime | None,
           assets: str | None = None) -> tuple[str, list[_Fig]]:
    """The page's HTML and its figures (``assets``: the folder name the footer mentions)."""
    from .. import __version__

    if not isinstance(result, Mapping):
        raise ValueError(f"a lab result must be a JSON object, not {type(result).__name__}")
    config = result.get("config") if isinstance(result.get("config"), Mapping) else {}
    task = str(config.get("task", result.get("task", "lab")))
    methods = _methods(result)
    board = _leaderboard_rows(result)
    date = _date(result, generated)
    figures: list[_Fig] = []
    sections: list[tuple[str, str]] = []  # (id, title) for the contents line
    parts: list[str] = []
    add = parts.append

    def section(ident: str, title: str) -> None:
        sections.append((f"s-{ident}", title))
        add(f'<h2 id="s-{ident}">{_e(title)}</h2>')

    def fig(made: _Fig | None) -> None:
        if made is not None:
            figures.append(made)
            add(made.html)

    if board:
        section("arena", "Arena leaderboard")
        add('<p class="note">Every pair of policies judged by the task\'s gold reward on every '
            "held-out prompt (equal gold = a tie, counted half), rated with the arena engine: "
            "Bradley-Terry on the Elo scale, SFT anchored at 1000, 95% bootstrap intervals; "
            "a policy's rank is 1 + the number of policies whose interval lies entirely above "
            "its own, so policies that cannot be told apart share a rank.</p>")
        add(_leaderboard_table(board))
        fig(_leaderboard_figure(board))

    section("methods", "Methods")
    if methods:
        add(_methods_table(methods))
        judges = [text for (_, key, _), text in zip(_JUDGES, (
            "the task's gold reward", "the simulated annotator pool",
            "the proxy reward model the policies were trained against"), strict=True)
            if any(key in m for m in methods.values())]
        by = (", judged by " + (" and ".join(judges) if len(judges) < 3 else
                                f"{judges[0]}, {judges[1]} and {judges[2]}")) if judges else ""
        ranking = ""
        if any("ranking_accuracy" in m for m in methods.values()):
            pairs = {m.get("ranking_pairs") for m in methods.values()} - {None}
            on = (f" (ranking accuracy on {_fmt(pairs.pop())} held-out pairs with 95% Wilson "
                  "intervals)" if len(pairs) == 1 else "")
            ranking = ("; ranking accuracy = how often the policy gives the better of two "
                       f"held-out answers the higher log-probability{on}")
        add('<p class="note">One row per policy, evaluated on the same held-out prompts. Win '
            "rates are against the SFT policy's answer to the same prompt (<em>reference</em> "
            f"row; ties count half) with 95% intervals{by}; LC = length-controlled (gold)"
            f"{ranking}; KL to SFT is per answer (best-of-n: the analytic bound). The best "
            "value of each main column is in bold blue. “–” = not measured.</p>")
        samples = {m.get("eval_samples") for m in methods.values()} - {None}
        if len(samples) == 1:
            add(f'<p class="note">Verifiable task: accuracy (pass@1), pass@k and maj@k from '
                f"{_fmt(samples.pop())} sampled answers to each held-out prompt, checked by "
                "the task's checker, with 95% bootstrap intervals over prompts; the gain over "
                "SFT is paired by prompt (the same prompts, a paired bootstrap).</p>")
        for note in _judge_notes(methods, result.get("idealized_ranking_accuracy")):
            add(f'<p class="note">{note}</p>')
        for made in (_win_rate_figure(methods), _judges_figure(methods),
                     _reward_kl_figure(methods), _length_figure(methods)):
            fig(made)
    else:
        add('<p class="note">No methods in this result.</p>')

    data = result.get("data")
    files = [(k.replace("_", " "), result[k]) for k in ("feedback_store", "stage")
             if result.get(k) is not None]
    if isinstance(data, Mapping) or files:
        section("data", "Preference data")
        items = [(k.replace("_", " "), v) for k, v in _flat_items(data)] if isinstance(
            data, Mapping) else []
        add(_kv_table(items + files, table_id="data"))

    rm = result.get("reward_model")
    if isinstance(rm, Mapping):
        section("reward-model", "Reward model")
        add(_reward_model_cards(rm))
        held = rm.get("heldout")
        if isinstance(held, Mapping):
            fig(_reliability_figure(held.get("calibration")))

    annotators = result.get("annotators")
    if isinstance(annotators, Mapping) and annotators:
        section("annotator-agreement", "Annotator agreement")
        rows = _labelled(annotators, _ANNOTATOR_LABELS)
        add(_kv_table(rows, table_id="annotators"))
        add('<p class="note">The simulated annotator pool on items labelled by several '
            "distinct annotators (labels a / b / tie, presentation order removed): pairwise "
            "agreement is the share of pairs of labels on the same item that agree, "
            "Krippendorff's α is 1 for perfect agreement and 0 for chance, agreement with gold "
            "is the share of decisive labels picking the higher-gold response.</p>")

    overopt = result.get("overoptimization")
    if isinstance(overopt, Mapping):
        curve = [p for p in overopt.get("curve") or [] if isinstance(p, Mapping)]
        section("overoptimization", "Reward over-optimization")
        fig(_overopt_figure(curve) if curve else None)
        summary = [(k, v) for k, v in overopt.items() if k != "curve"]
        if summary:
            add("<h3>summary</h3>" + _kv_table(summary, per_row=2, table_id="overopt"))
        if curve:
            add("<h3>curve</h3>" + _curve_table(curve))

    curves = result.get("training_curves")
    if curves:
        made = _training_figure(curves)
        accuracy = _accuracy_figure(curves)
        if made or accuracy:
            section("training-curves", "Training curves")
            fig(accuracy)
            fig(made)

    if config:
        section("configuration", "Configuration")
        add(_kv_table(config.items(), per_row=3, table_id="config"))

    extra = [(k, v) for k, v in result.items() if k not in _KNOWN and v is not None]
    if extra:
        section("other", "Other results")
        add(_kv_table([item for k, v in extra for item in _flat_items(v, str(k))],
                      table_id="other"))

    where = (f" The figures as PNG files and every number (<code>result.json</code>) are in "
             f"<code>{_e(assets)}/</code> beside this page." if assets else "")
    add(f"<footer>Generated by prefkit {_e(__version__)} on {_e(date)}. Self-contained: "
        f"no external resources.{where}</footer>")

    top = [f"<h1>Lab report: {_e(task)}</h1>"]
    sub = f"{_e(date)} · prefkit {_e(__version__)}"
    if result.get("sft_model"):
        sub += f" · SFT model <code>{_e(result['sft_model'])}</code>"
    top.append(f'<p class="subtitle">{sub}</p>')
    headline = _headline(methods, overopt, board)
    if headline:
        top.append(f'<p class="headline">{headline}</p>')
    if len(sections) > 2:
        top.append('<nav class="toc">' + "".join(f'<a href="#{i}">{_e(t)}</a>'
                                                for i, t in sections) + "</nav>")
    body = "\n".join(top + parts)
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>prefkit lab report: {_e(task)}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")
    return page, figures


def lab_report_html(result: Mapping[str, Any], *, generated: datetime | None = None) -> str:
    """The HTML text of a self-contained report of ``result`` (a :func:`run_lab` result or a
    saved ``prefkit lab run --json`` output; module docstring). ``generated`` is the date shown
    when the result carries none (default: now)."""
    return _build(result, generated)[0]


def assets_dir(path: str | Path) -> Path:
    """The folder :func:`write_lab_report` writes beside the HTML file ``path``:
    ``<stem>_files``."""
    out = Path(path)
    return out.with_name(out.stem + "_files")


def write_lab_report(result: Mapping[str, Any], path: str | Path, *,
                     generated: datetime | None = None, assets: bool = True) -> Path:
    """Write :func:`lab_report_html` of ``result`` to ``path`` (parent folders created);
    returns the path.

    With ``assets`` (the default) also write the folder ``<stem>_files/`` beside it: every
    figure of the page as ``<figure id>.png`` (PNGs of figures an earlier report had and this
    one has not are removed) and ``result.json``, the whole result (every number). The HTML
    stays self-contained either way."""
    out = Path(path)
    folder = assets_dir(out)
    text, figures = _build(result, generated, folder.name if assets else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    if assets:
        folder.mkdir(exist_ok=True)
        names = {f"{f.fig_id}.png" for f in figures}
        for stale in folder.glob("fig-*.png"):
            if stale.name not in names:
                stale.unlink()
        for f in figures:
            (folder / f"{f.fig_id}.png").write_bytes(f.png)
        (folder / "result.json").write_text(
            json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n",
            encoding="utf-8")
    out.write_text(text, encoding="utf-8")
    return out
