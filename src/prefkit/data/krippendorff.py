"""Krippendorff's alpha: chance-corrected agreement of any number of annotators with missing
labels, at the nominal, ordinal and interval levels (Krippendorff 2011, "Computing
Krippendorff's alpha-reliability", https://repository.upenn.edu/asc_papers/43).

Pure functions on plain Python data. They live in ``data`` because the data layer's own
statistics use them (``prefkit data stats``: the agreement of a feedback file's annotators);
:mod:`prefkit.evaluate.agreement` re-exports them beside the other agreement measures.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

__all__ = ["LEVELS", "Level", "is_present", "krippendorff_alpha", "krippendorff_alpha_interval",
           "krippendorff_alpha_nominal", "krippendorff_alpha_ordinal"]

Level = Literal["nominal", "ordinal", "interval"]
LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval")


def is_present(value: Any) -> bool:
    """False for a missing label: None or a float NaN."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> float:
    if not isinstance(value, numbers.Real):
        raise TypeError(f"ordinal and interval labels must be numbers, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"labels must be finite numbers, got {value!r}")
    return x


# ---------------------------------------------------------------------------------------------
# Krippendorff's alpha
# ---------------------------------------------------------------------------------------------


def krippendorff_alpha_nominal(units: Iterable[Mapping[Hashable, int]]) -> float | None:
    """Krippendorff's alpha for nominal data from per-item category counts.

    ``units`` yields, per item ``u``, ``{category: n_uc}``; only items with
    ``m_u = sum_c n_uc >= 2`` are pairable. With ``n_c = sum_u n_uc`` and ``n = sum_c n_c``::

        alpha = 1 - D_o / D_e
        D_o = (1 / n) * sum_u (m_u^2 - sum_c n_uc^2) / (m_u - 1)     # observed disagreement
        D_e = (n^2 - sum_c n_c^2) / (n (n - 1))                      # expected disagreement

    (the coincidence-matrix form ``D_o = (1/n) sum_{c != k} o_ck``, ``D_e = 1/(n(n-1))
    sum_{c != k} n_c n_k`` with ``o_ck = sum_u n_uc n_uk / (m_u - 1)``; Krippendorff 2011,
    section C). Returns None when undefined (fewer than 2 pairable values, or every value in
    one category: ``D_e = 0``).
    """
    observed = 0.0
    totals: dict[Hashable, int] = {}
    n = 0
    for counts in units:
        m = sum(counts.values())
        if m < 2:
            continue
        n += m
        observed += (m * m - sum(c * c for c in counts.values())) / (m - 1)
        for category, c in counts.items():
            totals[category] = totals.get(category, 0) + c
    if n < 2:
        return None
    expected = n * n - sum(c * c for c in totals.values())
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def krippendorff_alpha_interval(units: Iterable[Sequence[float]]) -> float | None:
    """Krippendorff's alpha for interval data (difference ``delta(c, k) = (c - k)^2``).

    For items ``u`` with ``m_u >= 2`` values ``v_ui`` and all pairable values ``v`` (``n`` of
    them)::

        alpha = 1 - (n - 1) * sum_u [ sum_{i != j} (v_ui - v_uj)^2 / (m_u - 1) ]
                            / sum_{i != j} (v_i - v_j)^2

    (Krippendorff 2011, section E). Computed with ``sum_{i != j} (x_i - x_j)^2 = 2 m SS`` where
    ``SS`` is the sum of squared deviations from the mean, accumulated per item with Welford's
    update and pooled with Chan et al.'s formula, on values shifted by the first pairable one
    (no cancellation for large offsets: 1e9 + small integers stay exact). None when
    undefined: fewer than 2 pairable values, or no variation (the pooled standard deviation is
    below ``1e-10`` times the mean's magnitude, or zero).
    """
    observed = 0.0
    n, mean, ss = 0, 0.0, 0.0  # pooled over pairable values, shifted by the first one
    shift: float | None = None
    for values in units:
        m = len(values)
        if m < 2:
            continue
        if shift is None:
            shift = values[0]
        u_mean, u_ss = 0.0, 0.0
        for k, v in enumerate(values, 1):
            delta = (v - shift) - u_mean
            u_mean += delta / k
            u_ss += delta * ((v - shift) - u_mean)
        observed += 2 * m * u_ss / (m - 1)
        total = n + m
        delta = u_mean - mean
        ss += u_ss + delta * delta * n * m / total
        mean += delta * m / total
        n = total
    if shift is None or ss <= 0 or ss <= 1e-20 * n * (mean + shift) ** 2:  # n < 2: shift None
        return None
    return 1.0 - (n - 1) * observed / (2 * n * ss)


def krippendorff_alpha_ordinal(units: Iterable[Sequence[float]]) -> float | None:
    """Krippendorff's alpha for ordinal data (Krippendorff 2011, section D).

    The difference of two values ``c <= k`` depends only on their ranks among the pairable
    values (those in items with ``m_u >= 2``), through the marginal counts ``n_g`` of the
    distinct values ``g`` in order::

        delta(c, k) = ( sum_{g=c}^{k} n_g - (n_c + n_k) / 2 )^2

    and alpha = 1 - D_o / D_e as for the other levels, with the coincidences ``o_ck`` and
    ``n_c n_k / (n - 1)``. Since ``sum_{g=c}^{k} n_g - (n_c + n_k)/2 = r_k - r_c`` with the
    mid-rank ``r_c = sum_{g<c} n_g + n_c / 2``, ordinal alpha is interval alpha
    (:func:`krippendorff_alpha_interval`) on the mid-ranks, which is how it is computed
    (exactly, in O(n log n)). Only the order of the values matters. None when undefined (fewer
    than 2 pairable values, or a single distinct value).
    """
    pairable = [[_number(v) for v in values] for values in units if len(values) >= 2]
    counts = Counter(v for values in pairable for v in values)
    midrank: dict[float, float] = {}
    below = 0
    for value in sorted(counts):
        midrank[value] = below + counts[value] / 2
        below += counts[value]
    return krippendorff_alpha_interval([[midrank[v] for v in values] for values in pairable])


def krippendorff_alpha(units: Iterable[Iterable[Any]], level: Level = "nominal") -> float | None:
    """Krippendorff's alpha of per-item label lists.

    ``units``: one list per item with the labels it received from different annotators
    (``None`` / NaN = missing, dropped). Items with fewer than 2 labels are not pairable and
    are ignored. ``level``:

    - ``"nominal"``: any hashable labels; differences 0 (equal) or 1
      (:func:`krippendorff_alpha_nominal`);
    - ``"ordinal"``: numbers, only their order matters (:func:`krippendorff_alpha_ordinal`);
    - ``"interval"``: numbers, squared differences (:func:`krippendorff_alpha_interval`).

    ``alpha = 1 - D_o / D_e`` (observed over expected disagreement): 1 is perfect agreement,
    0 agreement at chance level, negative systematic disagreement. None when undefined (fewer
    than two pairable labels, or no variation among them). Reference: Krippendorff (2011),
    "Computing Krippendorff's alpha-reliability".
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    present = [[v for v in values if is_present(v)] for values in units]
    pairable = [values for values in present if len(values) >= 2]
    if level == "nominal":
        return krippendorff_alpha_nominal(Counter(values) for values in pairable)
    numeric = [[_number(v) for v in values] for values in pairable]
    if level == "ordinal":
        return krippendorff_alpha_ordinal(numeric)
    return krippendorff_alpha_interval(numeric)
