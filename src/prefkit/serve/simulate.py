"""Simulated people working through a campaign the way people do in the app: each asks for
their next item, sees its responses in the display order the server chose, and answers with a
lab annotator (:class:`~prefkit.lab.annotators.SimulatedAnnotator`: a gold reward plus noise,
position and length biases). The labels go through the same service calls as the app's
(leases, overlap, idempotency), so a simulated campaign tests the rules and shows what the
admin statistics recover -- e.g. the first-shown rate of an annotator with a position bias.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from ..data.records import Outcome
from ..data.store import FeedbackStore
from . import service as svc

CHOICE_OF = {Outcome.A: "first", Outcome.B: "second", Outcome.TIE: "tie",
             Outcome.BOTH_BAD: "both_bad"}


def simulated_answer(campaign: svc.Campaign, assignment: svc.Assignment, annotator: Any
                     ) -> dict[str, Any]:
    """``annotator``'s answer to the item as shown (pairwise/arena pairs: ``compare`` on the
    displayed order; ranking/K-wise arena: ``rank``)."""
    shown = assignment.responses
    if len(shown) == 2 and campaign.task in ("pairwise", "arena"):
        record = annotator.compare(assignment.prompt, shown[0], shown[1])
        return {"choice": CHOICE_OF[record.outcome]}
    if campaign.task in ("ranking", "arena"):
        return {"tiers": annotator.rank(assignment.prompt, shown).tiers}
    raise ValueError(f"simulated people answer pairwise, ranking and arena campaigns, not "
                     f"{campaign.task}")


def simulate_campaign(store: FeedbackStore, campaign: svc.Campaign,
                      people: Sequence[tuple[svc.Person, Any]], *,
                      max_labels: int | None = None, seed: int = 0) -> int:
    """Let ``people`` (``(person, simulated annotator)``) label in turns until nothing is left
    for any of them (or ``max_labels`` labels); returns the number of labels stored. Display
    orders come from ``seed`` (a rerun on a fresh store gives the same labels)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    active = list(people)
    stored = 0
    while active and (max_labels is None or stored < max_labels):
        for entry in list(active):
            person, annotator = entry
            assignment = svc.next_assignment(store, campaign, person, rng=rng)
            if assignment is None:
                active.remove(entry)
                continue
            answer = simulated_answer(campaign, assignment, annotator)
            svc.submit_label(store, campaign, person, assignment.id, answer, uuid.uuid4().hex)
            stored += 1
            if max_labels is not None and stored >= max_labels:
                break
    return stored
