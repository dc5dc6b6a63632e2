"""The label route's hot path (``api.submit_direct``, called by the auth middleware past
FastAPI's routing) answers exactly as the route does, hands every request it does not take to
the route, and on SQLite writes in the event loop only when the write lock is free
(``FeedbackStore.transaction(wait=False)`` / ``WriteBusy``)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from prefkit.data.app_schema import LABELS
from prefkit.data.records import Comparison, Outcome, content_hash, record_id, to_dict
from prefkit.data.store import FeedbackStore, WriteBusy, record_row
from prefkit.serve import app as app_module
from prefkit.serve.app import create_app
from serve_fixtures import BACKENDS, Api, backend_url, count_rows, fast_settings, pair_rows, people


def _session(store, direct: bool, monkeypatch) -> list[tuple[int, object]]:
    """The same conversation with the label route; (status, body without lease times)."""
    calls = []
    real = app_module.submit_direct

    async def counted(*args, **kwargs):
        calls.append(1)
        await real(*args, **kwargs)

    monkeypatch.setattr(app_module, "submit_direct", counted)
    monkeypatch.setattr(app_module, "LABELS_PATH",
                        app_module.LABELS_PATH if direct else re.compile(r"(?!)"))
    tokens = people(store, ["alice", "bob"])
    out = []
    with TestClient(create_app(store, fast_settings())) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        cid = admin.create_campaign("hot", "pairwise", pair_rows(4), overlap=1)["id"]
        a = alice.next(cid)
        b = bob.next(cid)
        url = f"/api/campaigns/{cid}/labels"
        h = alice.headers
        requests = [
            ({"assignment_id": a["assignment_id"], "idempotency_key": "k1",
              "answer": {"choice": "tie"}, "seconds": 3.5}, "?next=true"),
            ({"assignment_id": a["assignment_id"], "idempotency_key": "k1",
              "answer": {"choice": "tie"}, "seconds": 3.5}, "?next=true"),  # replay
            ({"assignment_id": a["assignment_id"], "idempotency_key": "k2",
              "answer": {"choice": "tie"}}, ""),  # already labelled: 409
            ({"assignment_id": b["assignment_id"], "idempotency_key": "k3",
              "answer": {"choice": "tie"}}, ""),  # bob's: 404
            ({"assignment_id": a["assignment_id"] + 1, "idempotency_key": "k1",
              "answer": {"choice": "tie"}}, ""),  # key of another submission: 409
            ({"assignment_id": 10**6, "idempotency_key": "k4", "answer": {"choice": "tie"}},
             ""),  # no such assignment: 404
            ({"assignment_id": a["assignment_id"], "idempotency_key": "k5",
              "answer": {"choice": "nope"}}, ""),  # labelled already: 409
            ({"assignment_id": b["assignment_id"], "idempotency_key": "k5",
              "answer": {"choice": "nope"}}, ""),  # bob's, checked before the answer: 404
            ({"assignment_id": 0, "idempotency_key": "k6", "answer": {}}, ""),  # body: 422
            ({"assignment_id": 1, "idempotency_key": "k7", "answer": {}, "extra": 1}, ""),
        ]
        for body, query in requests:
            r = client.post(url + query, json=body, headers=h)
            out.append((r.status_code, _stable(r.json())))
        n = client.post(url + "?next=true", headers=h, json={}).json()  # route's 422
        out.append((0, _stable(n)))
        r = client.post(url + "?next=True", headers=h, json={
            "assignment_id": b["assignment_id"], "idempotency_key": "k8",
            "answer": {"choice": "first"}})  # a query the hot path leaves to the route
        out.append((r.status_code, _stable(r.json())))
        r = client.post(f"/api/campaigns/{cid + 5}/labels", headers=h, json={
            "assignment_id": 1, "idempotency_key": "k9", "answer": {}})
        out.append((r.status_code, _stable(r.json())))
        r = client.post(url, json=requests[0][0])  # no token: 401
        out.append((r.status_code, _stable(r.json())))
    out.append(("direct calls", bool(calls)))
    return out


def _stable(body):
    """``body`` without what differs between two runs: lease times, the (random) display
    order."""
    if isinstance(body, dict):
        return {k: sorted(v) if k == "responses" else _stable(v)
                for k, v in body.items() if k != "lease_expires"}
    if isinstance(body, list):
        return [_stable(v) for v in body]
    return body


def test_the_hot_path_answers_as_the_route_does(tmp_path, monkeypatch):
    with FeedbackStore(tmp_path / "direct.db") as store:
        direct = _session(store, True, monkeypatch)
        n_direct = count_rows(store, "labels")
    with FeedbackStore(tmp_path / "route.db") as store:
        routed = _session(store, False, monkeypatch)
        n_routed = count_rows(store, "labels")
    assert direct[-1] == ("direct calls", True) and routed[-1] == ("direct calls", False)
    assert direct[:-1] == routed[:-1]
    assert [s for s, _ in direct[:10]] == [201, 200, 409, 404, 409, 404, 409, 404, 422, 422]
    assert n_direct == n_routed == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_now_or_never(backend, tmp_path):
    with backend_url(backend, tmp_path) as url, FeedbackStore(url) as store:
        if backend != "sqlite":
            with pytest.raises(WriteBusy):
                store.transaction(lambda conn: 1, wait=False)
            return
        assert store.transaction(lambda conn: conn.execute(sa.select(1)).scalar(),
                                 wait=False) == 1
        with store._write_lock, pytest.raises(WriteBusy) as here:
            store.transaction(lambda conn: 1, wait=False)
        assert here.value.here
        other = sqlite3.connect(store.engine.url.database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writing
        with pytest.raises(WriteBusy) as there:
            store.transaction(lambda conn: conn.execute(sa.delete(LABELS)), wait=False)
        assert not there.value.here
        other.execute("ROLLBACK")
        other.close()


def test_a_label_waits_for_another_process_writing(tmp_path):
    """Another process holds SQLite's write lock: the label is stored once it lets go (in a
    worker thread; the event loop is not blocked)."""
    with FeedbackStore(tmp_path / "x.db") as store:
        tokens = people(store, ["alice"])
        with TestClient(create_app(store, fast_settings())) as client:
            admin, alice = Api(client, tokens["admin"]), Api(client, tokens["alice"])
            cid = admin.create_campaign("busy", "pairwise", pair_rows(2))["id"]
            a = alice.next(cid)
            other = sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None,
                                    check_same_thread=False)
            other.execute("BEGIN IMMEDIATE")
            release = threading.Timer(0.3, lambda: other.execute("ROLLBACK"))
            release.start()
            start = time.perf_counter()
            r = alice.label(cid, a["assignment_id"], {"choice": "first"}, key="k", next="true")
            release.join()
            other.close()
            assert r.status_code == 201 and time.perf_counter() - start >= 0.25
            assert r.json()["next"] is not None
        assert count_rows(store, "labels") == store.count() == 1


def test_record_row_matches_the_record_functions():
    for record in (Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.TIE,
                              metadata={"z": 1, "a": [1, 2]}),
                   Comparison(prompt="p", response_a="a", response_b="b",
                              outcome=Outcome.A, id="given")):
        row = record_row(record)
        assert row["id"] == record_id(record)
        assert row["content_hash"] == content_hash(record)
        assert row["payload"] == __import__("orjson").dumps(
            {**to_dict(record), "id": record_id(record)}).decode()
