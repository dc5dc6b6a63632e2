"""A self-contained HTML report of a lab run (:func:`prefkit.lab.pipeline.run_lab`'s result).

One HTML file with no external resources: inline CSS, the figures as base64 PNG ``data:`` URIs,
no JavaScript. Every string taken from the result is HTML-escaped; numbers are shown with three
decimals (integers as they are, missing values as "–").

Sections: the run (task, date, config), the data and reward model, the methods table (one row
per entry of ``result["methods"]``, in the given order, the ``sft`` row marked as the
reference), then the figures whose data are present: win rate vs SFT with 95% intervals, gold
reward vs KL to SFT, the over-optimization curve (``result["overoptimization"]["curve"]``) and
per-method training curves (``result["training_curves"]``), and any other top-level entries.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["lab_report_html", "write_lab_report"]

MISSING = "–"
REFERENCE = "sft"

# Known method columns (label, tooltip), in display order; other keys follow in first-seen order.
_TEXT_COLUMNS = {"algo": ("algorithm", "training algorithm"), "kind": ("kind", "kind of method")}
_NUMBER_COLUMNS = {
    "gold_reward": ("gold reward", "mean gold reward on the held-out prompts"),
    "gold_reward_se": ("± se", "standard error of the mean gold reward"),
    "win_rate_vs_sft": ("win rate vs SFT", "gold-judged win rate against the SFT policy's "
                        "answer to the same prompt (ties count half)"),
    "win_rate_ci": ("95% CI", "95% interval of the win rate"),
    "lc_win_rate_vs_sft": ("LC win rate", "length-controlled win rate vs SFT"),
    "kl_to_sft": ("KL to SFT", "KL divergence to the SFT policy (for best-of-n: the analytic "
                  "bound log n - (n-1)/n)"),
    "mean_length": ("mean length", "mean answer length in words"),
}
# Top-level keys with their own section (the rest go to "Other results").
_KNOWN = {"config", "sft_model", "data", "reward_model", "methods", "overoptimization",
          "training_curves", "report", "date", "created", "title"}

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
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
       font-size: 13px; background: var(--ref); padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { background: var(--head); text-align: left; font-weight: 600;
           border-bottom: 2px solid #c9d3de; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums;
                 white-space: nowrap; }
table.kv th { text-align: left; font-weight: 500; color: var(--muted); background: none;
              white-space: nowrap; }
table.kv td { font-variant-numeric: tabular-nums; padding-right: 26px; }
table.kv td.wrap { word-break: break-all; }
.scroll { overflow-x: auto; }
#methods { width: 100%; }
#methods th, #methods td { padding: 5px 8px; }
#methods tbody tr:hover { background: #f7fafd; }
#methods tr.reference { background: var(--ref); color: var(--muted); }
#methods td.method { font-weight: 600; white-space: nowrap; }
.badge { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 9px;
         font-size: 11px; font-weight: 500; color: #fff; background: #8a949e;
         vertical-align: 1px; }
.best { font-weight: 700; color: var(--accent); }
.cards { display: flex; flex-wrap: wrap; gap: 14px 40px; }
figure { margin: 16px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 760px; }
.note { color: var(--muted); font-size: 13px; max-width: 820px; }
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


def _kv_table(items: Iterable[tuple[str, Any]], per_row: int = 1, table_id: str = "") -> str:
    """A compact key/value table, ``per_row`` pairs per row (keys escaped, values formatted)."""
    items = list(items)
    ident = f' id="{_e(table_id)}"' if table_id else ""
    rows = []
    for start in range(0, len(items), per_row):
        cells = []
        for key, value in items[start:start + per_row]:
            wrap = ' class="wrap"' if isinstance(value, str) and len(value) > 40 else ""
            cells.append(f"<th>{_e(key)}</th><td{wrap}>{_fmt(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="kv"{ident}>\n' + "\n".join(rows) + "\n</table>"


# --- figures ------------------------------------------------------------------------------------

def _png(plot: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Run a :mod:`prefkit.report.figures` function into memory; the PNG as base64 text."""
    buf = io.BytesIO()
    plot(*args, buf, **kwargs)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(b64: str, alt: str, caption: str, fig_id: str) -> str:
    return (f'<figure id="{_e(fig_id)}"><img alt="{_e(alt)}" '
            f'src="data:image/png;base64,{b64}">\n'
            f"<figcaption>{caption}</figcaption></figure>")


def _win_rate_figure(methods: Mapping[str, Mapping[str, Any]]) -> str | None:
    from .figures import plot_lab_win_rates

    names, win, low, high = [], [], [], []
    for name, m in methods.items():
        w = _finite(m.get("win_rate_vs_sft"))
        if w is None:
            continue
        ci = m.get("win_rate_ci")
        lo, hi = (ci[0], ci[1]) if isinstance(ci, list | tuple) and len(ci) == 2 else (None,
                                                                                       None)
        names.append(str(name))
        win.append(w)
        low.append(_finite(lo))
        high.append(_finite(hi))
    if not names:
        return None
    b64 = _png(plot_lab_win_rates, names, win, low, high, reference=REFERENCE)
    return _figure(b64, "gold win rate vs SFT per method with 95% intervals",
                   "Gold-judged win rate of each method's answer against the SFT policy's "
                   "answer to the same held-out prompt (ties count half), with its 95% "
                   "interval. Right of the dashed line at 0.5: better than SFT.", "fig-win-rate")


def _reward_kl_figure(methods: Mapping[str, Mapping[str, Any]]) -> str | None:
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
    caption = ("Mean gold reward against the KL divergence to the SFT policy: up and to the "
               "left is better (more reward for less drift). Whiskers: ± one standard error. "
               "SFT sits at KL 0; for best-of-n the KL is the analytic bound.")
    if skipped:
        caption += " Not shown (no KL or gold reward): " + _e(", ".join(skipped)) + "."
    b64 = _png(plot_reward_vs_kl, names, kl, gold, gold_se=se, reference=REFERENCE)
    return _figure(b64, "gold reward vs KL to SFT per method", caption, "fig-reward-kl")


def _overopt_figure(curve: Sequence[Mapping[str, Any]]) -> str | None:
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
    b64 = _png(plot_overoptimization, list(xs), list(gold), list(proxy),
               gold_se=None if None in se else list(se),
               xlabel="KL to SFT" if use_kl else "n (best-of-n, log2 scale)", log2=log2)
    return _figure(b64, "over-optimization: gold and proxy reward",
                   "Best-of-n against a length-biased proxy reward model: proxy reward (right "
                   "axis) and gold reward (left axis). A proxy that keeps rising while the gold "
                   "reward peaks and then falls is over-optimization of the proxy. The star "
                   "marks the gold maximum.", "fig-overoptimization")


def _training_figure(curves: Any) -> str | None:
    from .figures import plot_training_curves

    if not isinstance(curves, Mapping):
        return None
    clean = {str(k): [p for p in v if isinstance(p, Mapping)] for k, v in curves.items()
             if isinstance(v, list | tuple)}
    try:
        b64 = _png(plot_training_curves, clean)
    except ValueError:  # no curve has any of the plotted keys
        return None
    return _figure(b64, "training curves per method",
                   "Gold reward, proxy (reward-model) reward and KL to SFT during training, "
                   "one line per method. A proxy that keeps rising while the gold reward "
                   "stalls or falls is reward over-optimization.", "fig-training")


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


def _columns(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for m in methods.values():
        for key in m:
            seen.setdefault(str(key), None)
    known = [k for k in (*_TEXT_COLUMNS, *_NUMBER_COLUMNS) if k in seen]
    return known + [k for k in seen if k not in known and k not in ("name", "method")]


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
    numeric = {key: any(_numeric(m.get(key)) for m in methods.values()) for key in cols}
    head = ['<th scope="col">method</th>']
    for key in cols:
        label, tip = labels.get(key, (key.replace("_", " "), key))
        cls = ' class="num"' if numeric[key] else ""
        head.append(f'<th scope="col"{cls} title="{_e(tip)}">{_e(label)}</th>')
    body = []
    for name, m in methods.items():
        ref = name == REFERENCE
        badge = '<span class="badge">reference</span>' if ref else ""
        cells = [f'<td class="method">{_e(name)}{badge}</td>']
        for key in cols:
            value = m.get(key)
            if key in best and _finite(value) == best[key] and not ref:
                cells.append(f'<td class="num best" title="best of the methods">'
                             f"{_fmt(value)}</td>")
            else:
                cells.append(_cell(value, numeric[key]))
        cls = ' class="reference"' if ref else ""
        body.append(f'<tr{cls} data-method="{_e(name)}">' + "".join(cells) + "</tr>")
    return ('<div class="scroll"><table id="methods">\n<thead><tr>' + "".join(head)
            + "</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>")


def _curve_table(curve: Sequence[Mapping[str, Any]]) -> str:
    cols: dict[str, None] = {}
    for p in curve:
        for key in p:
            cols.setdefault(str(key), None)
    head = "".join(f'<th class="num">{_e(k)}</th>' for k in cols)
    body = "\n".join("<tr>" + "".join(_cell(p.get(k)) for k in cols) + "</tr>" for p in curve)
    return (f'<table id="overopt-curve">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
            "</tbody>\n</table>")


def _flat_items(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted.key, value)`` pairs of a nested mapping (lists stay values)."""
    if not isinstance(obj, Mapping):
        return [(prefix or "value", obj)]
    out: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.extend(_flat_items(value, name) if isinstance(value, Mapping) else [(name, value)])
    return out


def _headline(methods: Mapping[str, Mapping[str, Any]], overopt: Any) -> str:
    """One escaped sentence: the best method by gold win rate vs SFT, and whether the
    over-optimization stage saw the gold reward peak and fall."""
    out = []
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
    return " ".join(out)


def _date(result: Mapping[str, Any], generated: datetime | None) -> str:
    for key in ("date", "created"):
        if result.get(key):
            return str(result[key])
    when = generated or datetime.now().astimezone()
    return when.strftime("%Y-%m-%d %H:%M %Z").strip()


def lab_report_html(result: Mapping[str, Any], *, generated: datetime | None = None) -> str:
    """The HTML text of a self-contained report of ``result`` (a :func:`run_lab` result or a
    saved ``prefkit lab run --json`` output; module docstring). ``generated`` is the date shown
    when the result carries none (default: now)."""
    from .. import __version__

    if not isinstance(result, Mapping):
        raise ValueError(f"a lab result must be a JSON object, not {type(result).__name__}")
    config = result.get("config") if isinstance(result.get("config"), Mapping) else {}
    task = str(config.get("task", result.get("task", "lab")))
    methods = _methods(result)
    date = _date(result, generated)
    parts: list[str] = []
    add = parts.append

    add(f"<h1>Lab report: {_e(task)}</h1>")
    sub = f"{_e(date)} · prefkit {_e(__version__)}"
    if result.get("sft_model"):
        sub += f" · SFT model <code>{_e(result['sft_model'])}</code>"
    add(f'<p class="subtitle">{sub}</p>')
    headline = _headline(methods, result.get("overoptimization"))
    if headline:
        add(f'<p class="headline">{headline}</p>')

    if config:
        add("<h2>Configuration</h2>")
        add(_kv_table(config.items(), per_row=3, table_id="config"))

    data = result.get("data")
    rm = result.get("reward_model")
    if isinstance(data, Mapping) or isinstance(rm, Mapping):
        add('<h2>Data and reward model</h2><div class="cards">')
        if isinstance(data, Mapping):
            add("<div><h3>preference data</h3>"
                + _kv_table([(k.replace("_", " "), v) for k, v in _flat_items(data)],
                            table_id="data") + "</div>")
        if isinstance(rm, Mapping):
            add("<div><h3>reward model</h3>"
                + _kv_table([(k.replace("_", " "), v) for k, v in _flat_items(rm)],
                            table_id="reward-model") + "</div>")
        add("</div>")

    add("<h2>Methods</h2>")
    if methods:
        add(_methods_table(methods))
        add('<p class="note">One row per policy, evaluated on the same held-out prompts and '
            "judged by the task's gold reward. Win rates are against the SFT policy "
            "(<em>reference</em> row; ties count half) with 95% intervals; LC = length-"
            "controlled; KL to SFT is per answer (best-of-n: the analytic bound). The best "
            "value of each main column is in bold blue. “–” = not measured.</p>")
        for fig in (_win_rate_figure(methods), _reward_kl_figure(methods)):
            if fig:
                add(fig)
    else:
        add('<p class="note">No methods in this result.</p>')

    overopt = result.get("overoptimization")
    if isinstance(overopt, Mapping):
        curve = [p for p in overopt.get("curve") or [] if isinstance(p, Mapping)]
        add("<h2>Reward over-optimization</h2>")
        fig = _overopt_figure(curve) if curve else None
        if fig:
            add(fig)
        summary = [(k, v) for k, v in overopt.items() if k != "curve"]
        if summary:
            add("<h3>summary</h3>" + _kv_table(summary, per_row=2, table_id="overopt"))
        if curve:
            add("<h3>curve</h3>" + _curve_table(curve))

    curves = result.get("training_curves")
    if curves:
        fig = _training_figure(curves)
        if fig:
            add("<h2>Training curves</h2>")
            add(fig)

    extra = [(k, v) for k, v in result.items() if k not in _KNOWN and v is not None]
    if extra:
        add("<h2>Other results</h2>")
        add(_kv_table([item for k, v in extra for item in _flat_items(v, str(k))],
                      table_id="other"))

    add(f"<footer>Generated by prefkit {_e(__version__)} on {_e(date)}. Self-contained: "
        "no external resources.</footer>")
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>prefkit lab report: {_e(task)}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def write_lab_report(result: Mapping[str, Any], path: str | Path, *,
                     generated: datetime | None = None) -> Path:
    """Write :func:`lab_report_html` of ``result`` to ``path`` (parent folders created);
    returns the path."""
    out = Path(path)
    text = lab_report_html(result, generated=generated)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
