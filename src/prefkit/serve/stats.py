"""A campaign's admin statistics: progress, agreement, each annotator against the others'
majority, position bias and labels per hour (maths in :mod:`prefkit.evaluate.agreement`).

What agreement is computed on, by task: pairwise labels by their outcome in the item's own
order (``a`` / ``b`` / ``tie`` / ``both_bad``: the display order is undone first); binary labels
by their yes/no; rankings by the order they imply on every pair of responses (one unit per
item and pair); ratings by each attribute's score (interval and ordinal alpha per attribute).
Critiques and arena battles (one vote per battle) have no overlap to agree on.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from ..data.store import FeedbackStore
from ..evaluate.agreement import (
    fleiss_kappa,
    krippendorff_alpha,
    labels_per_hour,
    position_bias,
    vs_majority,
)
from . import service as svc
from .tasks import chose_first_shown


def _nominal_units(labels: list[svc.StoredLabel]) -> list[tuple[Any, str, Any]]:
    """``(unit, annotator, value)`` for the nominal statistics (see the module docstring)."""
    out = []
    for label in labels:
        record = label.record
        if record.kind == "comparison":
            out.append((label.item_id, label.annotator, record.outcome.value))
        elif record.kind == "binary":
            out.append((label.item_id, label.annotator, record.desirable))
        elif record.kind == "ranking":
            score = record.tier_scores
            k = len(record.responses)
            for i in range(k):
                for j in range(i + 1, k):
                    si, sj = score.get(i), score.get(j)
                    if si is None or sj is None:
                        continue
                    value = "first" if si > sj else ("second" if sj > si else "tie")
                    out.append(((label.item_id, i, j), label.annotator, value))
    return out


def _grouped(triples: list[tuple[Any, str, Any]]) -> list[list[Any]]:
    units: dict[Any, list[Any]] = defaultdict(list)
    for unit, _, value in triples:
        units[unit].append(value)
    return list(units.values())


def campaign_stats(store: FeedbackStore, campaign: svc.Campaign) -> dict[str, Any]:
    """Everything the admin page and ``GET /api/campaigns/{id}/stats`` show."""
    labels = svc.campaign_labels(store, campaign)
    progress = svc.progress(store, campaign)
    triples = _nominal_units(labels)
    agreement: dict[str, Any] = {}
    if triples:
        units = _grouped(triples)
        fleiss = fleiss_kappa(units)
        agreement.update({
            "krippendorff_alpha_nominal": krippendorff_alpha(units, "nominal"),
            "fleiss_kappa": fleiss["kappa"],
            "fleiss_items_used": fleiss["items_used"],
            "fleiss_raters_per_item": fleiss["raters_per_item"],
        })
    ratings = [label for label in labels if label.record.kind == "rating"]
    for attribute in campaign.settings.scales if ratings else ():
        units = _grouped([(label.item_id, label.annotator, label.record.scores[attribute])
                          for label in ratings if attribute in label.record.scores])
        agreement[f"krippendorff_alpha_interval[{attribute}]"] = krippendorff_alpha(
            units, "interval")
        agreement[f"krippendorff_alpha_ordinal[{attribute}]"] = krippendorff_alpha(
            units, "ordinal")
    majority = vs_majority(triples) if triples else {}
    bias = position_bias([(label.annotator, first) for label in labels
                          if (first := chose_first_shown(label.record)) is not None])
    times: dict[str, list] = defaultdict(list)
    for label in labels:
        times[label.annotator].append((label.created_at, label.seconds))
    throughput = labels_per_hour(times)
    rows = []
    for name in dict.fromkeys(label.annotator for label in labels):
        spent = [label.seconds for label in labels
                 if label.annotator == name and label.seconds is not None]
        m, b = majority.get(name, {}), bias.get(name, {})
        rows.append({
            "name": name, "labels": throughput[name]["labels"],
            "labels_per_hour": throughput[name]["labels_per_hour"],
            "median_seconds": statistics.median(spent) if spent else None,
            "majority_agreement": m.get("agreement"), "majority_items": m.get("compared"),
            "majority_kappa": m.get("cohen_kappa"),
            "first_shown_rate": b.get("rate"), "first_shown_n": b.get("n"),
            "first_shown_ci": list(b["ci"]) if b else None,
            "first_shown_p_value": b.get("p_value"),
        })
    return {"campaign": campaign.summary(), "progress": progress, "agreement": agreement,
            "annotators": rows}
