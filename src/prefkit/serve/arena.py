"""Arena campaigns: anonymous battles among pre-generated model outputs, chosen by the arena
engine's matchmaking, and the live leaderboard.

An arena campaign's items are its *pool*: prompts with every model's output. Each battle is a
new item drawn from it -- the models by :func:`prefkit.rank.matchmaking.match_from_counts` on
the campaign's votes so far (information gain by default), then a pool prompt that has an output
from each of them (or, when none has, a random prompt and a match among its models). The voter
sees the outputs in a random order without model names; a pairwise vote is stored as a
:class:`~prefkit.data.records.Battle`, a K-wise one as a Ranking with ``metadata["models"]``.

The votes so far are kept per campaign in this process and brought up to date from the labels
table at every draw (labels newer than the last one seen; a full re-read when a label was
undone), so several server processes agree.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..data.app_schema import ITEMS, LABELS
from ..data.store import RECORDS

if TYPE_CHECKING:
    from ..data.store import FeedbackStore
    from .service import Campaign, Person


@dataclass
class _Votes:
    """One campaign's models, pool and vote tallies (pairwise decomposition of every vote)."""

    models: list[str]
    pool: list[tuple[int, dict[str, int]]]  # (item id, model -> response index)
    wins: np.ndarray  # wins[i, j]: times i was ranked above j
    ties: np.ndarray
    last_label: int = 0
    n_labels: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.code = {m: i for i, m in enumerate(self.models)}

    def add(self, record: dict[str, Any]) -> None:
        code = self.code
        if record["kind"] == "battle":
            a, b = code[record["model_a"]], code[record["model_b"]]
            outcome = record["outcome"]
            if outcome == "a":
                self.wins[a, b] += 1
            elif outcome == "b":
                self.wins[b, a] += 1
            else:
                self.ties[a, b] += 1
                self.ties[b, a] += 1
            return
        models = record["metadata"]["models"]
        tiers = [[code[models[i]] for i in tier] for tier in record["tiers"]]
        for t, tier in enumerate(tiers):
            for i in tier:
                for j in tier:
                    if i != j:
                        self.ties[i, j] += 0.5
                for lower in tiers[t + 1:]:
                    for j in lower:
                        self.wins[i, j] += 1

    def counts(self):
        from ..rank import PairCounts

        n = len(self.models)
        i, j = np.triu_indices(n, 1)
        return PairCounts(n, i, j, self.wins[i, j], self.wins[j, i], self.ties[i, j])


_CACHE: dict[tuple[str, int], _Votes] = {}
_CACHE_LOCK = threading.Lock()


def _load_pool(conn: Connection, campaign_id: int) -> tuple[list[str], list]:
    rows = conn.execute(sa.select(ITEMS.c.id, ITEMS.c.payload).where(
        ITEMS.c.campaign_id == campaign_id, ITEMS.c.role == "pool")
        .order_by(ITEMS.c.position)).all()
    models: dict[str, None] = {}
    pool = []
    for item_id, payload in rows:
        names = orjson.loads(payload)["models"]
        models.update(dict.fromkeys(names))
        pool.append((item_id, {m: i for i, m in enumerate(names)}))
    return list(models), pool


def _votes(conn: Connection, url: str, campaign_id: int) -> _Votes:
    key = (url, campaign_id)
    with _CACHE_LOCK:
        votes = _CACHE.get(key)
        if votes is None:
            models, pool = _load_pool(conn, campaign_id)
            n = len(models)
            votes = _CACHE[key] = _Votes(models, pool, np.zeros((n, n)), np.zeros((n, n)))
    with votes.lock:
        upto = conn.execute(sa.select(sa.func.count()).where(
            LABELS.c.campaign_id == campaign_id, LABELS.c.id <= votes.last_label)).scalar_one()
        if upto != votes.n_labels:  # a label was undone: count again from the start
            votes.wins[:] = 0
            votes.ties[:] = 0
            votes.last_label = votes.n_labels = 0
        new = conn.execute(
            sa.select(LABELS.c.id, RECORDS.c.payload)
            .join(RECORDS, RECORDS.c.id == LABELS.c.record_id)
            .where(LABELS.c.campaign_id == campaign_id, LABELS.c.id > votes.last_label)
            .order_by(LABELS.c.id)).all()
        for label_id, payload in new:
            votes.add(orjson.loads(payload))
            votes.last_label = label_id
        votes.n_labels += len(new)
    return votes


def draw_battle(conn: Connection, campaign: Campaign, person: Person,
                rng: np.random.Generator) -> tuple[int | None, int]:
    """Insert the next battle as an item of ``campaign`` (inside the caller's transaction);
    returns its id and number of responses (None when the pool has fewer than K models)."""
    from ..rank.matchmaking import match_from_counts

    votes = _votes(conn, str(conn.engine.url), campaign.id)
    k = campaign.settings.k
    if len(votes.models) < k or not votes.pool:
        return None, 0
    chosen, _, _ = match_from_counts(votes.counts(), campaign.settings.matchmaking, k, rng)
    names = [votes.models[i] for i in chosen]
    covering = [p for p in votes.pool if all(m in p[1] for m in names)]
    if covering:
        item_id, index = covering[int(rng.integers(len(covering)))]
    else:
        usable = [p for p in votes.pool if len(p[1]) >= k]
        if not usable:
            return None, 0
        item_id, index = usable[int(rng.integers(len(usable)))]
        present = [votes.code[m] for m in index]
        sub = _sub_counts(votes, present)
        picked, _, _ = match_from_counts(sub, campaign.settings.matchmaking, k, rng)
        names = [votes.models[present[i]] for i in picked]
    pool_item = orjson.loads(conn.execute(sa.select(ITEMS.c.payload).where(
        ITEMS.c.id == item_id)).scalar_one())
    position = conn.execute(sa.select(sa.func.max(ITEMS.c.position)).where(
        ITEMS.c.campaign_id == campaign.id)).scalar_one() + 1
    payload = {"prompt": pool_item["prompt"],
               "responses": [pool_item["responses"][index[m]] for m in names],
               "models": names, "prompt_id": pool_item.get("prompt_id"), "pool_item": item_id}
    new_id = conn.execute(sa.insert(ITEMS).values(
        campaign_id=campaign.id, position=position, role="item",
        payload=orjson.dumps(payload).decode(), source_id=None, n_labels=0, full=False)
        .returning(ITEMS.c.id)).scalar_one()
    return new_id, k


def _sub_counts(votes: _Votes, present: list[int]):
    from ..rank import PairCounts

    idx = np.asarray(present)
    wins, ties = votes.wins[np.ix_(idx, idx)], votes.ties[np.ix_(idx, idx)]
    i, j = np.triu_indices(len(idx), 1)
    return PairCounts(len(idx), i, j, wins[i, j], wins[j, i], ties[i, j])


def arena_records(store: FeedbackStore, campaign: Campaign) -> list[dict[str, Any]]:
    """The campaign's votes as native record dicts, in the order they were cast."""
    rows = store.read(lambda conn: conn.execute(
        sa.select(RECORDS.c.payload).join(LABELS, LABELS.c.record_id == RECORDS.c.id)
        .where(LABELS.c.campaign_id == campaign.id).order_by(LABELS.c.id)).scalars().all())
    return [orjson.loads(p) for p in rows]


def leaderboard(store: FeedbackStore, campaign: Campaign, *, ci: str = "bootstrap",
                bootstrap: int = 100, seed: int = 0) -> dict[str, Any] | None:
    """The campaign's leaderboard exactly as ``prefkit arena rank`` computes it on the exported
    votes (Bradley-Terry for pairwise battles, Plackett-Luce for K-wise), with its defaults;
    None before the first vote."""
    from ..leaderboard import rank_votes_file

    records = arena_records(store, campaign)
    if not records:
        return None
    with tempfile.TemporaryDirectory(prefix="prefkit-arena-") as tmp:
        path = Path(tmp) / "votes.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        method = "bt" if campaign.settings.k == 2 else "pl"
        return rank_votes_file(str(path), method=method, ci=ci, bootstrap=bootstrap,
                               seed=seed)
