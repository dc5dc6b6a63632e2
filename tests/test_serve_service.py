"""The annotation app's service layer (prefkit.serve.service): leasing under concurrency (threads
sharing one store, and separate processes each opening the SQLite file or PostgreSQL schema),
lease expiry and late submissions, idempotent submissions under a retry storm, undo in an arena,
people and tokens, campaign rules.

The concurrency, lease and idempotency tests also run on PostgreSQL when
PREFKIT_TEST_POSTGRES_URL is set (each in a fresh schema)."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from prefkit.data.app_schema import ANNOTATORS, ASSIGNMENTS, LABELS
from prefkit.data.store import FeedbackStore
from prefkit.serve import service as svc
from prefkit.serve.app import create_app
from prefkit.serve.items import candidate_items
from prefkit.serve.service import ServeError
from prefkit.serve.tasks import TaskSettings
from serve_fixtures import (
    BACKENDS,
    Api,
    backend_url,
    count_rows,
    fast_settings,
    label_everything,
    pair_rows,
    people,
)


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    with backend_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url):
    with FeedbackStore(store_url) as opened:
        yield opened


def make_campaign(store, name: str, n: int, *, overlap: int = 1, task: str = "pairwise",
                  **settings) -> svc.Campaign:
    rows = pair_rows(n, prefix=name) if task == "pairwise" else [
        {"prompt": f"{name} {i}", "responses": [f"{name} response {i}"]} for i in range(n)]
    return svc.create_campaign(store, name, TaskSettings(task=task, **settings),
                               candidate_items(name, rows), overlap=overlap)


def person(store, token: str) -> svc.Person:
    return svc.authenticate(store, token)


def assignment_rows(store, campaign_id: int) -> list:
    return store.read(lambda c: c.execute(sa.select(ASSIGNMENTS).where(
        ASSIGNMENTS.c.campaign_id == campaign_id)).all())


# ---------------------------------------------------------------------------------------------
# 2. Overlap 1: concurrent annotators never get the same item
# ---------------------------------------------------------------------------------------------


def test_two_threads_overlap_one_never_share_an_item(store):
    tokens = people(store, ["alice", "bob"])
    campaign = make_campaign(store, "threads", 40)
    handed: dict[str, list[int]] = {"alice": [], "bob": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        try:
            who = person(store, tokens[name])
            while True:
                barrier.wait(30)  # both ask at the same moment, every round
                a = svc.next_assignment(store, campaign, who)
                if a is None:
                    barrier.abort()  # the other thread's next wait ends too
                    return
                handed[name].append(a.item_id)
                svc.submit_label(store, campaign, who, a.id, {"choice": "tie"}, f"{name}-{a.id}")
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(n,)) for n in handed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # after the barrier broke, whoever is left finishes the campaign alone
    for name in handed:
        who = person(store, tokens[name])
        while (a := svc.next_assignment(store, campaign, who)) is not None:
            handed[name].append(a.item_id)
            svc.submit_label(store, campaign, who, a.id, {"choice": "tie"}, f"{name}-{a.id}")
    assert not set(handed["alice"]) & set(handed["bob"])
    assert len(handed["alice"]) + len(handed["bob"]) == 40
    assert len(set(handed["alice"]) | set(handed["bob"])) == 40
    assert handed["alice"] and handed["bob"]
    rows = assignment_rows(store, campaign.id)
    assert Counter(r.item_id for r in rows) == {i: 1 for i in set(handed["alice"] +
                                                                handed["bob"])}
    assert store.count() == count_rows(store, "labels") == 40
    assert svc.progress(store, campaign)["complete"] == 40


def test_many_threads_overlap_three_respect_every_rule(store):
    """Six annotators with two threads each (the same person in two browser tabs), overlap 3:
    no item over its overlap, nobody labels an item twice, every item complete."""
    names = [f"ann{i}" for i in range(6)]
    tokens = people(store, names)
    campaign = make_campaign(store, "six", 12, overlap=3)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        who = person(store, tokens[name])
        try:
            while (a := svc.next_assignment(store, campaign, who)) is not None:
                try:
                    svc.submit_label(store, campaign, who, a.id, {"choice": "first"},
                                     f"{name}-{a.id}")
                except ServeError as exc:  # the other tab submitted this assignment first
                    assert exc.status == 409 and "already labelled" in str(exc), exc
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in names for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    labels = store.read(lambda c: c.execute(sa.select(LABELS.c.item_id,
                                                      LABELS.c.annotator_id)).all())
    assert len(labels) == len(set(labels)) == 36
    assert Counter(item for item, _ in labels) == {i: 3 for i in {item for item, _ in labels}}
    assert store.count() == 36
    assert svc.progress(store, campaign)["complete"] == 12


def test_two_processes_overlap_one_never_share_an_item(store_url):
    with FeedbackStore(store_url) as store:
        tokens = people(store, ["alice", "bob"])
        make_campaign(store, "processes", 30)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=label_everything,
                           args=(store_url, tokens[name], "processes", start, out))
               for name in ("alice", "bob")]
    for w in workers:
        w.start()
    results = dict(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    for name, handed in results.items():
        assert isinstance(handed, list), f"{name}: {handed}"
    alice, bob = results["alice"], results["bob"]
    assert alice and bob  # they did run side by side
    assert not set(alice) & set(bob)
    assert sorted(alice + bob) == sorted(set(alice + bob)) and len(alice + bob) == 30
    with FeedbackStore(store_url) as store:
        campaign = svc.get_campaign(store, "processes")
        rows = assignment_rows(store, campaign.id)
        assert len(rows) == 30 and len({r.item_id for r in rows}) == 30
        assert store.count() == count_rows(store, "labels") == 30
        assert svc.progress(store, campaign)["complete"] == 30


# ---------------------------------------------------------------------------------------------
# Lease expiry (a controlled clock)
# ---------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2031, 3, 4, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch):
    found = Clock()
    monkeypatch.setattr(svc, "_now", found)
    return found


def test_abandoned_lease_goes_to_another_and_the_late_label_is_refused(store, clock):
    tokens = people(store, ["alice", "bob"])
    with TestClient(create_app(store, fast_settings())) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        cid = admin.create_campaign("lease", "pairwise", pair_rows(1),
                                    settings={"lease_seconds": 60})["id"]
        a = alice.next(cid)
        assert a["lease_expires"] == (clock.now + timedelta(seconds=60)).isoformat()
        assert bob.next(cid) is None  # leased to alice
        clock.advance(59)
        assert bob.next(cid) is None
        clock.advance(2)  # alice's lease has run out
        b = bob.next(cid)
        assert b is not None and b["item_id"] == a["item_id"]
        assert bob.label(cid, b["assignment_id"], {"choice": "tie"}).status_code == 201
        late = alice.label(cid, a["assignment_id"], {"choice": "first"})
        assert late.status_code == 409
        assert alice.next(cid) is None
        # a retry of the late submission is refused again (the assignment is expired now)
        assert alice.label(cid, a["assignment_id"], {"choice": "first"}).status_code == 409
    assert store.count() == count_rows(store, "labels") == 1
    assert [r.annotator.id for r in store.iter_records()] == ["bob"]


def test_late_label_is_accepted_while_the_item_is_still_free(store, clock):
    tokens = people(store, ["alice", "bob"])
    with TestClient(create_app(store, fast_settings())) as client:
        admin = Api(client, tokens["admin"])
        alice, bob = Api(client, tokens["alice"]), Api(client, tokens["bob"])
        cid = admin.create_campaign("late", "pairwise", pair_rows(1),
                                    settings={"lease_seconds": 60})["id"]
        a = alice.next(cid)
        clock.advance(120)
        # nobody took it: alice's late answer still counts
        assert alice.label(cid, a["assignment_id"], {"choice": "tie"}).status_code == 201
        assert bob.next(cid) is None
        # once bob holds it after an expiry, the first to submit wins, the second gets 409
        cid2 = admin.create_campaign("late2", "pairwise", pair_rows(1, prefix="x"),
                                     settings={"lease_seconds": 60})["id"]
        a = alice.next(cid2)
        clock.advance(61)
        b = bob.next(cid2)
        assert b["item_id"] == a["item_id"]
        assert alice.label(cid2, a["assignment_id"], {"choice": "first"}).status_code == 201
        assert bob.label(cid2, b["assignment_id"], {"choice": "second"}).status_code == 409
        assert bob.next(cid2) is None
    assert store.count() == count_rows(store, "labels") == 2


def test_asking_again_renews_the_lease(store, clock):
    tokens = people(store, ["alice", "bob", "carol"])
    campaign = make_campaign(store, "renew", 1, overlap=2, lease_seconds=60)
    alice, bob, carol = (person(store, tokens[n]) for n in ("alice", "bob", "carol"))
    a = svc.next_assignment(store, campaign, alice)
    b = svc.next_assignment(store, campaign, bob)
    assert a.item_id == b.item_id
    assert svc.next_assignment(store, campaign, carol) is None  # two slots, both leased
    clock.advance(50)
    again = svc.next_assignment(store, campaign, alice)  # alice is still at it
    assert (again.id, again.responses) == (a.id, a.responses)
    assert again.lease_expires == clock.now + timedelta(seconds=60)
    clock.advance(20)  # bob's lease ran out, alice's did not
    c = svc.next_assignment(store, campaign, carol)
    assert c is not None and c.item_id == a.item_id
    # bob comes back: his slot went to carol, and the late label does not fit any more
    svc.submit_label(store, campaign, alice, a.id, {"choice": "tie"}, "alice-1")
    svc.submit_label(store, campaign, carol, c.id, {"choice": "tie"}, "carol-1")
    with pytest.raises(ServeError) as late:
        svc.submit_label(store, campaign, bob, b.id, {"choice": "tie"}, "bob-1")
    assert late.value.status == 409
    assert svc.next_assignment(store, campaign, bob) is None
    assert store.count() == 2


# ---------------------------------------------------------------------------------------------
# 3. Idempotency under a retry storm
# ---------------------------------------------------------------------------------------------


def test_concurrent_retries_of_one_submission_store_one_label(store):
    tokens = people(store, ["alice"])
    campaign = make_campaign(store, "storm", 3)
    alice = person(store, tokens["alice"])
    a = svc.next_assignment(store, campaign, alice)
    barrier = threading.Barrier(6)
    results, errors = [], []

    def retry() -> None:
        try:
            barrier.wait(30)
            results.append(svc.submit_label(store, campaign, alice, a.id, {"choice": "second"},
                                            "the-key", seconds=2.0))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len({r.label_id for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False] + [True] * 5
    assert store.count() == count_rows(store, "labels") == 1
    # the key is bound to this submission: another assignment cannot reuse it
    b = svc.next_assignment(store, campaign, alice)
    with pytest.raises(ServeError) as reused:
        svc.submit_label(store, campaign, alice, b.id, {"choice": "tie"}, "the-key")
    assert reused.value.status == 409
    assert store.count() == count_rows(store, "labels") == 1


def test_bad_keys_and_durations_are_refused(store):
    tokens = people(store, ["alice"])
    campaign = make_campaign(store, "keys", 1)
    alice = person(store, tokens["alice"])
    a = svc.next_assignment(store, campaign, alice)
    for key, seconds in (("", None), ("k" * 201, None), ("ok", -1.0), ("ok", float("nan"))):
        with pytest.raises(ServeError) as refused:
            svc.submit_label(store, campaign, alice, a.id, {"choice": "tie"}, key, seconds)
        assert refused.value.status == 422
    assert store.count() == 0


# ---------------------------------------------------------------------------------------------
# People, tokens and campaigns
# ---------------------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_revocable(tmp_path):
    db = tmp_path / "people.db"
    with FeedbackStore(db) as store:
        token = svc.add_annotator(store, "  alice  ")
        assert len(token) >= 40
        assert svc.authenticate(store, token) == svc.Person(1, "alice", "annotator")
        assert svc.authenticate(store, token + "x") is None
        assert svc.authenticate(store, "") is None
        stored = store.read(lambda c: c.execute(sa.select(ANNOTATORS.c.token_hash)).scalar_one())
        assert stored == svc.hash_token(token) and token not in stored
        with pytest.raises(ServeError) as exists:
            svc.add_annotator(store, "alice")
        assert exists.value.status == 409
        for bad_name, bad_role in (("", "annotator"), ("x" * 201, "annotator"),
                                   ("bob", "root")):
            with pytest.raises(ServeError) as bad:
                svc.add_annotator(store, bad_name, bad_role)
            assert bad.value.status == 400
        svc.revoke_annotator(store, "alice")
        assert svc.authenticate(store, token) is None
        with pytest.raises(ServeError) as gone:
            svc.revoke_annotator(store, "alice")
        assert gone.value.status == 404
        new = svc.add_annotator(store, "alice", "admin")  # re-activated with a new token
        assert new != token and svc.authenticate(store, new).role == "admin"
        assert svc.authenticate(store, token) is None
        assert [(p["name"], p["role"], p["revoked"]) for p in svc.list_annotators(store)] == [
            ("alice", "admin", False)]
    assert token.encode() not in db.read_bytes()


def test_campaign_rules(store):
    settings = TaskSettings(task="pairwise")
    items = candidate_items("t", pair_rows(2))
    for kwargs, status in (({"overlap": 0}, 400), ({"overlap": 1, "name": " "}, 400)):
        name = kwargs.pop("name", "c")
        with pytest.raises(ServeError) as bad:
            svc.create_campaign(store, name, settings, items, **kwargs)
        assert bad.value.status == status
    with pytest.raises(ServeError):
        svc.create_campaign(store, "empty", settings, [])
    svc.create_campaign(store, "c", settings, items, overlap=2)
    with pytest.raises(ServeError) as taken:
        svc.create_campaign(store, "c", settings, items)
    assert taken.value.status == 409
    arena = svc.create_campaign(store, "a", TaskSettings(task="arena"), candidate_items(
        "t", [{"prompt": "p", "responses": ["x", "y"], "models": ["m1", "m2"]}]), overlap=5)
    assert arena.overlap == 1  # one vote per battle
    assert [c.name for c in svc.list_campaigns(store)] == ["c", "a"]
    assert svc.get_campaign(store, "c").overlap == 2
    with pytest.raises(ServeError) as missing:
        svc.get_campaign(store, 99)
    assert missing.value.status == 404
    for bad in ({"task": "essay"}, {"task": "pairwise", "rationale": "sometimes"},
                {"task": "rating", "scales": {"x": (3, 1)}}, {"task": "arena", "k": 1},
                {"task": "arena", "matchmaking": "elo"}, {"task": "binary", "lease_seconds": 0}):
        with pytest.raises(ValueError):
            TaskSettings(**bad)


def test_undo_in_an_arena_recounts_the_votes(tmp_path):
    from prefkit.serve.arena import _votes, leaderboard

    with FeedbackStore(tmp_path / "undo-arena.db") as store:
        tokens = people(store, ["v"])
        voter = person(store, tokens["v"])
        models = ["m0", "m1", "m2"]
        campaign = svc.create_campaign(store, "arena", TaskSettings(task="arena"), candidate_items(
            "t", [{"prompt": f"p{i}", "responses": [f"r{i}{m}" for m in models],
                   "models": models} for i in range(3)]))
        for n in range(6):
            a = svc.next_assignment(store, campaign, voter)
            svc.submit_label(store, campaign, voter, a.id, {"choice": "first"}, f"k{n}")
        before = leaderboard(store, campaign)
        assert before["votes"] == 6
        back = svc.undo_last(store, campaign, voter)
        assert store.count() == count_rows(store, "labels") == 5
        after = leaderboard(store, campaign)
        assert after["votes"] == 5
        # the matchmaking's tallies equal a count from scratch of the remaining votes
        votes = store.transaction(lambda c: _votes(c, str(c.engine.url), campaign.id))
        assert votes.wins.sum() + votes.ties.sum() / 2 == 5
        won = Counter()
        for record in store.iter_records():
            won[(record.model_a, record.model_b) if record.outcome.value == "a"
                else (record.model_b, record.model_a)] += 1
        for (winner, loser), n in won.items():
            assert votes.wins[models.index(winner), models.index(loser)] == n
        # the undone battle is the voter's again, in the same order
        again = svc.next_assignment(store, campaign, voter)
        assert (again.id, again.responses) == (back.id, back.responses)
