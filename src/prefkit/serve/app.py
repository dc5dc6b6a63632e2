"""The annotation and arena web app: ``create_app(store)`` builds it, ``prefkit serve`` runs it
under uvicorn.

Layers, outermost first: security headers (CSP without inline scripts) -> request-body limit
(413) -> authentication and per-token rate limit (the person is put on ``request.state``) ->
the REST API (:mod:`prefkit.serve.api`) and the server-rendered pages
(:mod:`prefkit.serve.pages`). Everything the app stores goes through
:mod:`prefkit.serve.service` into the feedback store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..data.store import FeedbackStore
from . import service as svc
from .api import LABELS_PATH, submit_direct
from .security import BodyLimit, RateLimit, SecurityHeaders, request_token

HERE = Path(__file__).parent
PUBLIC_PATHS = ("/login", "/static/", "/openapi.json", "/docs", "/healthz")


@dataclass
class ServeSettings:
    """``max_body_bytes``: largest request body (413 above); ``rate`` / ``burst``: requests per
    second per token (429 above); ``secure_cookies``: mark the session cookie Secure (behind
    HTTPS)."""

    max_body_bytes: int = 1 << 20
    rate: float = 50.0
    burst: float = 100.0
    secure_cookies: bool = False


WORKER_ENV = "PREFKIT_SERVE_WORKER"
"""Environment variable through which ``prefkit serve --workers N`` hands each worker process
its store URL and settings (JSON)."""


def app_from_env() -> FastAPI:
    """The app of one worker process of ``prefkit serve --workers N`` (uvicorn's factory): the
    store and settings from :data:`WORKER_ENV`."""
    import json

    spec = json.loads(os.environ[WORKER_ENV])
    return create_app(spec["store"], ServeSettings(**spec["settings"]))


def create_app(store: FeedbackStore | str | os.PathLike, settings: ServeSettings | None = None
               ) -> FastAPI:
    """The app on ``store`` (a :class:`~prefkit.data.store.FeedbackStore`, or its path/URL)."""
    from . import api, pages

    settings = settings or ServeSettings()
    if not isinstance(store, FeedbackStore):
        store = FeedbackStore(store)
    app = FastAPI(title="prefkit annotation and arena API", version="1",
                  description=api.__doc__, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.settings = settings

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_exception_handler(pages.SignInRequired, pages.sign_in_page)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(Authenticate, store=store,
                       limiter=RateLimit(settings.rate, settings.burst))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    return app


class Authenticate:
    """Plain ASGI middleware: the person of the request's token (bearer header, else the
    session cookie) goes to ``request.state.person`` (None without a valid token); the rate
    limit is applied per token (per client address before sign-in), static files excepted."""

    def __init__(self, app: Any, store: FeedbackStore, limiter: RateLimit):
        self.app = app
        self.store = store
        self.limiter = limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"] if k in (b"authorization", b"cookie")}
        token = request_token(headers, _cookies(headers.get("cookie")))
        person = None
        if token is not None:
            person = svc.cached_person(self.store, token)
            if person is svc.UNKNOWN:
                person = await run_in_threadpool(svc.authenticate, self.store, token)
        scope.setdefault("state", {})["person"] = person
        if not scope["path"].startswith("/static/"):
            client = scope.get("client")
            key = (svc.hash_token(token) if person is not None
                   else f"ip:{client[0] if client else '?'}")
            wait = self.limiter.check(key)
            if wait > 0:
                response = JSONResponse({"detail": "rate limit: slow down"}, status_code=429,
                                        headers={"Retry-After": str(max(1, round(wait + 0.5)))})
                await response(scope, receive, send)
                return
        if person is not None and scope["method"] == "POST":
            labels = LABELS_PATH.fullmatch(scope["path"])
            if labels is not None:  # the hot route, past FastAPI's routing
                await submit_direct(self.app, scope, receive, send, self.store, person,
                                    int(labels[1]))
                return
        await self.app(scope, receive, send)


def _cookies(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header is no session
        return {}
    return {k: v.value for k, v in jar.items()}
