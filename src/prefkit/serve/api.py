"""The REST API (``/api/...``; schema at ``/openapi.json``).

Every route needs a token (``Authorization: Bearer TOKEN``, or the pages' session cookie):
none or an unknown one is 401, an annotator token on an admin route 403. Annotators see their
own campaigns, items in display order without model names, and their own labels only.
Submissions carry an ``idempotency_key``: a retried request returns the label stored the first
time (``replayed: true``) and never stores a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..data.store import FeedbackStore, WriteBusy
from . import service as svc
from .service import Campaign, Person, ServeError
from .tasks import TASKS, AnswerError, TaskSettings

ERRORS = {401: {"description": "no valid token"}, 403: {"description": "not allowed"},
          404: {"description": "not found"}, 409: {"description": "conflicts with the state"},
          413: {"description": "request body too large"},
          422: {"description": "invalid request"}, 429: {"description": "rate limited"}}


class Me(BaseModel):
    name: str
    role: Literal["admin", "annotator"]


class CampaignOut(BaseModel):
    id: int
    name: str
    task: str
    overlap: int
    status: str
    guidelines: str
    settings: dict[str, Any]
    progress: dict[str, Any]


class AssignmentOut(BaseModel):
    assignment_id: int
    campaign_id: int
    item_id: int
    prompt: Any
    responses: list[Any]
    lease_expires: str


class NextOut(BaseModel):
    assignment: AssignmentOut | None = Field(
        None, description="The item to label; null when nothing is left for you.")


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignment_id: int = Field(ge=1, le=2**62)
    idempotency_key: str = Field(min_length=1, max_length=200)
    answer: dict[str, Any]
    seconds: float | None = Field(None, ge=0, le=1e7)


class LabelOut(BaseModel):
    label_id: int
    record_id: str
    assignment_id: int
    replayed: bool
    next: AssignmentOut | None = None


class AssignmentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignment_id: int = Field(ge=1, le=2**62)


Text = str | list[dict[str, Any]]


class CandidateRow(BaseModel):
    """A prompt with the responses to label (``models`` names each one's model: arenas)."""

    model_config = ConfigDict(extra="forbid")
    prompt: Text
    responses: list[Text] = Field(min_length=1, max_length=64)
    models: list[str] | None = None
    id: str | None = Field(None, max_length=200)


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    task: Literal[TASKS]  # type: ignore[valid-type]
    items: list[CandidateRow] = Field(min_length=1, max_length=100_000)
    overlap: int = Field(1, ge=1, le=100)
    guidelines: str = Field("", max_length=100_000)
    annotators: list[str] | None = None
    settings: dict[str, Any] = Field(default_factory=dict, description=(
        "Task options (allow_tie, allow_both_bad, strength, rationale, scales, k, "
        "matchmaking, lease_seconds)"))


class AnnotatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    role: Literal["admin", "annotator"] = "annotator"


class TokenOut(BaseModel):
    name: str
    role: str
    token: str = Field(description="Shown once; only its hash is stored.")


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["open", "closed"]


def _http(exc: ValueError) -> HTTPException:
    if isinstance(exc, ServeError):
        return HTTPException(exc.status, str(exc))
    return HTTPException(422, str(exc))


async def person(request: Request) -> Person:
    """The signed-in person (set by the app's auth middleware) or 401."""
    found = getattr(request.state, "person", None)
    if found is None:
        raise HTTPException(401, "a valid token is needed (Authorization: Bearer TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


async def admin(who: Person = Depends(person)) -> Person:
    if not who.is_admin:
        raise HTTPException(403, "admins only")
    return who


def _store(request: Request):
    return request.app.state.store


def _campaign(request: Request, campaign_id: int, who: Person) -> Campaign:
    try:
        campaign = svc.get_campaign(_store(request), campaign_id)
    except ServeError as exc:
        raise _http(exc) from None
    if not campaign.allows(who):
        raise HTTPException(404, f"no campaign {campaign_id}")
    return campaign


def _campaign_out(request: Request, campaign: Campaign, who: Person) -> CampaignOut:
    store = _store(request)
    progress = (svc.progress(store, campaign) if who.is_admin
                else svc.annotator_progress(store, campaign, who))
    return CampaignOut(id=campaign.id, name=campaign.name, task=campaign.task,
                       overlap=campaign.overlap, status=campaign.status,
                       guidelines=campaign.guidelines, settings=campaign.settings.to_dict(),
                       progress=progress)


def _assignment(a: svc.Assignment | None) -> AssignmentOut | None:
    return None if a is None else AssignmentOut(**a.to_dict())


router = APIRouter(prefix="/api", responses=ERRORS)
CampaignId = Annotated[int, Path(ge=1, le=2**62, description="The campaign's id.")]


@router.get("/me", response_model=Me)
def me(who: Person = Depends(person)) -> Me:
    return Me(name=who.name, role=who.role)


@router.get("/campaigns", response_model=list[CampaignOut])
def campaigns(request: Request, who: Person = Depends(person)) -> list[CampaignOut]:
    """The campaigns you may work on (admins: all), with progress."""
    return [_campaign_out(request, c, who)
            for c in svc.list_campaigns(_store(request), who)]


@router.post("/campaigns", response_model=CampaignOut, status_code=201)
def create_campaign(body: CampaignIn, request: Request, who: Person = Depends(admin)
                    ) -> CampaignOut:
    """Create a campaign from candidate rows (admins)."""
    from .items import candidate_items, fit_task

    try:
        settings = TaskSettings(task=body.task, **body.settings)
        rows = [row.model_dump(exclude_none=True) for row in body.items]
        items = fit_task(candidate_items("request", rows), settings)
        created = svc.create_campaign(_store(request), body.name, settings, items,
                                      overlap=body.overlap, guidelines=body.guidelines,
                                      annotators=body.annotators)
    except TypeError as exc:
        raise HTTPException(422, str(exc)) from None
    except ValueError as exc:
        raise _http(exc) from None
    return _campaign_out(request, created, who)


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut)
def campaign(campaign_id: CampaignId, request: Request, who: Person = Depends(person)
             ) -> CampaignOut:
    return _campaign_out(request, _campaign(request, campaign_id, who), who)


@router.post("/campaigns/{campaign_id}/status", response_model=CampaignOut)
def campaign_status(campaign_id: CampaignId, body: StatusIn, request: Request,
                    who: Person = Depends(admin)) -> CampaignOut:
    """Open or close a campaign (admins)."""
    found = _campaign(request, campaign_id, who)
    svc.set_campaign_status(_store(request), found, body.status)
    return _campaign_out(request, _campaign(request, campaign_id, who), who)


@router.post("/campaigns/{campaign_id}/next", response_model=NextOut)
def next_item(campaign_id: CampaignId, request: Request, who: Person = Depends(person)
              ) -> NextOut:
    """Your current item (its lease renewed) or a new one; ``assignment`` is null when nothing
    is left for you."""
    found = _campaign(request, campaign_id, who)
    try:
        return NextOut(assignment=_assignment(svc.next_assignment(_store(request), found, who)))
    except ServeError as exc:
        raise _http(exc) from None


@router.post("/campaigns/{campaign_id}/labels", response_model=LabelOut,
             responses={200: {"description": "a replay of a stored submission"}})
def submit(campaign_id: CampaignId, body: LabelIn, request: Request,
           next: bool = Query(False, description="Also lease your next item (one round trip "
                                                 "per label)."),
           who: Person = Depends(person)) -> Response:
    """Store your answer to a leased item (201), or return the first result of a retried
    ``idempotency_key`` (200, ``replayed``)."""
    found = _campaign(request, campaign_id, who)
    store = _store(request)
    try:
        result = svc.submit_label(store, found, who, body.assignment_id, body.answer,
                                  body.idempotency_key, body.seconds, lease_next=next)
    except AnswerError as exc:
        raise HTTPException(422, str(exc)) from None
    except ServeError as exc:
        raise _http(exc) from None
    return _label_response(result)


def _label_response(result: svc.LabelResult) -> Response:
    # the hot path: the body is built here (its shape is LabelOut's, checked by the schema
    # tests) instead of validating a response model for every label
    following = None if result.next is None else result.next.to_dict()
    return Response(orjson.dumps({**result.to_dict(), "next": following}),
                    status_code=200 if result.replayed else 201,
                    media_type="application/json")


_BUSY_WAITS = (0.0005, 0.0005, 0.001, 0.001, 0.002, 0.002, 0.004, 0.004, 0.008, 0.008)
"""Seconds the event loop waits before it tries again when another thread of this process or
another server process holds the store's write lock (31 ms in all; then a worker thread waits
for it). A label's transaction takes about a millisecond."""


_LABEL_QUEUES: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[FeedbackStore,
                                                                       asyncio.Lock]] = (
    weakref.WeakKeyDictionary())
"""Per event loop, per store: the labels waiting for the store's write lock (an asyncio lock
belongs to one loop; entries go with their loop or store)."""


def _label_queue(store: FeedbackStore) -> asyncio.Lock:
    """This event loop's queue of labels waiting for ``store``'s write lock."""
    queues = _LABEL_QUEUES.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    queue = queues.get(store)
    if queue is None:
        queue = queues[store] = asyncio.Lock()
    return queue


async def _submit_soon(args: tuple, lease_next: bool) -> svc.LabelResult:
    """:func:`svc.submit_label` in the event loop when the store's write lock is free (SQLite),
    else waiting for it without blocking the loop while another thread or server process holds
    it -- the labels of this loop queue first (in order, woken one by one), and only the one at
    the head tries the lock again after each of :data:`_BUSY_WAITS` (handing every label to a
    worker thread instead would keep the lock busy and cost a thread hand-off per label; many
    pollers would burn the CPU the lock holder needs); in a worker thread after those waits,
    and on PostgreSQL."""
    if store_is_postgres(args[0]):
        return await run_in_threadpool(svc.submit_label, *args, lease_next=lease_next)
    async with _label_queue(args[0]):
        for delay in (*_BUSY_WAITS, None):
            try:
                return svc.submit_label(*args, lease_next=lease_next, wait=False)
            except WriteBusy:
                if delay is None:
                    break
            await asyncio.sleep(delay)
    return await run_in_threadpool(svc.submit_label, *args, lease_next=lease_next)


def store_is_postgres(store: FeedbackStore) -> bool:
    return store.engine.dialect.name != "sqlite"


LABELS_PATH = re.compile(r"/api/campaigns/([1-9][0-9]{0,17})/labels")
"""The path of :func:`submit` (an id of up to 18 digits is within its bounds)."""
_NEXT_QUERY = {b"": False, b"next=true": True, b"next=false": False}


async def submit_direct(app: Any, scope: dict, receive: Any, send: Any, store: FeedbackStore,
                        who: Person, campaign_id: int) -> None:
    """:func:`submit` for a signed-in ``POST /api/campaigns/{id}/labels`` without FastAPI's
    routing, dependency solving and thread hand-off (the app's auth middleware calls it; every
    label goes through here). It answers only a plain request -- a JSON body that
    :class:`LabelIn` accepts, ``next`` absent, ``true`` or ``false``, a campaign the person
    may see whose settings are cached -- exactly as :func:`submit` would; any other request
    goes on to ``app`` (the route), its body replayed, for the route's own answer (422s,
    404s...). On SQLite the label's short transaction runs right here when the write lock is
    free (:class:`~prefkit.data.store.WriteBusy` otherwise: then in a worker thread, like
    PostgreSQL's)."""
    messages: list[dict] = []
    body = b""
    plain = (_NEXT_QUERY.get(scope.get("query_string", b"")) is not None
             and (b"content-type", b"application/json") in scope["headers"])
    while plain:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            plain = False
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    found = svc.cached_campaign(store, campaign_id) if plain else None
    label = None
    if found is not None and found.allows(who):
        with contextlib.suppress(orjson.JSONDecodeError, ValidationError):  # the route says
            label = LabelIn.model_validate(orjson.loads(body))
    if label is None:
        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await app(scope, replay, send)
        return
    args = (store, found, who, label.assignment_id, label.answer, label.idempotency_key,
            label.seconds)
    lease_next = _NEXT_QUERY[scope.get("query_string", b"")]
    try:
        result = await _submit_soon(args, lease_next)
    except AnswerError as exc:
        response: Response = JSONResponse({"detail": str(exc)}, status_code=422)
    except ServeError as exc:
        response = JSONResponse({"detail": str(exc)}, status_code=exc.status)
    else:
        response = _label_response(result)
    await response(scope, receive, send)


@router.post("/campaigns/{campaign_id}/skip", response_model=NextOut)
def skip(campaign_id: CampaignId, body: AssignmentRef, request: Request,
         who: Person = Depends(person)) -> NextOut:
    """Give your leased item back (you will not get it again) and get the next one."""
    found = _campaign(request, campaign_id, who)
    store = _store(request)
    try:
        svc.skip_assignment(store, found, who, body.assignment_id)
        return NextOut(assignment=_assignment(svc.next_assignment(store, found, who)))
    except ServeError as exc:
        raise _http(exc) from None


@router.post("/campaigns/{campaign_id}/undo", response_model=NextOut)
def undo(campaign_id: CampaignId, request: Request, who: Person = Depends(person)) -> NextOut:
    """Take back your last label in this campaign: its item is yours to label again."""
    found = _campaign(request, campaign_id, who)
    try:
        return NextOut(assignment=_assignment(svc.undo_last(_store(request), found, who)))
    except ServeError as exc:
        raise _http(exc) from None


@router.get("/campaigns/{campaign_id}/labels", response_model=list[dict[str, Any]])
def my_labels(campaign_id: CampaignId, request: Request, who: Person = Depends(person)
              ) -> list[dict[str, Any]]:
    """Your own labels in this campaign as feedback records (admins: everyone's)."""
    from ..data.records import to_dict

    found = _campaign(request, campaign_id, who)
    labels = svc.campaign_labels(_store(request), found,
                                 annotator=None if who.is_admin else who)
    return [to_dict(label.record) for label in labels]


@router.get("/campaigns/{campaign_id}/stats", response_model=dict[str, Any])
def stats(campaign_id: CampaignId, request: Request, who: Person = Depends(admin)
          ) -> dict[str, Any]:
    """Progress, agreement, position bias and labels per hour (admins)."""
    from .stats import campaign_stats

    return campaign_stats(_store(request), _campaign(request, campaign_id, who))


@router.get("/campaigns/{campaign_id}/leaderboard", response_model=dict[str, Any])
def leaderboard(campaign_id: CampaignId, request: Request, who: Person = Depends(person)
                ) -> dict[str, Any]:
    """An arena campaign's leaderboard (what ``prefkit arena rank`` gives on its votes)."""
    from .arena import leaderboard as arena_board

    found = _campaign(request, campaign_id, who)
    if found.task != "arena":
        raise HTTPException(404, "only arena campaigns have a leaderboard")
    return arena_board(_store(request), found) or {"leaderboard": [], "votes": 0}


@router.get("/annotators", response_model=list[dict[str, Any]])
def annotators(request: Request, who: Person = Depends(admin)) -> list[dict[str, Any]]:
    return svc.list_annotators(_store(request))


@router.post("/annotators", response_model=TokenOut, status_code=201)
def add_annotator(body: AnnotatorIn, request: Request, who: Person = Depends(admin)
                  ) -> TokenOut:
    """Issue a token (shown once) to a new annotator or admin."""
    try:
        token = svc.add_annotator(_store(request), body.name, body.role)
    except ServeError as exc:
        raise _http(exc) from None
    return TokenOut(name=body.name.strip(), role=body.role, token=token)


@router.delete("/annotators/{name}", status_code=204)
def revoke(name: Annotated[str, Path(min_length=1, max_length=200)], request: Request,
           who: Person = Depends(admin)) -> Response:
    """Revoke an annotator's token at once (their labels stay)."""
    try:
        svc.revoke_annotator(_store(request), name)
    except ServeError as exc:
        raise _http(exc) from None
    return Response(status_code=204)
