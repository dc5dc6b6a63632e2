"""Shared helpers of the `prefkit serve` tests (tests/test_serve_*.py): stores on SQLite or a
fresh PostgreSQL schema, an API client per person, campaigns and labels through the REST API.

Not a conftest: the test modules import what they use (``from serve_fixtures import ...``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from store_backends import BACKENDS, PG_ENV, PG_SKIP, backend_url  # noqa: F401  (re-exported)

APP_TABLES = {"annotators", "campaigns", "items", "assignments", "labels", "records"}


def fast_settings(**changes: Any):
    """Serve settings without a practical rate limit (the tests make many quick requests)."""
    from prefkit.serve.app import ServeSettings

    return ServeSettings(**{"rate": 1e6, "burst": 1e6, **changes})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    """One person's view of the REST API (a TestClient with their token)."""

    def __init__(self, client: Any, token: str, name: str = ""):
        self.client = client
        self.token = token
        self.name = name
        self.headers = bearer(token)

    def request(self, method: str, path: str, *, headers: dict | None = None, **kw: Any):
        return self.client.request(method, path, headers={**self.headers, **(headers or {})},
                                   **kw)

    def get(self, path: str, **kw: Any):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any):
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any):
        return self.request("DELETE", path, **kw)

    def next(self, cid: int) -> dict[str, Any] | None:
        """The assignment handed out (None when nothing is left); asserts 200."""
        r = self.post(f"/api/campaigns/{cid}/next")
        assert r.status_code == 200, r.text
        return r.json()["assignment"]

    def label(self, cid: int, assignment_id: int, answer: dict[str, Any], key: str | None = None,
              seconds: float | None = None, **params: Any):
        """Submit an answer: the raw response (status not checked)."""
        body: dict[str, Any] = {"assignment_id": assignment_id, "answer": answer,
                                "idempotency_key": key or uuid.uuid4().hex}
        if seconds is not None:
            body["seconds"] = seconds
        return self.post(f"/api/campaigns/{cid}/labels", json=body, params=params)

    def create_campaign(self, name: str, task: str, items: list[dict[str, Any]],
                        **body: Any) -> dict[str, Any]:
        r = self.post("/api/campaigns", json={"name": name, "task": task, "items": items,
                                              **body})
        assert r.status_code == 201, r.text
        return r.json()


def people(store: Any, names: list[str]) -> dict[str, str]:
    """Tokens of an admin (``"admin"``) and of annotators ``names``, issued on ``store``."""
    from prefkit.serve import service as svc

    tokens = {"admin": svc.add_annotator(store, "admin", "admin")}
    for name in names:
        tokens[name] = svc.add_annotator(store, name)
    return tokens


def pair_rows(n: int, *, prefix: str = "item") -> list[dict[str, Any]]:
    """``n`` candidate rows of two responses with model names (kept from annotators)."""
    return [{"prompt": f"{prefix} prompt {i}",
             "responses": [f"{prefix} {i} response one", f"{prefix} {i} response two"],
             "models": ["secret-model-alpha", "secret-model-beta"]} for i in range(n)]


def answer_for(assignment: dict[str, Any], row: dict[str, Any], wanted: str) -> dict[str, Any]:
    """A pairwise answer in display terms that means ``wanted`` (``a``/``b``/``tie``/
    ``both_bad``) in the item's own order."""
    if wanted in ("tie", "both_bad"):
        return {"choice": wanted}
    target = row["responses"][0 if wanted == "a" else 1]
    return {"choice": "first" if assignment["responses"][0] == target else "second"}


def shown_order(assignment: dict[str, Any], row: dict[str, Any]) -> list[int]:
    """The display order of an assignment (indices into the item's responses, which are
    distinct texts in these tests)."""
    return [row["responses"].index(text) for text in assignment["responses"]]


def table_names(store: Any) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names())


def count_rows(store: Any, table: str) -> int:
    return store.read(lambda conn: conn.execute(
        sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def label_everything(url: str, token: str, campaign: str, start: Any, out: Any) -> None:
    """A worker process (spawn): open its own store on ``url``, then take and label items of
    ``campaign`` until none is left, asking for each item at the same moment as the other
    workers (``start``: a barrier, aborted by the first worker that finds nothing left); puts
    ``(name, [item ids])`` on ``out`` (or ``(name, error text)``)."""
    import threading
    import traceback

    from prefkit.data.store import FeedbackStore
    from prefkit.serve import service as svc

    name = "?"
    try:
        with FeedbackStore(url) as store:
            person = svc.authenticate(store, token)
            name = person.name
            found = svc.get_campaign(store, campaign)
            answer = {"pairwise": {"choice": "tie"}, "binary": {"desirable": True}}[found.task]
            handed = []
            together = True
            while True:
                if together:
                    try:
                        start.wait(60)
                    except threading.BrokenBarrierError:
                        together = False
                a = svc.next_assignment(store, found, person)
                if a is None:
                    start.abort()
                    break
                handed.append(a.item_id)
                svc.submit_label(store, found, person, a.id, answer, f"{name}-{a.id}")
        out.put((name, handed))
    except Exception:  # noqa: BLE001 - reported to the test
        out.put((name, traceback.format_exc()))


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a daemon thread on a free 127.0.0.1 port; yields its base
    URL (``http://127.0.0.1:PORT``) and stops the server on exit."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
