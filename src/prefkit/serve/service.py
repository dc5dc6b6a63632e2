"""What the annotation app does to the store, one transaction per operation.

Every function takes a :class:`~prefkit.data.store.FeedbackStore` and runs one write transaction
(``FeedbackStore.transaction``: SQLite takes its write lock at BEGIN; PostgreSQL serializes the
operations of one campaign with an advisory lock), so the rules below hold with any number of
server processes and threads:

- an item is leased to one annotator at a time per free slot: it is handed out only while
  ``labels + unexpired leases < overlap``; a lease expires after ``lease_seconds``;
- nobody gets an item twice (one assignment row per item and annotator, a unique constraint);
- no item gets more labels than its overlap (checked when a label is stored, in the same
  transaction that counts it);
- a submission carries an idempotency key: a retry finds the label it stored the first time;
- the label becomes a feedback record in the same transaction (the app and the store never
  disagree), with the display order, campaign, item and seconds spent in its metadata.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..data.app_schema import ANNOTATORS, ASSIGNMENTS, CAMPAIGNS, ITEMS, LABELS
from ..data.records import Annotator, AnnotatorKind, Record
from ..data.store import RECORDS, FeedbackStore
from .tasks import TaskSettings, to_record

ROLES = ("admin", "annotator")
_CAMPAIGN_LOCK = 0x7072_6566  # PostgreSQL advisory lock class for one campaign's operations


class ServeError(ValueError):
    """A request the rules refuse: ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------------------------------------
# Annotators and tokens
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A signed-in annotator or admin."""

    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def annotator(self) -> Annotator:
        return Annotator(self.name, AnnotatorKind.HUMAN)


def hash_token(token: str) -> str:
    """SHA-256 of a token (tokens are 256 random bits: a slow hash adds nothing)."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_annotator(store: FeedbackStore, name: str, role: str = "annotator") -> str:
    """Create an annotator (or admin) and return their token -- shown once, stored hashed.
    A revoked name gets a new token (re-activated)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ServeError("an annotator name is 1-200 characters", 400)
    if role not in ROLES:
        raise ServeError(f"role {role!r}: expected admin or annotator", 400)
    token = secrets.token_urlsafe(32)

    def run(conn: Connection) -> None:
        row = conn.execute(sa.select(ANNOTATORS.c.id, ANNOTATORS.c.revoked_at)
                           .where(ANNOTATORS.c.name == name)).first()
        if row is not None and row.revoked_at is None:
            raise ServeError(f"annotator {name!r} exists (revoke them first to issue a new "
                             "token)")
        if row is not None:
            conn.execute(sa.update(ANNOTATORS).where(ANNOTATORS.c.id == row.id).values(
                token_hash=hash_token(token), role=role, revoked_at=None))
        else:
            conn.execute(sa.insert(ANNOTATORS).values(
                name=name, role=role, token_hash=hash_token(token), created_at=_now()))

    store.transaction(run)
    return token


def revoke_annotator(store: FeedbackStore, name: str) -> None:
    """Revoke a token at once (their labels stay; their leases are released)."""
    def run(conn: Connection) -> None:
        row = conn.execute(sa.select(ANNOTATORS.c.id).where(
            ANNOTATORS.c.name == name, ANNOTATORS.c.revoked_at.is_(None))).first()
        if row is None:
            raise ServeError(f"no active annotator {name!r}", 404)
        conn.execute(sa.update(ANNOTATORS).where(ANNOTATORS.c.id == row.id).values(
            revoked_at=_now()))
        _PEOPLE.clear()
        conn.execute(sa.update(ASSIGNMENTS).where(
            ASSIGNMENTS.c.annotator_id == row.id, ASSIGNMENTS.c.state == "active").values(
            state="released"))

    store.transaction(run)


CACHE_SECONDS = 2.0
"""How long a token's person and a campaign's settings are reused without reading the store
again. A revocation or a closed campaign takes effect at once in the process that made it, and
within this many seconds in other server processes on the same store."""
UNKNOWN = object()
""":func:`cached_person`'s answer when the cache does not know the token."""
_PEOPLE: dict[tuple[str, str], tuple[float, Person | None]] = {}
_CAMPAIGNS: dict[tuple[str, int | str], tuple[float, Campaign]] = {}


def cached_person(store: FeedbackStore, token: str) -> Person | None | object:
    """The person of ``token`` if :func:`authenticate` saw it less than
    :data:`CACHE_SECONDS` ago (None: an invalid token), else :data:`UNKNOWN`."""
    hit = _PEOPLE.get((store.url, hash_token(token)))
    return hit[1] if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS else UNKNOWN


def authenticate(store: FeedbackStore, token: str) -> Person | None:
    """The person a token belongs to, or None (unknown or revoked)."""
    if not token or len(token) > 200:
        return None
    digest = hash_token(token)
    row = store.read(lambda conn: conn.execute(
        sa.select(ANNOTATORS.c.id, ANNOTATORS.c.name, ANNOTATORS.c.role).where(
            ANNOTATORS.c.token_hash == digest, ANNOTATORS.c.revoked_at.is_(None))).first())
    person = None if row is None else Person(row.id, row.name, row.role)
    if len(_PEOPLE) > 10_000:
        _PEOPLE.clear()
    _PEOPLE[(store.url, digest)] = (time.monotonic(), person)
    return person


def list_annotators(store: FeedbackStore) -> list[dict[str, Any]]:
    rows = store.read(lambda conn: conn.execute(
        sa.select(ANNOTATORS.c.name, ANNOTATORS.c.role, ANNOTATORS.c.created_at,
                  ANNOTATORS.c.revoked_at).order_by(ANNOTATORS.c.id)).all())
    return [{"name": r.name, "role": r.role, "created_at": _aware(r.created_at).isoformat(),
             "revoked": r.revoked_at is not None} for r in rows]


# ---------------------------------------------------------------------------------------------
# Campaigns
# ---------------------------------------------------------------------------------------------


@dataclass
class Campaign:
    id: int
    name: str
    settings: TaskSettings
    overlap: int
    guidelines: str
    annotators: list[str] | None
    status: str

    @property
    def task(self) -> str:
        return self.settings.task

    def allows(self, person: Person) -> bool:
        return person.is_admin or self.annotators is None or person.name in self.annotators

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "task": self.task, "overlap": self.overlap,
                "status": self.status, "settings": self.settings.to_dict(),
                "annotators": self.annotators}


def _campaign(row: Any) -> Campaign:
    return Campaign(row.id, row.name, TaskSettings.from_dict(orjson.loads(row.settings)),
                    row.overlap, row.guidelines,
                    None if row.annotators is None else orjson.loads(row.annotators),
                    row.status)


def create_campaign(store: FeedbackStore, name: str, settings: TaskSettings,
                    items: list[dict[str, Any]], *, overlap: int = 1, guidelines: str = "",
                    annotators: list[str] | None = None) -> Campaign:
    """A campaign and its items (:func:`prefkit.serve.items.items_from_records`), in one
    transaction. Arena items are its pool of prompts with every model's output."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ServeError("a campaign name is 1-200 characters", 400)
    if overlap < 1:
        raise ServeError(f"overlap {overlap}: expected >= 1 label per item", 400)
    if not items:
        raise ServeError("a campaign needs at least one item", 400)
    role = "pool" if settings.task == "arena" else "item"
    overlap = 1 if settings.task == "arena" else overlap

    def run(conn: Connection) -> Campaign:
        if conn.execute(sa.select(CAMPAIGNS.c.id).where(CAMPAIGNS.c.name == name)).first():
            raise ServeError(f"a campaign named {name!r} exists")
        cid = conn.execute(sa.insert(CAMPAIGNS).values(
            name=name, task=settings.task, overlap=overlap, guidelines=guidelines,
            settings=_json(settings.to_dict()),
            annotators=None if annotators is None else _json(annotators), status="open",
            created_at=_now()).returning(CAMPAIGNS.c.id)).scalar_one()
        rows = [{"campaign_id": cid, "position": i, "role": role,
                 "payload": _json({k: v for k, v in item.items() if k != "source_id"}),
                 "source_id": item.get("source_id"), "n_labels": 0, "full": False}
                for i, item in enumerate(items)]
        for start in range(0, len(rows), 1000):
            conn.execute(sa.insert(ITEMS), rows[start:start + 1000])
        return Campaign(cid, name, settings, overlap, guidelines, annotators, "open")

    return store.transaction(run)


def cached_campaign(store: FeedbackStore, ref: int | str) -> Campaign | None:
    """The campaign :func:`get_campaign` read less than :data:`CACHE_SECONDS` ago, else None
    (reads nothing)."""
    hit = _CAMPAIGNS.get((store.url, ref))
    return hit[1] if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS else None


def get_campaign(store: FeedbackStore, ref: int | str) -> Campaign:
    """A campaign by id or name (:class:`ServeError` 404 when there is none); read again
    after :data:`CACHE_SECONDS`."""
    key = (store.url, ref)
    hit = _CAMPAIGNS.get(key)
    if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
        return hit[1]
    column = CAMPAIGNS.c.id if isinstance(ref, int) else CAMPAIGNS.c.name
    row = store.read(lambda conn: conn.execute(sa.select(CAMPAIGNS).where(column == ref)).first())
    if row is None:
        raise ServeError(f"no campaign {ref!r}", 404)
    campaign = _campaign(row)
    if len(_CAMPAIGNS) > 10_000:
        _CAMPAIGNS.clear()
    _CAMPAIGNS[key] = (time.monotonic(), campaign)
    return campaign


def list_campaigns(store: FeedbackStore, person: Person | None = None) -> list[Campaign]:
    rows = store.read(lambda conn: conn.execute(
        sa.select(CAMPAIGNS).order_by(CAMPAIGNS.c.id)).all())
    campaigns = [_campaign(r) for r in rows]
    return [c for c in campaigns if person is None or c.allows(person)]


def set_campaign_status(store: FeedbackStore, campaign: Campaign, status: str) -> None:
    if status not in ("open", "closed"):
        raise ServeError(f"status {status!r}: expected open or closed", 400)
    store.transaction(lambda conn: conn.execute(
        sa.update(CAMPAIGNS).where(CAMPAIGNS.c.id == campaign.id).values(status=status)))
    _CAMPAIGNS.clear()


# ---------------------------------------------------------------------------------------------
# Assignments
# ---------------------------------------------------------------------------------------------


@dataclass
class Assignment:
    """An item leased to an annotator: what to show them (responses in display order; never the
    models or anyone's labels)."""

    id: int
    campaign_id: int
    item_id: int
    prompt: Any
    responses: list[Any]
    lease_expires: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"assignment_id": self.id, "campaign_id": self.campaign_id,
                "item_id": self.item_id, "prompt": self.prompt, "responses": self.responses,
                "lease_expires": self.lease_expires.isoformat()}


def _lock_campaign(conn: Connection, campaign_id: int) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CAMPAIGN_LOCK, campaign_id)))


def _shown_view(conn: Connection, campaign_id: int, assignment_id: int, item_id: int,
               shown: str, lease_expires: datetime, payload: dict | None = None
               ) -> Assignment:
    if payload is None:
        payload = orjson.loads(conn.execute(sa.select(ITEMS.c.payload).where(
            ITEMS.c.id == item_id)).scalar_one())
    order = orjson.loads(shown)
    return Assignment(assignment_id, campaign_id, item_id, payload["prompt"],
                      [payload["responses"][i] for i in order], _aware(lease_expires))


def _check_open(campaign: Campaign, person: Person) -> None:
    if not campaign.allows(person):
        raise ServeError(f"campaign {campaign.name!r} is not assigned to {person.name}", 403)
    if campaign.status != "open":
        raise ServeError(f"campaign {campaign.name!r} is closed", 409)


def next_assignment(store: FeedbackStore, campaign: Campaign, person: Person, *,
                    rng: np.random.Generator | None = None) -> Assignment | None:
    """The annotator's current lease (renewed) or a new one; None when nothing is left for
    them. Arena campaigns draw a new battle (:mod:`prefkit.serve.arena`)."""
    _check_open(campaign, person)
    rng = rng or np.random.default_rng(secrets.randbits(64))

    def run(conn: Connection) -> Assignment | None:
        _lock_campaign(conn, campaign.id)
        return _lease(conn, campaign, person, rng)

    return store.transaction(run)


def _b(name: str) -> sa.BindParameter:
    return sa.bindparam(name)


class _Q:
    """The statements every label runs, built once (building a statement costs more than
    executing it on SQLite); parameters are bound by name at execution."""

    current = (sa.select(ASSIGNMENTS, ITEMS.c.n_labels)
               .join(ITEMS, ITEMS.c.id == ASSIGNMENTS.c.item_id)
               .where(ASSIGNMENTS.c.campaign_id == _b("b_campaign"),
                      ASSIGNMENTS.c.annotator_id == _b("b_person"),
                      ASSIGNMENTS.c.state == "active")
               .order_by(ASSIGNMENTS.c.id).limit(1))
    leases = (sa.select(sa.func.count()).select_from(ASSIGNMENTS)
              .where(ASSIGNMENTS.c.item_id == _b("b_item"), ASSIGNMENTS.c.state == "active",
                     ASSIGNMENTS.c.lease_expires > _b("b_now")))
    free = (sa.select(ITEMS.c.id, ITEMS.c.payload)
            .where(ITEMS.c.campaign_id == _b("b_campaign"), ITEMS.c.role == "item",
                   ITEMS.c.full.is_(False),
                   ~sa.exists(sa.select(ASSIGNMENTS.c.id).where(
                       ASSIGNMENTS.c.item_id == ITEMS.c.id,
                       ASSIGNMENTS.c.annotator_id == _b("b_person"))),
                   ITEMS.c.n_labels + sa.select(sa.func.count()).select_from(ASSIGNMENTS)
                   .where(ASSIGNMENTS.c.item_id == ITEMS.c.id,
                          ASSIGNMENTS.c.state == "active",
                          ASSIGNMENTS.c.lease_expires > _b("b_now")).scalar_subquery()
                   < _b("b_overlap"))
            .order_by(ITEMS.c.position).limit(1))
    lease = (sa.insert(ASSIGNMENTS).values(
        campaign_id=_b("b_campaign"), item_id=_b("b_item"), annotator_id=_b("b_person"),
        shown=_b("b_shown"), state="active", leased_at=_b("b_now"),
        lease_expires=_b("b_expires")).returning(ASSIGNMENTS.c.id))
    renew = (sa.update(ASSIGNMENTS).where(ASSIGNMENTS.c.id == _b("b_assignment"))
             .values(lease_expires=_b("b_expires")))
    set_state = (sa.update(ASSIGNMENTS).where(ASSIGNMENTS.c.id == _b("b_assignment"))
                 .values(state=_b("b_state")))
    by_key = sa.select(LABELS).where(LABELS.c.idempotency_key == _b("b_key"))
    # a submission's three reads in one: the assignment, its item, and the label stored under
    # the idempotency key if any (no assignment row: ``by_key`` alone tells a replay from a 404)
    submitted = (sa.select(ASSIGNMENTS.c.id, ASSIGNMENTS.c.annotator_id, ASSIGNMENTS.c.state,
                           ASSIGNMENTS.c.shown, ITEMS.c.id.label("item_id"), ITEMS.c.position,
                           ITEMS.c.payload, ITEMS.c.source_id, ITEMS.c.n_labels,
                           LABELS.c.id.label("seen_id"),
                           LABELS.c.annotator_id.label("seen_annotator_id"),
                           LABELS.c.assignment_id.label("seen_assignment_id"),
                           LABELS.c.record_id.label("seen_record_id"))
                 .select_from(ASSIGNMENTS.join(ITEMS, ITEMS.c.id == ASSIGNMENTS.c.item_id)
                              .outerjoin(LABELS, LABELS.c.idempotency_key == _b("b_key")))
                 .where(ASSIGNMENTS.c.id == _b("b_assignment"),
                        ASSIGNMENTS.c.campaign_id == _b("b_campaign")))
    count = (sa.update(ITEMS).where(ITEMS.c.id == _b("b_item"))
             .values(n_labels=_b("b_labels"), full=_b("b_full")))
    label = (sa.insert(LABELS).values(
        campaign_id=_b("b_campaign"), item_id=_b("b_item"), annotator_id=_b("b_person"),
        assignment_id=_b("b_assignment"), record_id=_b("b_record"),
        idempotency_key=_b("b_key"), answer=_b("b_answer"), seconds=_b("b_seconds"),
        created_at=_b("b_now")).returning(LABELS.c.id))


def _lease(conn: Connection, campaign: Campaign, person: Person, rng: np.random.Generator, *,
           idle: bool = False) -> Assignment | None:
    """:func:`next_assignment` inside the caller's (campaign-locked) transaction. ``idle``: the
    caller knows the annotator holds no active lease in the campaign, so none is looked up (a
    label was just stored for their active one: a new lease is only made when they hold none,
    and an undo drops the active one before it re-activates another, so they hold at most
    one)."""
    now = _now()
    expires = now + timedelta(seconds=campaign.settings.lease_seconds)
    current = None if idle else conn.execute(_Q.current, {"b_campaign": campaign.id,
                                                          "b_person": person.id}).first()
    if current is not None:
        others = conn.execute(_Q.leases, {"b_item": current.item_id, "b_now": now}).scalar_one()
        mine = 1 if _aware(current.lease_expires) > now else 0
        if current.n_labels + others - mine < campaign.overlap:
            conn.execute(_Q.renew, {"b_assignment": current.id, "b_expires": expires})
            return _shown_view(conn, campaign.id, current.id, current.item_id,
                               current.shown, expires)
        conn.execute(_Q.set_state, {"b_assignment": current.id, "b_state": "expired"})
    if campaign.task == "arena":
        from .arena import draw_battle

        item_id, n_responses = draw_battle(conn, campaign, person, rng)
        if item_id is None:
            return None
        payload = None
    else:
        found = conn.execute(_Q.free, {"b_campaign": campaign.id, "b_person": person.id,
                                       "b_now": now, "b_overlap": campaign.overlap}).first()
        if found is None:
            return None
        item_id, payload = found.id, orjson.loads(found.payload)
        n_responses = len(payload["responses"])
    shown = _json([int(i) for i in rng.permutation(n_responses)])
    aid = conn.execute(_Q.lease, {"b_campaign": campaign.id, "b_item": item_id,
                                  "b_person": person.id, "b_shown": shown, "b_now": now,
                                  "b_expires": expires}).scalar_one()
    return _shown_view(conn, campaign.id, aid, item_id, shown, expires, payload)


@dataclass
class LabelResult:
    label_id: int
    record_id: str
    assignment_id: int
    replayed: bool
    """True when this idempotency key had already been stored (nothing new was written)."""
    next: Assignment | None = None
    """With ``lease_next``: the annotator's next item (None when nothing is left)."""

    def to_dict(self) -> dict[str, Any]:
        return {"label_id": self.label_id, "record_id": self.record_id,
                "assignment_id": self.assignment_id, "replayed": self.replayed}


def label_record_id(campaign_id: int, item_id: int, annotator_id: int) -> str:
    """The id of the record an annotator's label of an item becomes (one per pair)."""
    return f"serve-c{campaign_id}-i{item_id}-a{annotator_id}"


def submit_label(store: FeedbackStore, campaign: Campaign, person: Person, assignment_id: int,
                 answer: Any, idempotency_key: str, seconds: float | None = None, *,
                 lease_next: bool = False, rng: np.random.Generator | None = None,
                 wait: bool = True) -> LabelResult:
    """Store an answer to a leased item as a label and its feedback record (one transaction).
    A key seen before returns the first result (``replayed``); the same item answered twice,
    a foreign or skipped assignment, or an item already at its overlap is a
    :class:`ServeError`; an answer that does not fit the task an
    :class:`~prefkit.serve.tasks.AnswerError`. ``lease_next``: also lease the annotator's next
    item in the same transaction (``result.next``; one round trip and one commit per label).
    ``wait=False``: raise :class:`~prefkit.data.store.WriteBusy` (nothing stored) rather than
    wait for the store's write lock (``FeedbackStore.transaction``)."""
    if not idempotency_key or len(idempotency_key) > 200:
        raise ServeError("idempotency_key: expected 1-200 characters", 422)
    if seconds is not None and not 0 <= seconds < 1e7:
        raise ServeError(f"seconds {seconds}: expected a duration >= 0", 422)
    _check_open(campaign, person)

    def run(conn: Connection) -> LabelResult:
        _lock_campaign(conn, campaign.id)
        result = _store_label(conn, store, campaign, person, assignment_id, answer,
                              idempotency_key, seconds)
        if lease_next:
            result.next = _lease(conn, campaign, person,
                                 rng or np.random.default_rng(secrets.randbits(64)),
                                 idle=not result.replayed)
        return result

    return store.transaction(run, wait=wait)


def _store_label(conn: Connection, store: FeedbackStore, campaign: Campaign, person: Person,
                 assignment_id: int, answer: Any, idempotency_key: str,
                 seconds: float | None) -> LabelResult:
    """:func:`submit_label` inside the caller's (campaign-locked) transaction."""
    row = conn.execute(_Q.submitted, {"b_assignment": assignment_id, "b_campaign": campaign.id,
                                      "b_key": idempotency_key}).first()
    if row is not None:
        seen = None if row.seen_id is None else (row.seen_id, row.seen_annotator_id,
                                                 row.seen_assignment_id, row.seen_record_id)
    else:  # no such assignment in this campaign; the key may still have been used elsewhere
        seen = conn.execute(_Q.by_key, {"b_key": idempotency_key}).first()
        seen = None if seen is None else (seen.id, seen.annotator_id, seen.assignment_id,
                                          seen.record_id)
    if seen is not None:
        label_id, annotator_id, seen_assignment, record_id = seen
        if annotator_id != person.id or seen_assignment != assignment_id:
            raise ServeError("idempotency_key was used for another submission")
        return LabelResult(label_id, record_id, seen_assignment, True)
    if row is None or row.annotator_id != person.id:
        raise ServeError(f"no assignment {assignment_id} of yours in this campaign", 404)
    if row.state == "done":
        raise ServeError("this item is already labelled (undo the label to change it)")
    if row.state != "active":
        raise ServeError(f"this assignment was {row.state}; ask for the next item")
    item = row  # the item's columns came with the assignment
    if item.n_labels >= campaign.overlap:
        conn.execute(_Q.set_state, {"b_assignment": row.id, "b_state": "expired"})
        raise ServeError("the lease expired and the item got its labels from others; "
                         "ask for the next item")
    payload = orjson.loads(item.payload)
    if item.source_id:  # kept out of the payload; a critique targets it
        payload["source_id"] = item.source_id
    rid = label_record_id(campaign.id, item.item_id, person.id)
    metadata = {"campaign": campaign.name, "item": item.position,
                **({"source_id": item.source_id} if item.source_id else {}),
                **({"seconds": round(seconds, 3)} if seconds is not None else {})}
    record = to_record(campaign.settings, payload, answer, orjson.loads(row.shown),
                       annotator=person.annotator(), metadata=metadata, record_id=rid)
    status = store.add_in(conn, record)
    if status != "inserted":
        raise ServeError(f"record {rid} is already stored ({status})")
    n_labels = item.n_labels + 1
    conn.execute(_Q.count, {"b_item": item.item_id, "b_labels": n_labels,
                            "b_full": n_labels >= campaign.overlap})
    conn.execute(_Q.set_state, {"b_assignment": row.id, "b_state": "done"})
    label_id = conn.execute(_Q.label, {
        "b_campaign": campaign.id, "b_item": item.item_id, "b_person": person.id,
        "b_assignment": row.id, "b_record": rid, "b_key": idempotency_key,
        "b_answer": _json(answer), "b_seconds": seconds, "b_now": _now()}).scalar_one()
    return LabelResult(label_id, rid, row.id, False)


def skip_assignment(store: FeedbackStore, campaign: Campaign, person: Person,
                    assignment_id: int) -> None:
    """Give a leased item back: others may take it; this annotator never gets it again."""
    def run(conn: Connection) -> None:
        done = conn.execute(sa.update(ASSIGNMENTS).where(
            ASSIGNMENTS.c.id == assignment_id, ASSIGNMENTS.c.campaign_id == campaign.id,
            ASSIGNMENTS.c.annotator_id == person.id, ASSIGNMENTS.c.state == "active")
            .values(state="skipped")).rowcount
        if not done:
            raise ServeError(f"no active assignment {assignment_id} of yours", 404)

    store.transaction(run)


def undo_last(store: FeedbackStore, campaign: Campaign, person: Person) -> Assignment:
    """Take back the annotator's own last label in the campaign: the label and its record are
    deleted and the item is leased to them again (shown in the same order)."""
    _check_open(campaign, person)
    lease = timedelta(seconds=campaign.settings.lease_seconds)

    def run(conn: Connection) -> Assignment:
        _lock_campaign(conn, campaign.id)
        label = conn.execute(sa.select(LABELS).where(
            LABELS.c.campaign_id == campaign.id, LABELS.c.annotator_id == person.id)
            .order_by(LABELS.c.id.desc()).limit(1)).first()
        if label is None:
            raise ServeError("no label of yours to undo in this campaign", 404)
        active = conn.execute(sa.select(ASSIGNMENTS.c.id).where(
            ASSIGNMENTS.c.campaign_id == campaign.id, ASSIGNMENTS.c.annotator_id == person.id,
            ASSIGNMENTS.c.state == "active")).scalars().all()
        if active:  # the item they were looking at goes back to the pool (and may come again)
            conn.execute(sa.delete(ASSIGNMENTS).where(ASSIGNMENTS.c.id.in_(active)))
        store.delete_in(conn, label.record_id)
        conn.execute(sa.delete(LABELS).where(LABELS.c.id == label.id))
        n_labels = conn.execute(sa.select(ITEMS.c.n_labels).where(
            ITEMS.c.id == label.item_id)).scalar_one() - 1
        conn.execute(sa.update(ITEMS).where(ITEMS.c.id == label.item_id).values(
            n_labels=n_labels, full=n_labels >= campaign.overlap))
        now = _now()
        conn.execute(sa.update(ASSIGNMENTS).where(ASSIGNMENTS.c.id == label.assignment_id)
                     .values(state="active", leased_at=now, lease_expires=now + lease))
        shown = conn.execute(sa.select(ASSIGNMENTS.c.shown).where(
            ASSIGNMENTS.c.id == label.assignment_id)).scalar_one()
        return _shown_view(conn, campaign.id, label.assignment_id, label.item_id, shown,
                           now + lease)

    return store.transaction(run)


# ---------------------------------------------------------------------------------------------
# Reading labels back
# ---------------------------------------------------------------------------------------------


@dataclass
class StoredLabel:
    label_id: int
    item_id: int
    annotator: str
    record: Record
    seconds: float | None
    created_at: datetime


def campaign_labels(store: FeedbackStore, campaign: Campaign, *, annotator: Person | None = None
                    ) -> list[StoredLabel]:
    """The campaign's labels with their records, oldest first (one annotator's only when
    ``annotator`` is given)."""
    from ..data.formats import decode_native

    query = (sa.select(LABELS.c.id, LABELS.c.item_id, ANNOTATORS.c.name, RECORDS.c.payload,
                       LABELS.c.seconds, LABELS.c.created_at)
             .join(ANNOTATORS, ANNOTATORS.c.id == LABELS.c.annotator_id)
             .join(RECORDS, RECORDS.c.id == LABELS.c.record_id)
             .where(LABELS.c.campaign_id == campaign.id).order_by(LABELS.c.id))
    if annotator is not None:
        query = query.where(LABELS.c.annotator_id == annotator.id)
    rows = store.read(lambda conn: conn.execute(query).all())
    return [StoredLabel(r.id, r.item_id, r.name, decode_native(orjson.loads(r.payload)),
                        r.seconds, _aware(r.created_at)) for r in rows]


def progress(store: FeedbackStore, campaign: Campaign) -> dict[str, Any]:
    """Items, complete items, labels and labels per annotator."""
    def run(conn: Connection) -> dict[str, Any]:
        items = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(
            sa.func.sum(sa.case((ITEMS.c.full.is_(True), 1), else_=0)), 0)).where(
            ITEMS.c.campaign_id == campaign.id, ITEMS.c.role == "item")).one()
        per = conn.execute(
            sa.select(ANNOTATORS.c.name, sa.func.count(LABELS.c.id))
            .join(ANNOTATORS, ANNOTATORS.c.id == LABELS.c.annotator_id)
            .where(LABELS.c.campaign_id == campaign.id).group_by(ANNOTATORS.c.name)).all()
        pool = conn.execute(sa.select(sa.func.count()).where(
            ITEMS.c.campaign_id == campaign.id, ITEMS.c.role == "pool")).scalar_one()
        return {"items": int(items[0]), "complete": int(items[1]),
                "labels": sum(n for _, n in per), "per_annotator": dict(per),
                **({"pool": pool} if pool else {})}

    return store.read(run)


def annotator_progress(store: FeedbackStore, campaign: Campaign, person: Person
                       ) -> dict[str, int]:
    """How many items this annotator labelled, and how many unfilled items are left for them:
    not handed to them yet, or leased to them now (an upper bound)."""

    def run(conn: Connection) -> dict[str, int]:
        done = conn.execute(sa.select(sa.func.count()).where(
            LABELS.c.campaign_id == campaign.id, LABELS.c.annotator_id == person.id)
        ).scalar_one()
        if campaign.task == "arena":
            return {"done": done, "left": None}
        mine = (sa.select(ASSIGNMENTS.c.id).where(ASSIGNMENTS.c.item_id == ITEMS.c.id,
                                                  ASSIGNMENTS.c.annotator_id == person.id,
                                                  ASSIGNMENTS.c.state != "active"))
        left = conn.execute(sa.select(sa.func.count()).where(
            ITEMS.c.campaign_id == campaign.id, ITEMS.c.role == "item",
            ITEMS.c.full.is_(False), ~sa.exists(mine))).scalar_one()
        return {"done": done, "left": left}

    return store.read(run)
