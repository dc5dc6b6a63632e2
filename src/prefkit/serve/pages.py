"""The server-rendered pages (Jinja2; no front-end build, no inline script).

Annotators: ``/login``, ``/`` (their campaigns), ``/c/{id}`` (label the current item; every
form posts back and redirects, so the browser's back/reload never submits twice, and each
rendered form carries a fresh idempotency key), ``/c/{id}/leaderboard`` (arena). Admins:
``/admin`` (campaigns, people, new campaign from a file), ``/admin/c/{id}`` (progress,
agreement, position bias, exports). Without a session a page answers 401 with the sign-in form.

Keyboard (``static/app.js``): pairwise ``1`` first / ``2`` second / ``3`` tie / ``4`` both bad,
``q w e`` strength, ``r`` rationale; binary ``y`` / ``n``; ranking: choose ranks with Tab and
the digits, ``Enter`` submits; ``Ctrl+Enter`` submits any form; ``s`` skip, ``u`` undo,
``g`` guidelines, ``Esc`` leaves a text box.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from . import service as svc
from .render import render_markdown, render_text
from .security import COOKIE
from .service import Campaign, Person, ServeError
from .tasks import TASKS, AnswerError, TaskSettings

router = APIRouter(include_in_schema=False)
_ENV = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True))
CHOICE_LABELS = {"first": "{0} is better", "second": "{1} is better", "tie": "Tie",
                 "both_bad": "Both are bad"}
SHORTCUTS = {
    "pairwise": "1 / 2 pick a response, 3 tie, 4 both bad, q w e strength, r rationale, "
                "s skip, u undo, g guidelines",
    "ranking": "Tab to a response's rank and type a digit, Enter submits; s skip, u undo, "
               "g guidelines",
    "rating": "Tab to an attribute, arrow keys choose, Enter submits; s skip, u undo",
    "binary": "y good, n bad, s skip, u undo, g guidelines",
    "critique": "r writes, Ctrl+Enter submits, Esc leaves the box; s skip, u undo",
}
RECORD_KIND = {"pairwise": "comparison", "ranking": "ranking", "rating": "rating",
               "binary": "binary", "critique": "critique"}


def export_formats(campaign: Campaign) -> list[str]:
    """The formats that hold the campaign's records (every format prefkit writes)."""
    from ..data.formats import FORMATS

    kind = RECORD_KIND.get(campaign.task) or ("battle" if campaign.settings.k == 2 else "ranking")
    return [name for name, fmt in FORMATS.items() if kind in fmt.kinds]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def agreement_name(key: str) -> str:
    """``krippendorff_alpha_interval[helpfulness]`` -> "Krippendorff's alpha (interval,
    helpfulness)"."""
    base, _, attribute = key.partition("[")
    names = {"krippendorff_alpha_nominal": "Krippendorff's alpha (nominal)",
             "krippendorff_alpha_interval": "Krippendorff's alpha (interval)",
             "krippendorff_alpha_ordinal": "Krippendorff's alpha (ordinal)",
             "fleiss_kappa": "Fleiss' kappa", "fleiss_items_used": "items in Fleiss' kappa",
             "fleiss_raters_per_item": "labels per item in Fleiss' kappa"}
    name = names.get(base, base)
    return f"{name[:-1]}, {attribute[:-1]})" if attribute and name.endswith(")") else name


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    person = getattr(request.state, "person", None)
    html = _ENV.get_template(template).render(person=person, fmt=_fmt,
                                              agreement_name=agreement_name, **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _signin(request: Request, error: str | None = None) -> HTMLResponse:
    return _page(request, "login.html", 401, error=error)


class SignInRequired(Exception):
    """A page asked for without a valid session: answered by :func:`sign_in_page`."""


async def sign_in_page(request: Request, _exc: Exception) -> HTMLResponse:
    """The app's handler of :class:`SignInRequired`: 401 with the sign-in form."""
    return _signin(request)


def _store(request: Request):
    return request.app.state.store


def _same_origin(request: Request) -> None:
    """Form posts must come from this site's own pages (the cookie is SameSite=Strict too)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise HTTPException(403, "cross-site form post")


def _who(request: Request) -> Person | None:
    return getattr(request.state, "person", None)


def _campaign_for(request: Request, campaign_id: int, who: Person) -> Campaign:
    try:
        campaign = svc.get_campaign(_store(request), campaign_id)
    except ServeError:
        raise HTTPException(404, "no such campaign") from None
    if not campaign.allows(who):
        raise HTTPException(404, "no such campaign")
    return campaign


# --- signing in --------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html")


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("token", "")).strip()
    person = svc.authenticate(_store(request), token)
    if person is None:
        return _signin(request, "That token is not valid (or was revoked).")
    response = RedirectResponse("/admin" if person.is_admin else "/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=request.app.state.settings.secure_cookies, max_age=30 * 86400)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# --- annotators -------------------------------------------------------------------------------


@router.get("/")
def home(request: Request) -> Response:
    who = _person(request)
    store = _store(request)
    campaigns = [(c, svc.annotator_progress(store, c, who))
                 for c in svc.list_campaigns(store, who)]
    return _page(request, "home.html", campaigns=campaigns)


def _mode(campaign: Campaign, k: int) -> str:
    if campaign.task == "arena":
        return "pairwise" if k == 2 else "ranking"
    return campaign.task


def _annotate(request: Request, campaign: Campaign, who: Person,
              assignment: svc.Assignment | None, *, error: str | None = None,
              status: int = 200) -> HTMLResponse:
    store = _store(request)
    k = 0 if assignment is None else len(assignment.responses)
    names = [chr(ord("A") + i) if k <= 26 else str(i + 1) for i in range(k)]
    labels = {c: t.format(*names[:2]) if k >= 2 else t for c, t in CHOICE_LABELS.items()}
    mode = _mode(campaign, k)
    return _page(request, "annotate.html", status, campaign=campaign,
                 settings=campaign.settings, assignment=assignment, names=names,
                 choice_labels=labels, mode=mode, render=render_text,
                 guidelines=render_markdown(campaign.guidelines),
                 progress=svc.annotator_progress(store, campaign, who),
                 idempotency_key=secrets.token_urlsafe(16), shortcuts=SHORTCUTS[mode],
                 error=error)


@router.get("/c/{campaign_id}")
def annotate(campaign_id: int, request: Request) -> Response:
    who = _person(request)
    campaign = _campaign_for(request, campaign_id, who)
    try:
        assignment = svc.next_assignment(_store(request), campaign, who)
    except ServeError as exc:
        return _annotate(request, campaign, who, None, error=str(exc), status=exc.status)
    return _annotate(request, campaign, who, assignment)


def answer_from_form(task: str, form: dict[str, str]) -> dict[str, Any]:
    """The JSON answer a page's form stands for (see :mod:`prefkit.serve.tasks`). A ranking
    form has one ``rank_i`` field per response shown; the service checks that every display
    position is ranked once."""
    if task in ("pairwise", "arena") and "choice" in form:
        answer: dict[str, Any] = {"choice": form["choice"]}
        if form.get("strength"):
            try:
                answer["strength"] = int(form["strength"])
            except ValueError:
                raise AnswerError("strength", "1, 2 or 3", form["strength"]) from None
        if form.get("rationale", "").strip():
            answer["rationale"] = form["rationale"]
        return answer
    if task in ("ranking", "arena"):
        k = sum(1 for key in form if key.startswith("rank_"))
        ranks = {}
        for i in range(k):
            value = form.get(f"rank_{i}", "")
            if not value.isdigit():
                raise AnswerError("tiers", f"a rank for response {i + 1}", value or None)
            ranks[i] = int(value)
        order = sorted(set(ranks.values()))
        return {"tiers": [[i for i in range(k) if ranks[i] == r] for r in order]}
    if task == "rating":
        scores = {}
        for key, value in form.items():
            if key.startswith("score."):
                try:
                    scores[key[6:]] = float(value)
                except ValueError:
                    raise AnswerError(key[6:], "a number", value) from None
        return {"scores": scores}
    if task == "binary":
        return {"desirable": {"true": True, "false": False}.get(form.get("desirable", ""))}
    if task == "critique":
        return {"text": form.get("text", "")}
    return {"choice": form.get("choice")}


@router.post("/c/{campaign_id}/label")
async def label(campaign_id: int, request: Request) -> Response:
    who = _person(request)
    _same_origin(request)
    campaign = _campaign_for(request, campaign_id, who)
    form = {k: str(v) for k, v in (await request.form()).items()}
    store = _store(request)
    try:
        assignment_id = int(form.get("assignment_id", ""))
    except ValueError:
        raise HTTPException(422, "assignment_id: expected a number") from None
    try:
        answer = answer_from_form(campaign.task, form)
        seconds = float(form["seconds"]) if form.get("seconds") else None
        svc.submit_label(store, campaign, who, assignment_id, answer,
                         form.get("idempotency_key", ""), seconds)
    except (AnswerError, ServeError, ValueError) as exc:
        status = getattr(exc, "status", 422)
        try:  # show the item again (its lease renewed) with what was wrong
            current = svc.next_assignment(store, campaign, who)
        except ServeError:
            current = None
        return _annotate(request, campaign, who, current, error=str(exc), status=status)
    return RedirectResponse(f"/c/{campaign_id}", status_code=303)


@router.post("/c/{campaign_id}/skip")
async def skip(campaign_id: int, request: Request) -> Response:
    who = _person(request)
    _same_origin(request)
    campaign = _campaign_for(request, campaign_id, who)
    form = await request.form()
    with contextlib.suppress(ServeError, ValueError):  # already skipped or labelled: show
        svc.skip_assignment(_store(request), campaign, who,  # what is current
                            int(str(form.get("assignment_id"))))
    return RedirectResponse(f"/c/{campaign_id}", status_code=303)


@router.post("/c/{campaign_id}/undo")
def undo(campaign_id: int, request: Request) -> Response:
    who = _person(request)
    _same_origin(request)
    campaign = _campaign_for(request, campaign_id, who)
    try:
        svc.undo_last(_store(request), campaign, who)
    except ServeError as exc:
        return _annotate(request, campaign, who, None, error=str(exc), status=exc.status)
    # the undone item is now the annotator's only active lease: /c/{id} shows it, and a reload
    # there does not post the undo again
    return RedirectResponse(f"/c/{campaign_id}", status_code=303)


@router.get("/c/{campaign_id}/leaderboard")
def leaderboard(campaign_id: int, request: Request) -> Response:
    from .arena import leaderboard as arena_board

    who = _person(request)
    campaign = _campaign_for(request, campaign_id, who)
    if campaign.task != "arena":
        raise HTTPException(404, "only arena campaigns have a leaderboard")
    return _page(request, "leaderboard.html", campaign=campaign,
                 board=arena_board(_store(request), campaign))


# --- admins -----------------------------------------------------------------------------------


def _person(request: Request) -> Person:
    who = _who(request)
    if who is None:
        raise SignInRequired
    return who


def _admin(request: Request) -> Person:
    who = _person(request)
    if not who.is_admin:
        raise HTTPException(403, "admins only")
    return who


async def _admin_form(request: Request) -> tuple[Person, Any]:
    """The admin behind a form post from this site, and the form."""
    who = _admin(request)
    _same_origin(request)
    return who, await request.form()


def _admin_page(request: Request, **extra: Any) -> HTMLResponse:
    store = _store(request)
    campaigns = [(c, svc.progress(store, c)) for c in svc.list_campaigns(store)]
    return _page(request, "admin.html", extra.pop("status", 200), campaigns=campaigns,
                 annotators=svc.list_annotators(store), tasks=TASKS, **extra)


@router.get("/admin")
def admin(request: Request) -> Response:
    _admin(request)
    return _admin_page(request)


@router.post("/admin/campaigns")
async def create_campaign(request: Request) -> Response:
    from .items import read_items

    who, form = await _admin_form(request)
    upload = form.get("file")
    try:
        settings = TaskSettings(task=str(form.get("task", "")),
                                k=int(str(form.get("k") or 2)))
        if upload is None or not hasattr(upload, "read"):
            raise ValueError("choose a file of items")
        suffix = Path(upload.filename or "items.jsonl").suffix or ".jsonl"
        with tempfile.TemporaryDirectory(prefix="prefkit-upload-") as tmp:
            path = Path(tmp) / f"items{suffix}"
            path.write_bytes(await upload.read())
            items = read_items([str(path)], settings)
        names = [n.strip() for n in str(form.get("annotators", "")).split(",") if n.strip()]
        campaign = svc.create_campaign(
            _store(request), str(form.get("name", "")), settings, items,
            overlap=int(str(form.get("overlap") or 1)),
            guidelines=str(form.get("guidelines", "")), annotators=names or None)
    except ValueError as exc:
        message = str(exc).replace(str(Path(tempfile.gettempdir())), "upload")
        return _admin_page(request, error=f"campaign not created: {message}", status=422)
    return RedirectResponse(f"/admin/c/{campaign.id}", status_code=303)


@router.post("/admin/annotators")
async def add_annotator(request: Request) -> Response:
    who, form = await _admin_form(request)
    name, role = str(form.get("name", "")), str(form.get("role", "annotator"))
    try:
        token = svc.add_annotator(_store(request), name, role)
    except ServeError as exc:
        return _admin_page(request, error=str(exc), status=exc.status)
    return _admin_page(request, new_token={"name": name.strip(), "token": token})


@router.post("/admin/annotators/revoke")
async def revoke(request: Request) -> Response:
    who, form = await _admin_form(request)
    try:
        svc.revoke_annotator(_store(request), str(form.get("name", "")))
    except ServeError as exc:
        return _admin_page(request, error=str(exc), status=exc.status)
    return RedirectResponse("/admin", status_code=303)


@router.get("/admin/c/{campaign_id}")
def admin_campaign(campaign_id: int, request: Request) -> Response:
    from .stats import campaign_stats

    who = _admin(request)
    campaign = _campaign_for(request, campaign_id, who)
    return _page(request, "admin_campaign.html", campaign=campaign,
                 stats=campaign_stats(_store(request), campaign),
                 formats=export_formats(campaign))


@router.post("/admin/c/{campaign_id}/status")
async def campaign_status(campaign_id: int, request: Request) -> Response:
    who, form = await _admin_form(request)
    campaign = _campaign_for(request, campaign_id, who)
    try:
        svc.set_campaign_status(_store(request), campaign, str(form.get("status", "")))
    except ServeError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return RedirectResponse(f"/admin/c/{campaign_id}", status_code=303)


@router.get("/admin/c/{campaign_id}/export")
def export(campaign_id: int, request: Request, format: str = "prefkit") -> Response:
    from ..data.io import write_records

    who = _admin(request)
    campaign = _campaign_for(request, campaign_id, who)
    formats = export_formats(campaign)
    if format not in formats:
        raise HTTPException(422, f"format: expected one of {', '.join(formats)}")
    records = [label.record for label in svc.campaign_labels(_store(request), campaign)]
    with tempfile.TemporaryDirectory(prefix="prefkit-export-") as tmp:
        path = Path(tmp) / "labels.jsonl"
        try:
            report = write_records(records, path, format, keep_empty=False)
        except ValueError as exc:
            raise HTTPException(422, f"cannot export as {format}: {exc}") from None
        if not report.written:
            ledger = "; ".join(f"{n} {reason}" for reason, n in report.dropped.items())
            raise HTTPException(422, f"nothing to export as {format}"
                                     + (f" (dropped: {ledger})" if ledger else ": no labels"))
        body = path.read_bytes()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{campaign.name}-{format}.jsonl")
    return Response(body, media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{name}"'})

