"""Inter-annotator agreement, annotator bias and throughput: the maths behind the annotation
app's admin pages.

Pure functions on plain Python data (lists, tuples, dicts); no I/O, no hidden state.

- :func:`krippendorff_alpha` (and :func:`krippendorff_alpha_nominal`,
  :func:`krippendorff_alpha_ordinal`, :func:`krippendorff_alpha_interval`): chance-corrected
  agreement for any number of annotators with missing labels (Krippendorff 2011, "Computing
  Krippendorff's alpha-reliability", https://repository.upenn.edu/asc_papers/43); defined in
  :mod:`prefkit.data.krippendorff` (the data layer's statistics use it) and re-exported here.
- :func:`fleiss_kappa`: Fleiss (1971), "Measuring nominal scale agreement among many raters",
  Psychological Bulletin 76(5), on the items with the most common number of raters.
- :func:`vs_majority`: each annotator against the leave-one-out majority of the others:
  agreement rate and Cohen's kappa (Cohen 1960).
- :func:`position_bias`: how often each annotator picks the response shown first, with a
  Wilson interval and an exact binomial test.
- :func:`labels_per_hour`: labels per active hour, activity split into sessions at idle gaps.

Missing labels: for :func:`krippendorff_alpha` and :func:`fleiss_kappa` a unit (item) is a list
of the labels it received; ``None`` entries (and float NaN) are dropped, so a column of a
raters x items table with gaps can be passed as it is. (The per-level alpha functions take
the labels present only.)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from ..data.krippendorff import (
    LEVELS,
    is_present,
    krippendorff_alpha,
    krippendorff_alpha_interval,
    krippendorff_alpha_nominal,
    krippendorff_alpha_ordinal,
)

A = TypeVar("A", bound=Hashable)  # annotator id
SESSION_GAP_S = 600.0


# ---------------------------------------------------------------------------------------------
# Fleiss' kappa
# ---------------------------------------------------------------------------------------------


def fleiss_kappa(units: Iterable[Iterable[Hashable]],
                 categories: Sequence[Hashable] | None = None) -> dict[str, Any]:
    """Fleiss' kappa (Fleiss 1971, "Measuring nominal scale agreement among many raters").

    ``units``: per item, the category labels it received (``None`` / NaN = missing, dropped).
    Fleiss' kappa assumes the same number of raters ``n`` on every item, so only the items
    whose number of labels is the most common one among items with at least 2 labels are used
    (a tie between two such numbers goes to the larger). With ``N`` items, ``n_ij`` raters
    putting item ``i`` in category ``j``::

        p_j   = sum_i n_ij / (N n)                           # category shares
        P_i   = (sum_j n_ij^2 - n) / (n (n - 1))             # agreeing rater pairs on item i
        P_bar = (1/N) sum_i P_i,   P_e = sum_j p_j^2
        kappa = (P_bar - P_e) / (1 - P_e)

    ``categories``: the allowed labels (a label outside them raises ValueError); categories no
    one used do not change kappa. Returns ``{"kappa", "items_used", "items_skipped" (items with
    at least 2 labels but another count), "raters_per_item", "observed_agreement" (P_bar),
    "expected_agreement" (P_e)}``; ``kappa`` is None when undefined (no usable item, or every
    label in one category: ``P_e = 1``).
    """
    allowed = None if categories is None else set(categories)
    rated: list[list[Hashable]] = []
    for values in units:
        labels = [v for v in values if is_present(v)]
        if allowed is not None:
            for v in labels:
                if v not in allowed:
                    raise ValueError(f"label {v!r} is not one of the categories {categories!r}")
        if len(labels) >= 2:
            rated.append(labels)
    sizes = Counter(len(labels) for labels in rated)
    out: dict[str, Any] = {"kappa": None, "items_used": 0, "items_skipped": len(rated),
                           "raters_per_item": None, "observed_agreement": None,
                           "expected_agreement": None}
    if not sizes:
        return out
    n = max(sizes, key=lambda size: (sizes[size], size))
    used = [labels for labels in rated if len(labels) == n]
    index: dict[Hashable, int] = {}
    for labels in used:
        for v in labels:
            index.setdefault(v, len(index))
    table = np.zeros((len(used), len(index)))
    for i, labels in enumerate(used):
        for v in labels:
            table[i, index[v]] += 1
    n_items = len(used)
    p = table.sum(axis=0) / (n_items * n)
    p_bar = float(((table * table).sum(axis=1) - n).sum() / (n_items * n * (n - 1)))
    p_e = float(p @ p)
    out.update(items_used=n_items, items_skipped=len(rated) - n_items, raters_per_item=n,
               observed_agreement=p_bar, expected_agreement=p_e)
    if len(index) > 1:  # P_e == 1 exactly when a single category was used
        out["kappa"] = (p_bar - p_e) / (1.0 - p_e)
    return out


# ---------------------------------------------------------------------------------------------
# Each annotator against the majority of the others
# ---------------------------------------------------------------------------------------------


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa (Cohen 1960) of two raters' labels on the same items, ``(a_i, b_i)``::

        p_o = (1/m) sum_i 1(a_i == b_i),   p_e = sum_c (a_c / m) (b_c / m)
        kappa = (p_o - p_e) / (1 - p_e) = (m sum_i 1(a_i == b_i) - sum_c a_c b_c)
                                          / (m^2 - sum_c a_c b_c)

    with ``a_c``, ``b_c`` how often each rater used category ``c`` (computed in exact integer
    arithmetic up to the final division). None when undefined (no pairs, or ``p_e = 1``: both
    raters always gave the same single category).
    """
    m = len(pairs)
    if m == 0:
        return None
    matches = sum(a == b for a, b in pairs)
    a_counts = Counter(a for a, _ in pairs)
    b_counts = Counter(b for _, b in pairs)
    chance = sum(c * b_counts[k] for k, c in a_counts.items())
    if m * m == chance:
        return None
    return (m * matches - chance) / (m * m - chance)


def vs_majority(labels: Iterable[tuple[Hashable, A, Hashable]],
                min_labels: int = 3) -> dict[A, dict[str, Any]]:
    """Each annotator against the leave-one-out majority of the other annotators.

    ``labels``: ``(item_id, annotator_id, value)`` triples with nominal values (e.g. ``"a"`` /
    ``"b"`` / ``"tie"`` in a canonical orientation of the pair). One label per annotator and
    item: a repeated ``(item, annotator)`` keeps the last value. On each item with at least
    ``min_labels`` labels (default 3, so that at least two others remain), an annotator's label
    is compared with the plurality label of the OTHER annotators on that item; leaving the
    annotator out keeps their own label from voting for itself (with it, a lone dissenter
    among three would still agree with "the majority" whenever the others split). Items where
    the others' top label is tied are skipped (``others_tied``). Per annotator:

    - ``labels``: their labels (distinct items); ``n``: those on items with ``>= min_labels``
      labels; ``compared = n - others_tied``;
    - ``agreement``: share of compared items where their label equals the others' majority;
    - ``cohen_kappa``: :func:`cohen_kappa` between their labels and those majorities.

    Rates are None when nothing was compared (or kappa undefined). Every annotator seen is in
    the result, in order of first appearance.
    """
    if min_labels < 2:
        raise ValueError(f"min_labels must be >= 2, got {min_labels}")
    items: dict[Hashable, dict[A, Hashable]] = {}
    for item, annotator, value in labels:
        items.setdefault(item, {})[annotator] = value
    seen: dict[A, int] = {}
    for votes in items.values():
        for annotator in votes:
            seen[annotator] = seen.get(annotator, 0) + 1
    n = dict.fromkeys(seen, 0)
    tied = dict.fromkeys(seen, 0)
    pairs: dict[A, list[tuple[Hashable, Hashable]]] = {a: [] for a in seen}
    for votes in items.values():
        if len(votes) < min_labels:
            continue
        counts = Counter(votes.values())
        for annotator, own in votes.items():
            n[annotator] += 1
            counts[own] -= 1
            top = counts.most_common(2)
            if len(top) > 1 and top[0][1] == top[1][1]:
                tied[annotator] += 1
            else:
                pairs[annotator].append((own, top[0][0]))
            counts[own] += 1
    out: dict[A, dict[str, Any]] = {}
    for annotator in seen:
        compared = pairs[annotator]
        agree = sum(a == b for a, b in compared)
        out[annotator] = {
            "labels": seen[annotator],
            "n": n[annotator],
            "compared": len(compared),
            "others_tied": tied[annotator],
            "agreement": agree / len(compared) if compared else None,
            "cohen_kappa": cohen_kappa(compared),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Position bias
# ---------------------------------------------------------------------------------------------


def position_bias(choices: Iterable[tuple[A, bool]],
                  level: float = 0.95) -> dict[A, dict[str, Any]]:
    """Per annotator, how often the response shown first was chosen.

    ``choices``: ``(annotator_id, chose_first_shown)`` for pairwise labels with a winner (the
    caller leaves ties out). Per annotator, with ``k`` first-shown choices out of ``n``:

    - ``n``, ``first = k``, ``rate = k / n``;
    - ``ci``: the Wilson score interval of ``rate`` at ``level`` (default 95%;
      :func:`prefkit.evaluate.winrate.wilson_interval`, Wilson 1927);
    - ``p_value``: two-sided exact binomial test of ``rate = 0.5`` (``scipy.stats.binomtest``;
      the probability under Binomial(n, 1/2) of outcomes no more likely than ``k``).

    With many annotators some small p-values are expected by chance (about 1 in 20 below 0.05):
    adjust (e.g. Holm) before flagging people. In order of first appearance.
    """
    from scipy.stats import binomtest

    from prefkit.evaluate.winrate import wilson_interval

    counts: dict[A, list[int]] = {}
    for annotator, first in choices:
        if not isinstance(first, bool | np.bool_) and first not in (0, 1):
            raise TypeError(f"chose_first_shown must be a bool, got {first!r}")
        c = counts.setdefault(annotator, [0, 0])
        c[0] += 1
        c[1] += bool(first)
    out: dict[A, dict[str, Any]] = {}
    for annotator, (n, k) in counts.items():
        out[annotator] = {
            "n": n,
            "first": k,
            "rate": k / n,
            "ci": wilson_interval(k, n, level=level),
            "p_value": float(binomtest(k, n, 0.5).pvalue),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------

LabelTime = float | datetime | tuple[float | datetime, float | None]


def _seconds(t: float | datetime) -> float:
    if isinstance(t, datetime):
        return t.timestamp()
    x = float(t)
    if not math.isfinite(x):
        raise ValueError(f"created_at must be finite, got {t!r}")
    return x


def labels_per_hour(labels_by_annotator: Mapping[A, Iterable[LabelTime]],
                    gap_s: float = SESSION_GAP_S,
                    default_label_s: float | None = None) -> dict[A, dict[str, Any]]:
    """Labels per active hour for each annotator.

    ``labels_by_annotator``: annotator -> their labels, each ``created_at`` (epoch seconds or a
    ``datetime``: when the label was submitted) or ``(created_at, seconds_spent)`` with
    ``seconds_spent`` the time the app measured on that label (None or NaN: unknown). Rule:

    1. Sort an annotator's labels by ``created_at``; a gap of more than ``gap_s`` (default
       600 s = 10 minutes) between consecutive labels starts a new session.
    2. A session's active time is ``last - first`` (which covers the work on every label but
       its first) plus the time of its first label: its ``seconds_spent`` if given, else
       ``default_label_s``, else the annotator's median gap between consecutive labels within
       sessions (0 if they have none). That label time is capped at ``gap_s``: time beyond the
       idle threshold is not counted. So a session with one label counts that label's time.
    3. ``labels_per_hour = labels / (active_seconds / 3600)``; None when no active time.

    Returns per annotator ``{"labels", "sessions", "active_seconds", "labels_per_hour"}``, in
    the mapping's order.
    """
    if not gap_s > 0:
        raise ValueError(f"gap_s must be > 0, got {gap_s}")
    out: dict[A, dict[str, Any]] = {}
    for annotator, entries in labels_by_annotator.items():
        rows: list[tuple[float, float | None]] = []
        for entry in entries:
            if isinstance(entry, tuple):
                t, spent = entry
                ok = spent is not None and math.isfinite(float(spent))
                rows.append((_seconds(t), float(spent) if ok else None))
            else:
                rows.append((_seconds(entry), None))
        rows.sort(key=lambda row: row[0])
        sessions: list[list[tuple[float, float | None]]] = []
        gaps: list[float] = []
        for row in rows:
            if sessions and row[0] - sessions[-1][-1][0] <= gap_s:
                gaps.append(row[0] - sessions[-1][-1][0])
                sessions[-1].append(row)
            else:
                sessions.append([row])
        fallback = default_label_s if default_label_s is not None else (
            float(np.median(gaps)) if gaps else 0.0)
        active = 0.0
        for session in sessions:
            spent = session[0][1]
            first = fallback if spent is None else spent
            active += session[-1][0] - session[0][0] + min(max(first, 0.0), gap_s)
        out[annotator] = {
            "labels": len(rows),
            "sessions": len(sessions),
            "active_seconds": active,
            "labels_per_hour": len(rows) * 3600.0 / active if active > 0 else None,
        }
    return out


__all__ = [
    "LEVELS",
    "SESSION_GAP_S",
    "cohen_kappa",
    "fleiss_kappa",
    "krippendorff_alpha",
    "krippendorff_alpha_interval",
    "krippendorff_alpha_nominal",
    "krippendorff_alpha_ordinal",
    "labels_per_hour",
    "position_bias",
    "vs_majority",
]
