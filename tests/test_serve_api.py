"""The REST API of `prefkit serve` through FastAPI's TestClient: overlap and blinding with six
annotators, idempotent submissions, undo / skip / closed and restricted campaigns, every task's
answer validation and the records answers become, the security guards (401 / 403 / 413 / 429,
CSP, SQL-injection strings, reading others' labels), agreement statistics against independent
implementations, and the arena (live leaderboard = `prefkit arena rank` on the export; K-wise
battles; convergence of the matchmaking vs random pairs, a slow test).

The overlap and idempotency tests also run on PostgreSQL when PREFKIT_TEST_POSTGRES_URL is set
(each in a fresh schema)."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter, defaultdict

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefkit.cli import app as cli
from prefkit.data.app_schema import LABELS
from prefkit.data.records import (
    Annotator,
    AnnotatorKind,
    Binary,
    Comparison,
    Critique,
    Outcome,
    Ranking,
    Rating,
    to_dict,
)
from prefkit.data.store import FeedbackStore
from prefkit.serve import api as api_module
from prefkit.serve import service as svc
from prefkit.serve.app import ServeSettings, create_app
from prefkit.serve.service import label_record_id
from serve_fixtures import (
    APP_TABLES,
    BACKENDS,
    Api,
    answer_for,
    backend_url,
    bearer,
    count_rows,
    fast_settings,
    pair_rows,
    people,
    shown_order,
    table_names,
)

runner = CliRunner()
ASSIGNMENT_KEYS = {"assignment_id", "campaign_id", "item_id", "prompt", "responses",
                   "lease_expires"}
INJECTIONS = ["'); DROP TABLE labels;--", "\" OR 1=1 --", "x'; DELETE FROM records WHERE 'a'='a",
              "Robert'); DROP TABLE annotators;--"]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """An empty store on SQLite, or (when configured) in a fresh PostgreSQL schema."""
    with backend_url(request.param, tmp_path) as url, FeedbackStore(url) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path):
    with FeedbackStore(tmp_path / "x.db") as opened:
        yield opened


def open_client(store, settings: ServeSettings | None = None) -> TestClient:
    return TestClient(create_app(store, settings or fast_settings()))


def person_id(store, token: str) -> int:
    return svc.authenticate(store, token).id


def human(name: str) -> Annotator:
    return Annotator(name, AnnotatorKind.HUMAN)


def assert_csp(response) -> None:
    csp = response.headers.get("content-security-policy")
    assert csp, (response.request.url, response.status_code)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"


class SeededSecrets:
    """Stands in for the service's ``secrets`` module: the server's random draws (display
    order, matchmaking ties) come from ``seed``; tokens stay truly random."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def token_urlsafe(self, nbytes: int = 32) -> str:
        import secrets

        return secrets.token_urlsafe(nbytes)


# ---------------------------------------------------------------------------------------------
# 1. Overlap and blinding
# ---------------------------------------------------------------------------------------------


def test_overlap_three_six_annotators_interleaved_blind(store):
    names = [f"ann{i}" for i in range(6)]
    tokens = people(store, names)
    rows = pair_rows(10)
    by_prompt = {row["prompt"]: (position, row) for position, row in enumerate(rows)}
    rng = random.Random(7)
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        cid = admin.create_campaign("overlap", "pairwise", rows, overlap=3)["id"]
        apis = {n: Api(client, tokens[n], n) for n in names}
        pending: dict[str, dict] = {}
        handed: dict[str, list[int]] = defaultdict(list)
        given: dict[tuple[str, int], dict] = {}  # (annotator, item position) -> what they did
        texts: dict[str, list[str]] = defaultdict(list)  # everything each annotator received
        covered: set[tuple[str, tuple[int, ...]]] = set()
        active = set(names)
        while active:
            name = rng.choice(sorted(active))
            api = apis[name]
            if name not in pending:
                r = api.post(f"/api/campaigns/{cid}/next")
                assert r.status_code == 200
                texts[name].append(r.text)
                assignment = r.json()["assignment"]
                if assignment is None:
                    active.discard(name)
                    continue
                assert set(assignment) == ASSIGNMENT_KEYS
                handed[name].append(assignment["item_id"])
                pending[name] = assignment
                continue
            assignment = pending.pop(name)
            position, row = by_prompt[assignment["prompt"]]
            shown = tuple(shown_order(assignment, row))
            assert sorted(shown) == [0, 1]
            assert assignment["responses"] == [row["responses"][i] for i in shown]
            # choices in display terms: cover 'first' and 'second' on a swapped order first
            n_done = sum(1 for (who, _) in given if who == name)
            choice = ["first", "second", "tie", "both_bad"][n_done % 4]
            if shown == (1, 0):
                for wanted in ("first", "second"):
                    if (wanted, shown) not in covered:
                        choice = wanted
                        break
            covered.add((choice, shown))
            rationale = f"rationale of {name} on {position}"
            r = api.label(cid, assignment["assignment_id"],
                          {"choice": choice, "rationale": rationale})
            assert r.status_code == 201, r.text
            texts[name].append(r.text)
            given[(name, position)] = {"choice": choice, "shown": list(shown),
                                       "rationale": rationale, "record_id": r.json()["record_id"]}
        assert {("first", (1, 0)), ("second", (1, 0))} <= covered

        # nobody got an item twice; every item got exactly its overlap
        for name in names:
            assert len(handed[name]) == len(set(handed[name])), name
        per_item = Counter(position for (_, position) in given)
        assert per_item == {position: 3 for position in range(len(rows))}
        assert sum(len(v) for v in handed.values()) == 30

        # nobody ever saw a model name, another annotator's name or label
        for name, bodies in texts.items():
            for body in bodies:
                assert "secret-model" not in body
                for other in names:
                    if other != name:
                        assert f"of {other} on" not in body and f'"{other}"' not in body
        mine = apis["ann0"].get("/api/campaigns")
        assert mine.status_code == 200
        assert "secret-model" not in mine.text and "ann1" not in mine.text
        assert mine.json()[0]["progress"] == {"done": len(handed["ann0"]), "left": 0}

        # the stored records: display order recorded, answers mapped back to the item's order
        records = admin.get(f"/api/campaigns/{cid}/labels").json()
        assert len(records) == 30
        ids = {person_id(store, tokens[n]): n for n in names}
        for rec in records:
            name = rec["annotator"]["id"]
            position = rec["metadata"]["item"]
            did = given[(name, position)]
            shown = did["shown"]
            assert rec["metadata"]["shown"] == shown
            expected = {"first": "a" if shown[0] == 0 else "b",
                        "second": "a" if shown[1] == 0 else "b",
                        "tie": "tie", "both_bad": "both_bad"}[did["choice"]]
            assert rec["outcome"] == expected
            if did["choice"] == "first" and shown == [1, 0]:
                assert rec["outcome"] == "b"
            assert rec["response_a"] == rows[position]["responses"][0]
            assert rec["rationale"] == did["rationale"]
            assert rec["id"] == did["record_id"]
            assert ids[int(rec["id"].rsplit("-a", 1)[1])] == name
        progress = admin.get(f"/api/campaigns/{cid}").json()["progress"]
        assert (progress["items"], progress["complete"], progress["labels"]) == (10, 10, 30)
    assert store.count() == count_rows(store, "labels") == 30


# ---------------------------------------------------------------------------------------------
# 3. Idempotency
# ---------------------------------------------------------------------------------------------


def test_idempotency_key_replays_and_conflicts(store):
    tokens = people(store, ["alice", "bob"])
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        cid = admin.create_campaign("idem", "pairwise", pair_rows(3), overlap=2)["id"]
        a = alice.next(cid)
        first = alice.label(cid, a["assignment_id"], {"choice": "tie"}, key="key-1")
        assert first.status_code == 201 and first.json()["replayed"] is False
        # the response was "lost": the client sends the same request again
        again = alice.label(cid, a["assignment_id"], {"choice": "tie"}, key="key-1")
        assert again.status_code == 200
        assert again.json() == {**first.json(), "replayed": True}
        # a different answer under the same key is still the first submission (nothing new)
        third = alice.label(cid, a["assignment_id"], {"choice": "first"}, key="key-1")
        assert third.status_code == 200 and third.json()["label_id"] == first.json()["label_id"]
        # the same key from another annotator: a conflict
        b = bob.next(cid)
        stolen = bob.label(cid, b["assignment_id"], {"choice": "tie"}, key="key-1")
        assert stolen.status_code == 409
        # a new key for an item already labelled: refused, nothing stored
        dup = alice.label(cid, a["assignment_id"], {"choice": "tie"}, key="key-2")
        assert dup.status_code == 409
        ok = bob.label(cid, b["assignment_id"], {"choice": "second"}, key="key-3")
        assert ok.status_code == 201
        # with ?next=true the replay still answers without storing
        n = alice.next(cid)
        r1 = alice.label(cid, n["assignment_id"], {"choice": "first"}, key="key-4", next="true")
        r2 = alice.label(cid, n["assignment_id"], {"choice": "first"}, key="key-4", next="true")
        assert (r1.status_code, r2.status_code) == (201, 200)
        assert r1.json()["label_id"] == r2.json()["label_id"]
        labels = admin.get(f"/api/campaigns/{cid}/labels").json()
    assert len(labels) == 3
    assert store.count() == count_rows(store, "labels") == 3
    stored = store.get(first.json()["record_id"])
    assert stored.outcome is Outcome.TIE
    keys = store.read(lambda c: c.execute(sa.select(LABELS.c.idempotency_key)).scalars().all())
    assert sorted(keys) == ["key-1", "key-3", "key-4"]


# ---------------------------------------------------------------------------------------------
# 4. Undo, skip, closed and restricted campaigns
# ---------------------------------------------------------------------------------------------


def test_undo_deletes_the_record_and_hands_the_item_back_in_the_same_order(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "bob"])
    rows = pair_rows(4)
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        cid = admin.create_campaign("undo", "pairwise", rows, overlap=1)["id"]
        # nothing to undo yet
        assert alice.post(f"/api/campaigns/{cid}/undo").status_code == 404
        first = alice.next(cid)
        r = alice.label(cid, first["assignment_id"], {"choice": "first"})
        assert r.status_code == 201
        rid = r.json()["record_id"]
        assert store.get(rid) is not None
        second = alice.next(cid)
        assert second["item_id"] != first["item_id"]
        # bob cannot undo alice's label
        assert bob.post(f"/api/campaigns/{cid}/undo").status_code == 404
        undone = alice.post(f"/api/campaigns/{cid}/undo")
        assert undone.status_code == 200
        back = undone.json()["assignment"]
        assert back["item_id"] == first["item_id"]
        assert back["assignment_id"] == first["assignment_id"]
        assert back["responses"] == first["responses"]  # the same display order
        assert store.get(rid) is None
        assert store.count() == count_rows(store, "labels") == 0
        # the item alice was looking at went back to the pool; the undone one is hers
        assert alice.next(cid)["item_id"] == first["item_id"]
        handed_bob = [bob.next(cid)["item_id"]]
        assert first["item_id"] not in handed_bob
        again = alice.label(cid, back["assignment_id"], {"choice": "second"})
        assert again.status_code == 201 and again.json()["record_id"] == rid
        record = store.get(rid)
        picked = shown_order(first, rows[record.metadata["item"]])[1]  # 'second' as shown
        assert record.outcome is (Outcome.A if picked == 0 else Outcome.B)
        assert record.metadata["shown"] == shown_order(first, rows[record.metadata["item"]])
    assert store.count() == count_rows(store, "labels") == 1


def test_skip_is_never_offered_again_to_that_person_but_to_others(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "bob"])
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        cid = admin.create_campaign("skip", "binary", [
            {"prompt": f"p{i}", "responses": [f"r{i}"]} for i in range(3)], overlap=1)["id"]
        first = alice.next(cid)
        # bob cannot skip alice's item
        assert bob.post(f"/api/campaigns/{cid}/skip",
                        json={"assignment_id": first["assignment_id"]}).status_code == 404
        r = alice.post(f"/api/campaigns/{cid}/skip", json={"assignment_id": first["assignment_id"]})
        assert r.status_code == 200
        seen = [first["item_id"]]
        following = r.json()["assignment"]
        while following is not None:
            assert following["item_id"] != first["item_id"]
            seen.append(following["item_id"])
            assert alice.label(cid, following["assignment_id"],
                               {"desirable": True}).status_code == 201
            following = alice.next(cid)
        assert len(seen) == 3
        # skipping twice / a skipped assignment cannot be labelled
        assert alice.post(f"/api/campaigns/{cid}/skip",
                          json={"assignment_id": first["assignment_id"]}).status_code == 404
        assert alice.label(cid, first["assignment_id"], {"desirable": True}).status_code == 409
        got = bob.next(cid)
        assert got["item_id"] == first["item_id"]
        assert bob.label(cid, got["assignment_id"], {"desirable": False}).status_code == 201
        assert bob.next(cid) is None
        assert alice.get(f"/api/campaigns/{cid}").json()["progress"] == {"done": 2, "left": 0}


def test_closed_campaign_refuses_work_and_reopens(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice"])
    with open_client(store) as client:
        admin, alice = Api(client, tokens["admin"]), Api(client, tokens["alice"])
        cid = admin.create_campaign("closing", "pairwise", pair_rows(2))["id"]
        a = alice.next(cid)
        r = admin.post(f"/api/campaigns/{cid}/status", json={"status": "closed"})
        assert r.status_code == 200 and r.json()["status"] == "closed"
        assert alice.post(f"/api/campaigns/{cid}/next").status_code == 409
        assert alice.label(cid, a["assignment_id"], {"choice": "tie"}).status_code == 409
        assert alice.post(f"/api/campaigns/{cid}/undo").status_code == 409
        assert store.count() == 0
        assert admin.post(f"/api/campaigns/{cid}/status",
                          json={"status": "reopen"}).status_code == 422
        assert admin.post(f"/api/campaigns/{cid}/status",
                          json={"status": "open"}).json()["status"] == "open"
        assert alice.label(cid, a["assignment_id"], {"choice": "tie"}).status_code == 201


def test_restricted_campaign_is_invisible_to_others(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "bob"])
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        open_id = admin.create_campaign("for-all", "pairwise", pair_rows(1))["id"]
        cid = admin.create_campaign("alice-only", "pairwise", pair_rows(2, prefix="r"),
                                    annotators=["alice"])["id"]
        assert [c["name"] for c in bob.get("/api/campaigns").json()] == ["for-all"]
        assert [c["name"] for c in alice.get("/api/campaigns").json()] == ["for-all",
                                                                           "alice-only"]
        assert [c["id"] for c in admin.get("/api/campaigns").json()] == [open_id, cid]
        a = alice.next(cid)
        for method, path, body in [
                ("GET", f"/api/campaigns/{cid}", None),
                ("POST", f"/api/campaigns/{cid}/next", None),
                ("POST", f"/api/campaigns/{cid}/labels",
                 {"assignment_id": a["assignment_id"], "idempotency_key": "b1",
                  "answer": {"choice": "tie"}}),
                ("POST", f"/api/campaigns/{cid}/skip", {"assignment_id": a["assignment_id"]}),
                ("POST", f"/api/campaigns/{cid}/undo", None),
                ("GET", f"/api/campaigns/{cid}/labels", None),
                ("GET", f"/api/campaigns/{cid}/leaderboard", None)]:
            r = bob.client.request(method, path, json=body, headers=bob.headers)
            assert r.status_code == 404, (method, path, r.status_code)
            assert "alice-only" not in r.text
        assert alice.label(cid, a["assignment_id"], {"choice": "tie"}).status_code == 201
        # an unknown campaign is 404 too (nothing tells bob which ids exist)
        assert bob.get("/api/campaigns/999").status_code == 404


# ---------------------------------------------------------------------------------------------
# 5. Every task's answers: validation and the records they become
# ---------------------------------------------------------------------------------------------


class Task:
    """A campaign of one task for one annotator: take items, submit, build expected records."""

    def __init__(self, store, client, tokens, name, task, rows, settings=None):
        self.store, self.name, self.rows = store, name, rows
        self.admin = Api(client, tokens["admin"])
        self.alice = Api(client, tokens["alice"])
        self.alice_id = person_id(store, tokens["alice"])
        self.cid = self.admin.create_campaign(name, task, rows, settings=settings or {})["id"]
        self.round = 0

    def take(self) -> tuple[dict, int, dict]:
        a = self.alice.next(self.cid)
        position = next(i for i, row in enumerate(self.rows) if row["prompt"] == a["prompt"])
        return a, position, self.rows[position]

    def refuse(self, a, answer, field_name: str) -> None:
        """A refused answer stores nothing and leaves its idempotency key unused."""
        r = self.alice.label(self.cid, a["assignment_id"], answer, key=f"key-{self.round}")
        assert r.status_code == 422, (answer, r.text)
        assert f"answer.{field_name}" in r.json()["detail"], r.json()

    def accept(self, a, answer, seconds: float | None = None) -> dict:
        """Submit under the key the refused answers used; returns the stored record."""
        r = self.alice.label(self.cid, a["assignment_id"], answer, key=f"key-{self.round}",
                             seconds=seconds)
        assert r.status_code == 201, r.text
        assert r.json()["replayed"] is False
        self.round += 1
        assert r.json()["record_id"] == label_record_id(self.cid, a["item_id"], self.alice_id)
        records = self.alice.get(f"/api/campaigns/{self.cid}/labels").json()
        return next(rec for rec in records if rec["id"] == r.json()["record_id"])

    def meta(self, a, position, row, **extra) -> dict:
        return {"campaign": self.name, "item": position, "shown": shown_order(a, row), **extra}

    def labels(self) -> int:
        return len(self.alice.get(f"/api/campaigns/{self.cid}/labels").json())


@pytest.fixture
def task_env(sqlite_store):
    tokens = people(sqlite_store, ["alice"])
    with open_client(sqlite_store) as client:
        yield lambda *args, **kw: Task(sqlite_store, client, tokens, *args, **kw)


def test_pairwise_default_choices_and_records(task_env):
    t = task_env("pw", "pairwise", pair_rows(4))
    for choice, outcome in [("first", None), ("second", None), ("tie", Outcome.TIE),
                            ("both_bad", Outcome.BOTH_BAD)]:
        a, position, row = t.take()
        t.refuse(a, {"choice": "left"}, "choice")
        t.refuse(a, {"choice": choice, "strength": 2}, "strength")  # strength is off
        t.refuse(a, {"choice": choice, "rationale": 5}, "rationale")
        t.refuse(a, {"choice": choice, "rationale": "x" * 20_001}, "rationale")
        if outcome is None:
            picked = shown_order(a, row)[0 if choice == "first" else 1]
            outcome = Outcome.A if picked == 0 else Outcome.B
        rec = t.accept(a, {"choice": choice, "rationale": f"because {choice}"},
                       seconds=4.25)
        expected = Comparison(prompt=row["prompt"], response_a=row["responses"][0],
                              response_b=row["responses"][1], outcome=outcome,
                              rationale=f"because {choice}", annotator=human("alice"),
                              metadata=t.meta(a, position, row, seconds=4.25), id=rec["id"])
        assert rec == to_dict(expected)
    assert t.labels() == 4


def test_pairwise_without_tie_or_both_bad(task_env):
    t = task_env("pw2", "pairwise", pair_rows(1),
                 settings={"allow_tie": False, "allow_both_bad": False})
    a, position, row = t.take()
    t.refuse(a, {"choice": "tie"}, "choice")
    t.refuse(a, {"choice": "both_bad"}, "choice")
    t.refuse(a, {}, "choice")
    rec = t.accept(a, {"choice": "second"})
    outcome = Outcome.A if shown_order(a, row)[1] == 0 else Outcome.B
    assert rec == to_dict(Comparison(
        prompt=row["prompt"], response_a=row["responses"][0], response_b=row["responses"][1],
        outcome=outcome, annotator=human("alice"), metadata=t.meta(a, position, row),
        id=rec["id"]))


def test_pairwise_strength_and_required_rationale(task_env):
    t = task_env("pw3", "pairwise", pair_rows(2),
                 settings={"strength": True, "rationale": "required"})
    a, position, row = t.take()
    t.refuse(a, {"choice": "first", "rationale": "r"}, "strength")  # missing
    for bad in (0, 4, 1.5, True, "2"):
        t.refuse(a, {"choice": "first", "strength": bad, "rationale": "r"}, "strength")
    t.refuse(a, {"choice": "first", "strength": 3}, "rationale")  # required
    t.refuse(a, {"choice": "first", "strength": 3, "rationale": "   "}, "rationale")
    rec = t.accept(a, {"choice": "first", "strength": 3, "rationale": "clearly better"})
    outcome = Outcome.A if shown_order(a, row)[0] == 0 else Outcome.B
    assert rec == to_dict(Comparison(
        prompt=row["prompt"], response_a=row["responses"][0], response_b=row["responses"][1],
        outcome=outcome, strength=3.0, rationale="clearly better", annotator=human("alice"),
        metadata=t.meta(a, position, row), id=rec["id"]))
    # a tie has no strength
    a, position, row = t.take()
    t.refuse(a, {"choice": "tie", "strength": 1, "rationale": "same"}, "strength")
    rec = t.accept(a, {"choice": "tie", "rationale": "same"})
    assert rec["outcome"] == "tie" and "strength" not in rec
    assert t.labels() == 2


def test_pairwise_rationale_off(task_env):
    t = task_env("pw4", "pairwise", pair_rows(1), settings={"rationale": "off"})
    a, position, row = t.take()
    t.refuse(a, {"choice": "tie", "rationale": "why not"}, "rationale")
    rec = t.accept(a, {"choice": "tie"})
    assert rec == to_dict(Comparison(
        prompt=row["prompt"], response_a=row["responses"][0], response_b=row["responses"][1],
        outcome=Outcome.TIE, annotator=human("alice"), metadata=t.meta(a, position, row),
        id=rec["id"]))


def test_ranking_tiers_with_ties_and_invalid_orders(task_env):
    rows = [{"prompt": f"rank {i}", "responses": [f"r{i}-{j}" for j in range(4)],
             "id": f"src-{i}"} for i in range(2)]
    t = task_env("rk", "ranking", rows)
    a, position, row = t.take()
    shown = shown_order(a, row)
    for bad in ([[0, 1], [2]],            # position 3 missing
                [[0, 1], [1, 2, 3]],      # 1 twice
                [[0], [1], [2], [4]],     # out of range
                [[0, 1, 2, 3], []],       # an empty tier
                [[0, True], [2, 3]],      # a bool is no position
                [],                        # nothing
                "0,1,2,3"):                 # not a list
        t.refuse(a, {"tiers": bad}, "tiers")
    t.refuse(a, {}, "tiers")
    rec = t.accept(a, {"tiers": [[2], [0, 3], [1]]})
    expected_tiers = [[shown[2]], [shown[0], shown[3]], [shown[1]]]
    assert rec == to_dict(Ranking(
        prompt=row["prompt"], responses=row["responses"], tiers=expected_tiers,
        annotator=human("alice"), metadata=t.meta(a, position, row, source_id=row["id"]),
        id=rec["id"]))
    # a strict order of display positions maps back to the item's order
    a, position, row = t.take()
    shown = shown_order(a, row)
    rec = t.accept(a, {"tiers": [[3], [2], [1], [0]]})
    assert rec["tiers"] == [[shown[3]], [shown[2]], [shown[1]], [shown[0]]]
    assert t.labels() == 2


def test_rating_scales_and_out_of_range(task_env):
    rows = [{"prompt": f"rate {i}", "responses": [f"answer {i}"]} for i in range(2)]
    t = task_env("rt", "rating", rows, settings={"scales": {"helpfulness": [0, 4],
                                                            "safety": [1, 7]}})
    a, position, row = t.take()
    t.refuse(a, {"scores": {"helpfulness": 5, "safety": 3}}, "scores.helpfulness")
    t.refuse(a, {"scores": {"helpfulness": 2, "safety": 0}}, "scores.safety")
    t.refuse(a, {"scores": {"helpfulness": 2}}, "scores.safety")  # missing
    t.refuse(a, {"scores": {"helpfulness": 2, "safety": 3, "tone": 1}}, "scores")
    t.refuse(a, {"scores": {"helpfulness": True, "safety": 3}}, "scores.helpfulness")
    t.refuse(a, {"scores": {"helpfulness": "2", "safety": 3}}, "scores.helpfulness")
    t.refuse(a, {"scores": [2, 3]}, "scores")
    rec = t.accept(a, {"scores": {"helpfulness": 2.5, "safety": 7}})
    assert rec == to_dict(Rating(
        prompt=row["prompt"], response=row["responses"][0],
        scores={"helpfulness": 2.5, "safety": 7.0},
        scales={"helpfulness": (0.0, 4.0), "safety": (1.0, 7.0)}, annotator=human("alice"),
        metadata=t.meta(a, position, row), id=rec["id"]))
    assert rec["metadata"]["shown"] == [0]


def test_rating_default_scales_are_helpsteer(task_env):
    t = task_env("rt2", "rating", [{"prompt": "p", "responses": ["r"]}])
    a, position, row = t.take()
    scores = {"helpfulness": 4, "correctness": 3, "coherence": 2, "complexity": 1,
              "verbosity": 0}
    t.refuse(a, {"scores": {**scores, "verbosity": 4.5}}, "scores.verbosity")
    rec = t.accept(a, {"scores": scores})
    assert rec["scales"] == {k: [0.0, 4.0] for k in scores}
    assert rec["scores"] == {k: float(v) for k, v in scores.items()}


def test_binary_answers(task_env):
    rows = [{"prompt": f"b{i}", "responses": [f"resp {i}"]} for i in range(2)]
    t = task_env("bn", "binary", rows)
    for desirable in (True, False):
        a, position, row = t.take()
        for bad in ("yes", 1, None):
            t.refuse(a, {"desirable": bad}, "desirable")
        rec = t.accept(a, {"desirable": desirable})
        assert rec == to_dict(Binary(
            prompt=row["prompt"], response=row["responses"][0], desirable=desirable,
            annotator=human("alice"), metadata=t.meta(a, position, row), id=rec["id"]))


def test_critique_answers(task_env):
    rows = [{"prompt": "explain", "responses": ["because"], "id": "rec-7"}]
    t = task_env("cr", "critique", rows)
    a, position, row = t.take()
    for bad in ({}, {"text": ""}, {"text": "  \n"}, {"text": 3}, {"text": "x" * 20_001}):
        t.refuse(a, bad, "text")
    rec = t.accept(a, {"text": "too short; no reasoning"})
    assert rec == to_dict(Critique(
        text="too short; no reasoning", target_id="rec-7", annotator=human("alice"),
        metadata=t.meta(a, position, row, source_id="rec-7", prompt="explain",
                        response="because"), id=rec["id"]))


def test_answer_that_is_not_an_object_and_unknown_fields(task_env):
    t = task_env("shape", "pairwise", pair_rows(1))
    a, _, _ = t.take()
    for body in ({"assignment_id": a["assignment_id"], "idempotency_key": "k", "answer": "first"},
                 {"assignment_id": a["assignment_id"], "idempotency_key": "k",
                  "answer": {"choice": "tie"}, "extra": 1},
                 {"assignment_id": a["assignment_id"], "idempotency_key": "",
                  "answer": {"choice": "tie"}},
                 {"assignment_id": a["assignment_id"], "idempotency_key": "k",
                  "answer": {"choice": "tie"}, "seconds": -1},
                 {"assignment_id": 0, "idempotency_key": "k", "answer": {"choice": "tie"}}):
        r = t.alice.post(f"/api/campaigns/{t.cid}/labels", json=body)
        assert r.status_code == 422, body
    assert t.labels() == 0


# ---------------------------------------------------------------------------------------------
# 6. Security
# ---------------------------------------------------------------------------------------------


def _api_routes(app) -> list[tuple[str, str, APIRoute]]:
    """Every (method, path, route) of the REST API: the router's routes, checked to be exactly
    the /api operations of the app's schema (nothing mounted elsewhere is missed)."""
    out = []
    for route in api_module.router.routes:
        assert isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in sorted(route.methods):
            out.append((method, route.path, route))
    schema = app.openapi()["paths"]
    assert {(m, p) for m, p, _ in out} == {(m.upper(), p) for p, ops in schema.items()
                                          if p.startswith("/api") for m in ops}
    return out


def _concrete(path: str, cid: int, name: str = "alice") -> str:
    return path.replace("{campaign_id}", str(cid)).replace("{name}", name)


def _uses(dependant, call) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)


def test_every_api_route_needs_a_valid_token(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "gone"])
    svc.revoke_annotator(store, "gone")
    app = create_app(store, fast_settings())
    routes = _api_routes(app)
    assert len(routes) >= 14
    with TestClient(app) as client:
        cid = Api(client, tokens["admin"]).create_campaign("c", "pairwise", pair_rows(1))["id"]
        for method, path, _ in routes:
            url = _concrete(path, cid)
            for headers in ({}, bearer("not-a-token"), bearer(tokens["gone"]),
                            {"Authorization": "Basic YWxpY2U6eA=="},
                            {"Cookie": "prefkit_token=not-a-token"}):
                r = client.request(method, url, json={}, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert_csp(r)
            assert r.headers.get("www-authenticate") == "Bearer"
        # and the same routes do answer with a token
        assert client.get("/api/me", headers=bearer(tokens["alice"])).json() == {
            "name": "alice", "role": "annotator"}
    # public: the schema and the sign-in page
    with TestClient(app) as client:
        schema = client.get("/openapi.json")
        assert schema.status_code == 200 and "/api/campaigns/{campaign_id}/labels" in \
            schema.json()["paths"]
        assert_csp(schema)
        login = client.get("/login")
        assert login.status_code == 200
        assert_csp(login)
    assert store.count() == 0


def test_annotator_token_on_admin_routes_is_403(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "bob"])
    app = create_app(store, fast_settings())
    admin_routes = {(m, p) for m, p, route in _api_routes(app)
                    if _uses(route.dependant, api_module.admin)}
    assert admin_routes == {
        ("POST", "/api/campaigns"), ("POST", "/api/campaigns/{campaign_id}/status"),
        ("GET", "/api/campaigns/{campaign_id}/stats"), ("GET", "/api/annotators"),
        ("POST", "/api/annotators"), ("DELETE", "/api/annotators/{name}")}
    bodies = {"/api/campaigns": {"name": "sneaky", "task": "pairwise",
                                 "items": pair_rows(1)},
              "/api/campaigns/{campaign_id}/status": {"status": "closed"},
              "/api/annotators": {"name": "mallory", "role": "admin"}}
    with TestClient(app) as client:
        admin = Api(client, tokens["admin"])
        cid = admin.create_campaign("c", "pairwise", pair_rows(1))["id"]
        for method, path in sorted(admin_routes):
            r = client.request(method, _concrete(path, cid, "bob"), json=bodies.get(path),
                               headers=bearer(tokens["alice"]))
            assert r.status_code == 403, (method, path, r.text)
            assert_csp(r)
        # nothing changed
        assert [c["name"] for c in admin.get("/api/campaigns").json()] == ["c"]
        assert admin.get(f"/api/campaigns/{cid}").json()["status"] == "open"
        assert [(p["name"], p["revoked"]) for p in admin.get("/api/annotators").json()] == [
            ("admin", False), ("alice", False), ("bob", False)]
        # the admin may
        r = admin.post("/api/annotators", json={"name": "carol"})
        assert r.status_code == 201 and svc.authenticate(store, r.json()["token"]).name == "carol"
        assert admin.delete("/api/annotators/bob").status_code == 204
        assert client.get("/api/me", headers=bearer(tokens["bob"])).status_code == 401
        assert admin.delete("/api/annotators/bob").status_code == 404


def test_revoked_token_stops_at_once_and_releases_leases(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "bob"])
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        cid = admin.create_campaign("rv", "pairwise", pair_rows(1), overlap=1)["id"]
        a = alice.next(cid)
        assert bob.next(cid) is None  # leased to alice
        assert admin.delete("/api/annotators/alice").status_code == 204
        assert alice.post(f"/api/campaigns/{cid}/next").status_code == 401
        assert alice.label(cid, a["assignment_id"], {"choice": "tie"}).status_code == 401
        assert bob.next(cid)["item_id"] == a["item_id"]
        # a new token for the same name works, the old one still does not
        r = admin.post("/api/annotators", json={"name": "alice"})
        assert r.status_code == 201
        assert client.get("/api/me", headers=bearer(r.json()["token"])).status_code == 200
        assert client.get("/api/me", headers=alice.headers).status_code == 401


def test_oversized_body_is_413_and_stores_nothing(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice"])
    with open_client(store, fast_settings(max_body_bytes=2000)) as client:
        admin, alice = Api(client, tokens["admin"]), Api(client, tokens["alice"])
        cid = admin.create_campaign("big", "pairwise", pair_rows(1))["id"]
        a = alice.next(cid)
        big = {"assignment_id": a["assignment_id"], "idempotency_key": "k",
               "answer": {"choice": "tie", "rationale": "x" * 3000}}
        r = alice.post(f"/api/campaigns/{cid}/labels", json=big)
        assert r.status_code == 413
        assert_csp(r)
        # streamed without a Content-Length: counted as it arrives
        raw = json.dumps(big).encode()

        def chunks():
            for start in range(0, len(raw), 500):
                yield raw[start:start + 500]

        r = alice.post(f"/api/campaigns/{cid}/labels", content=chunks(),
                       headers={"Content-Type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        assert store.count() == 0 and count_rows(store, "labels") == 0
        # and a request within the limit goes through
        small = {**big, "answer": {"choice": "tie", "rationale": "x" * 1000}}
        assert alice.post(f"/api/campaigns/{cid}/labels", json=small).status_code == 201
        # an admin cannot create an oversized campaign either
        r = admin.post("/api/campaigns", json={"name": "huge", "task": "pairwise",
                                               "items": pair_rows(40)})
        assert r.status_code == 413
    assert [c.name for c in svc.list_campaigns(store)] == ["big"]


def test_rate_limit_is_per_token_with_retry_after(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "bob"])
    # one request per 100 s on average, bursts of 2: a third quick request is always refused
    with open_client(store, ServeSettings(rate=0.01, burst=2)) as client:
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        codes = [alice.get("/api/me").status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = alice.get("/api/me")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert_csp(r)
        assert bob.get("/api/me").status_code == 200  # bob has his own bucket
        # requests without a valid token share their address's bucket
        anon = [client.get("/api/me").status_code for _ in range(3)]
        assert anon == [401, 401, 429]


def test_sql_injection_strings_are_stored_verbatim(sqlite_store):
    store = sqlite_store
    tokens = people(store, [])
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        voters = {}
        for text in INJECTIONS:
            r = admin.post("/api/annotators", json={"name": text})
            assert r.status_code == 201 and r.json()["name"] == text
            voters[text] = Api(client, r.json()["token"], text)
        assert [p["name"] for p in admin.get("/api/annotators").json()] == ["admin", *INJECTIONS]
        campaigns = {}
        for text in INJECTIONS:
            campaigns[text] = admin.create_campaign(
                text, "pairwise", [{"prompt": text, "responses": [text, text + "!"]}],
                overlap=len(INJECTIONS), annotators=INJECTIONS,
                guidelines=text)["id"]
        cr = admin.create_campaign("critiques " + INJECTIONS[0], "critique",
                                   [{"prompt": text, "responses": [text]}
                                    for text in INJECTIONS], overlap=1)["id"]
        assert [c["name"] for c in admin.get("/api/campaigns").json()] == [
            *INJECTIONS, "critiques " + INJECTIONS[0]]
        for text, voter in voters.items():
            me = voter.get("/api/me").json()
            assert me["name"] == text
            for cname, cid in campaigns.items():
                a = voter.next(cid)
                assert a["prompt"] == cname and sorted(a["responses"]) == [cname, cname + "!"]
                r = voter.label(cid, a["assignment_id"], {"choice": "tie", "rationale": text},
                                key=text + cname)
                assert r.status_code == 201, r.text
            a = voter.next(cr)
            assert voter.label(cr, a["assignment_id"], {"text": text},
                               key=text).status_code == 201
        # everything reads back verbatim
        for cname, cid in campaigns.items():
            got = admin.get(f"/api/campaigns/{cid}").json()
            assert (got["name"], got["guidelines"]) == (cname, cname)
            records = admin.get(f"/api/campaigns/{cid}/labels").json()
            assert sorted(r["rationale"] for r in records) == sorted(INJECTIONS)
            assert {r["annotator"]["id"] for r in records} == set(INJECTIONS)
            assert all(r["prompt"] == cname for r in records)
        critiques = admin.get(f"/api/campaigns/{cr}/labels").json()
        assert sorted(r["text"] for r in critiques) == sorted(INJECTIONS)
        assert sorted(r["metadata"]["prompt"] for r in critiques) == sorted(INJECTIONS)
        # revoking `" OR 1=1 --` revokes that one person only
        from urllib.parse import quote

        assert admin.delete("/api/annotators/" + quote(INJECTIONS[1], safe="")).status_code == 204
        assert [p["name"] for p in admin.get("/api/annotators").json() if p["revoked"]] == [
            INJECTIONS[1]]
    assert table_names(store) >= APP_TABLES
    n_labels = len(INJECTIONS) * (len(INJECTIONS) + 1)
    assert count_rows(store, "labels") == store.count() == n_labels
    assert count_rows(store, "annotators") == len(INJECTIONS) + 1


def test_an_annotator_reads_only_their_own_labels(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice", "bob"])
    with open_client(store) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"], "alice"), Api(client, tokens["bob"], "bob")
        cid = admin.create_campaign("mine", "pairwise", pair_rows(3), overlap=2)["id"]
        last = {}
        for api in (alice, bob):
            while (a := api.next(cid)) is not None:
                r = api.label(cid, a["assignment_id"],
                              {"choice": "tie", "rationale": f"secret of {api.name}"})
                assert r.status_code == 201
                last[api.name] = (a["assignment_id"], r.json()["record_id"])
        bob_last = bob.get(f"/api/campaigns/{cid}/labels").json()[-1]
        assert bob_last["id"] == last["bob"][1]
        mine = alice.get(f"/api/campaigns/{cid}/labels")
        assert mine.status_code == 200
        assert len(mine.json()) == 3
        assert {r["annotator"]["id"] for r in mine.json()} == {"alice"}
        assert "bob" not in mine.text and tokens["bob"] not in mine.text
        assert len(admin.get(f"/api/campaigns/{cid}/labels").json()) == 6
        # alice cannot label with bob's assignment nor undo bob's label
        r = alice.label(cid, last["bob"][0], {"choice": "first"})
        assert r.status_code == 404
        assert alice.post(f"/api/campaigns/{cid}/skip",
                          json={"assignment_id": last["bob"][0]}).status_code == 404
        assert "secret of bob" not in mine.text
        assert alice.post(f"/api/campaigns/{cid}/undo").status_code == 200
        assert store.get(bob_last["id"]) is not None
        assert len(bob.get(f"/api/campaigns/{cid}/labels").json()) == 3


def test_every_response_carries_the_csp(sqlite_store):
    store = sqlite_store
    tokens = people(store, ["alice"])
    with open_client(store, fast_settings(max_body_bytes=5000)) as client:
        admin, alice = Api(client, tokens["admin"]), Api(client, tokens["alice"])
        cid = admin.create_campaign("csp", "pairwise", pair_rows(1))["id"]
        a = alice.next(cid)
        responses = [
            client.get("/healthz"), client.get("/login"), client.get("/openapi.json"),
            client.get("/static/app.js"), client.get("/no/such/page"), client.get("/"),
            alice.get("/"), alice.get(f"/c/{cid}"), admin.get("/admin"),
            alice.get("/api/campaigns"), alice.get("/api/campaigns/77"),
            alice.label(cid, a["assignment_id"], {"choice": "?"}),
            alice.post(f"/api/campaigns/{cid}/labels", content=b"{not json"),
            alice.post(f"/api/campaigns/{cid}/labels", content=b"x" * 6000),
            alice.label(cid, a["assignment_id"], {"choice": "tie"}),
            alice.post("/api/campaigns", json={}),
        ]
    statuses = [r.status_code for r in responses]
    assert statuses[:2] == [200, 200] and 401 in statuses and 404 in statuses
    assert {403, 413, 422, 201} <= set(statuses)
    for r in responses:
        assert_csp(r)
        assert r.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------------------------
# 8. Agreement statistics against independent implementations
# ---------------------------------------------------------------------------------------------

CATEGORIES = ["a", "b", "tie", "both_bad"]


def test_stats_equal_krippendorff_statsmodels_and_own_counts(tmp_path, monkeypatch):
    import krippendorff
    from statsmodels.stats.inter_rater import fleiss_kappa

    from prefkit.data.io import read_records

    db = tmp_path / "stats.db"
    names = ["ann0", "ann1", "ann2", "ann3", "biased"]
    n_items = 8
    rows = pair_rows(n_items)
    truth = ["a", "b", "a", "tie", "b", "a", "both_bad", "b"]
    rng = random.Random(3)
    monkeypatch.setattr(svc, "secrets", SeededSecrets(3))  # the display orders, reproducibly
    with FeedbackStore(db) as store:
        tokens = people(store, names)
        with open_client(store) as client:
            admin = Api(client, tokens["admin"])
            cid = admin.create_campaign("agree", "pairwise", rows, overlap=3)["id"]
            apis = [Api(client, tokens[n], n) for n in names]
            active = list(apis)
            while active:
                api = rng.choice(active)
                a = api.next(cid)
                if a is None:
                    active.remove(api)
                    continue
                position = int(a["prompt"].rsplit(" ", 1)[1])
                if api.name == "biased":  # always the response shown first
                    answer = {"choice": "first"}
                else:  # the truth, except a known disagreement pattern
                    flip = (position + int(api.name[-1])) % 3 == 0
                    wanted = truth[position]
                    if flip:
                        wanted = {"a": "b", "b": "a", "tie": "a", "both_bad": "tie"}[wanted]
                    answer = answer_for(a, rows[position], wanted)
                assert api.label(cid, a["assignment_id"], answer,
                                 seconds=1.0).status_code == 201
            stats = admin.get(f"/api/campaigns/{cid}/stats")
            assert stats.status_code == 200
            stats = stats.json()
    out = tmp_path / "agree.jsonl"
    result = runner.invoke(cli, ["serve", "campaign", "export", "agree", "--out", str(out),
                                 "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    records = list(read_records(out))
    assert len(records) == n_items * 3 == stats["progress"]["labels"]

    # Krippendorff's alpha (nominal): annotators x items, NaN where missing
    code = {c: i for i, c in enumerate(CATEGORIES)}
    matrix = np.full((len(names), n_items), np.nan)
    table = np.zeros((n_items, len(CATEGORIES)))
    for rec in records:
        matrix[names.index(rec.annotator.id), rec.metadata["item"]] = code[rec.outcome.value]
        table[rec.metadata["item"], code[rec.outcome.value]] += 1
    assert (table.sum(axis=1) == 3).all()
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    kappa = fleiss_kappa(table, method="fleiss")
    agreement = stats["agreement"]
    assert agreement["krippendorff_alpha_nominal"] == pytest.approx(alpha, abs=1e-9)
    assert agreement["fleiss_kappa"] == pytest.approx(kappa, abs=1e-9)
    assert agreement["fleiss_items_used"] == n_items
    assert -1 < alpha < 1 and alpha != 0  # neither unanimous nor degenerate

    # position bias: the share of decisive labels that picked the response shown first
    rows_by_name = {row["name"]: row for row in stats["annotators"]}
    assert set(rows_by_name) == set(names)
    for name in names:
        mine = [r for r in records if r.annotator.id == name]
        decisive = [r for r in mine if r.outcome in (Outcome.A, Outcome.B)]
        first = sum((r.outcome is Outcome.A) == (r.metadata["shown"][0] == 0) for r in decisive)
        row = rows_by_name[name]
        assert row["labels"] == len(mine)
        assert row["first_shown_n"] == len(decisive)
        assert row["first_shown_rate"] == pytest.approx(first / len(decisive), abs=1e-12)
        assert row["median_seconds"] == 1.0
    assert rows_by_name["biased"]["first_shown_rate"] == 1.0
    assert stats["progress"]["per_annotator"] == dict(Counter(r.annotator.id for r in records))


def test_stats_need_an_admin_and_the_cli_agrees(tmp_path):
    db = tmp_path / "s.db"
    with FeedbackStore(db) as store:
        tokens = people(store, ["a1", "a2"])
        with open_client(store) as client:
            admin = Api(client, tokens["admin"])
            cid = admin.create_campaign("bin", "binary", [
                {"prompt": f"p{i}", "responses": [f"r{i}"]} for i in range(4)], overlap=2)["id"]
            for name in ("a1", "a2"):
                api = Api(client, tokens[name])
                while (a := api.next(cid)) is not None:
                    position = int(a["prompt"][1:])
                    desirable = position % 2 == 0 or (name == "a2" and position == 3)
                    api.label(cid, a["assignment_id"], {"desirable": desirable})
            assert Api(client, tokens["a1"]).get(f"/api/campaigns/{cid}/stats").status_code == 403
            api_stats = admin.get(f"/api/campaigns/{cid}/stats").json()
    result = runner.invoke(cli, ["serve", "campaign", "stats", "bin", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    cli_stats = json.loads(result.stdout)
    assert cli_stats["agreement"] == api_stats["agreement"]
    # 3 of 4 items agree; kappa by hand: p_o = 0.75, p_e from the pooled yes share (5/8)
    p_yes = 5 / 8
    p_e = p_yes ** 2 + (1 - p_yes) ** 2
    # Fleiss with 2 raters: P_i = 1 for agreeing items, 0 otherwise
    assert api_stats["agreement"]["fleiss_kappa"] == pytest.approx((0.75 - p_e) / (1 - p_e),
                                                                   abs=1e-12)


# ---------------------------------------------------------------------------------------------
# 9. Arena
# ---------------------------------------------------------------------------------------------


def arena_pool(models: list[str], n_prompts: int) -> tuple[list[dict], dict[str, str]]:
    """Pool rows and the (test-only) map response text -> model; texts do not name models."""
    rows, owner = [], {}
    for p in range(n_prompts):
        texts = []
        for m in models:
            text = f"output {uuid.uuid4().hex[:10]}"
            owner[text] = m
            texts.append(text)
        rows.append({"prompt": f"arena prompt {p}", "responses": texts, "models": models})
    return rows, owner


def vote_pairwise(api: Api, cid: int, owner: dict, strength: dict, rng, n_votes: int,
                  models: list[str]) -> list[tuple[str, str, str]]:
    """``n_votes`` BT draws from ``strength`` through the API; returns (a, b, winner|None)."""
    cast = []
    a = api.next(cid)
    for _ in range(n_votes):
        assert set(a) == ASSIGNMENT_KEYS
        assert not any(m in json.dumps(a) for m in models)
        first, second = (owner[t] for t in a["responses"])
        p = 1 / (1 + np.exp(strength[second] - strength[first]))
        choice = "first" if rng.random() < p else "second"
        r = api.label(cid, a["assignment_id"], {"choice": choice}, next="true")
        assert r.status_code == 201, r.text
        cast.append((first, second, first if choice == "first" else second))
        a = r.json()["next"]
    return cast


def test_arena_leaderboard_equals_arena_rank_on_the_export(tmp_path):
    db = tmp_path / "arena.db"
    models = [f"model-{c}" for c in "abcdef"]
    strength = dict(zip(models, np.linspace(-1.2, 1.2, len(models)), strict=True))
    rows, owner = arena_pool(models, 8)
    rng = np.random.default_rng(11)
    with FeedbackStore(db) as store:
        tokens = people(store, ["v1", "v2", "v3"])
        with open_client(store) as client:
            admin = Api(client, tokens["admin"])
            created = admin.create_campaign("arena", "arena", rows)
            cid = created["id"]
            assert created["progress"]["pool"] == 8
            empty = admin.get(f"/api/campaigns/{cid}/leaderboard").json()
            assert empty == {"leaderboard": [], "votes": 0}
            cast = []
            for name in ("v1", "v2", "v3"):
                cast += vote_pairwise(Api(client, tokens[name]), cid, owner, strength, rng, 60,
                                      models)
            live = Api(client, tokens["v1"]).get(f"/api/campaigns/{cid}/leaderboard")
            assert live.status_code == 200
            live = live.json()
            records = admin.get(f"/api/campaigns/{cid}/labels").json()
    # every vote is a Battle naming the models whose outputs were shown
    assert len(records) == len(cast) == 180
    for rec, (first, second, winner) in zip(records, cast, strict=True):
        assert rec["kind"] == "battle"
        assert {rec["model_a"], rec["model_b"]} == {first, second}
        assert owner[rec["metadata"]["response_a"]] == rec["model_a"]
        assert owner[rec["metadata"]["response_b"]] == rec["model_b"]
        assert rec["outcome"] == ("a" if winner == rec["model_a"] else "b")
    out = tmp_path / "votes.jsonl"
    result = runner.invoke(cli, ["serve", "campaign", "export", "arena", "--out", str(out),
                                 "--db", str(db)])
    assert result.exit_code == 0, result.output
    ranked = runner.invoke(cli, ["arena", "rank", str(out), "--json"])
    assert ranked.exit_code == 0, ranked.output
    board = json.loads(ranked.stdout)
    assert live["leaderboard"] == board["leaderboard"]  # same ratings and CI bounds, exactly
    assert live == board
    assert board["votes"] == 180
    wins = Counter(w for _, _, w in cast)
    assert {row["model"]: row["wins"] for row in live["leaderboard"]} == {
        m: wins.get(m, 0) for m in models}
    # the arena cannot be opened as a plain leaderboard elsewhere
    assert len({row["model"] for row in live["leaderboard"]}) == 6


def test_kwise_arena_records_rankings_with_models(tmp_path):
    db = tmp_path / "kwise.db"
    models = [f"m{i}" for i in range(6)]
    strength = dict(zip(models, np.linspace(-1, 1, 6), strict=True))
    rows, owner = arena_pool(models, 5)
    rng = np.random.default_rng(5)
    with FeedbackStore(db) as store:
        tokens = people(store, ["v"])
        with open_client(store) as client:
            admin, voter = Api(client, tokens["admin"]), Api(client, tokens["v"])
            cid = admin.create_campaign("k3", "arena", rows,
                                        settings={"k": 3, "matchmaking": "ucb"})["id"]
            given = []
            for _ in range(40):
                a = voter.next(cid)
                assert len(a["responses"]) == 3 and not any(m in json.dumps(a) for m in models)
                shown_models = [owner[t] for t in a["responses"]]
                # a Plackett-Luce draw (Gumbel trick); the two worst tie every fifth vote
                keys = [strength[m] + rng.gumbel() for m in shown_models]
                order = sorted(range(3), key=lambda i: -keys[i])
                tiers = [[order[0]], [order[1], order[2]]] if len(given) % 5 == 0 else [
                    [i] for i in order]
                bad = voter.label(cid, a["assignment_id"], {"tiers": [[0], [1]]})
                assert bad.status_code == 422
                r = voter.label(cid, a["assignment_id"], {"tiers": tiers})
                assert r.status_code == 201, r.text
                given.append((a["responses"], tiers))
            live = admin.get(f"/api/campaigns/{cid}/leaderboard").json()
            records = admin.get(f"/api/campaigns/{cid}/labels").json()
    assert len(records) == 40
    for rec, (texts, tiers) in zip(records, given, strict=True):
        assert rec["kind"] == "ranking"
        assert len(set(rec["metadata"]["models"])) == 3
        assert [owner[t] for t in rec["responses"]] == rec["metadata"]["models"]
        shown = rec["metadata"]["shown"]
        assert [rec["responses"][i] for i in shown] == texts
        assert rec["tiers"] == [[shown[i] for i in tier] for tier in tiers]
    out = tmp_path / "k3.jsonl"
    assert runner.invoke(cli, ["serve", "campaign", "export", "k3", "--out", str(out),
                               "--db", str(db)]).exit_code == 0
    ranked = runner.invoke(cli, ["arena", "rank", str(out), "--method", "pl", "--json"])
    assert ranked.exit_code == 0, ranked.output
    assert live == json.loads(ranked.stdout)
    assert live["votes"] == 40
