"""The feedback store: idempotent inserts and conflicts, 8 concurrent writer processes,
interrupted and killed imports, schema migrations, round trips of every record kind, and the
`prefkit store` commands. The core tests run on SQLite and, when PREFKIT_TEST_POSTGRES_URL is
set, on PostgreSQL (each test in a fresh schema)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from prefkit.commands.store import app
from prefkit.data.errors import RecordError
from prefkit.data.records import (
    Annotator,
    AnnotatorKind,
    Battle,
    Binary,
    Comparison,
    Critique,
    Outcome,
    Ranking,
    Rating,
    Record,
    record_id,
    to_dict,
    with_id,
)
from prefkit.data.store import (
    LATEST_VERSION,
    RECORDS,
    VERSIONS,
    FeedbackStore,
    SchemaVersionError,
    StoreError,
    create_store_engine,
    record_row,
    schema_version,
    upgrade,
)
from store_backends import BACKENDS, backend_url

N_WRITERS = 8
N_UNIQUE = 10_000

# ---------------------------------------------------------------------------------------------
# Records and files
# ---------------------------------------------------------------------------------------------


def make_record(i: int) -> Record:
    """A deterministic record of one of the six kinds; every third has no explicit id."""
    annotator = Annotator(f"ann{i % 7}", list(AnnotatorKind)[i % 4]) if i % 5 else None
    rid = None if i % 3 == 0 else f"rec-{i:06d}"
    kind = i % 6
    if kind == 0:
        return Comparison(prompt=f"prompt {i}", response_a=f"a{i}", response_b=f"b{i}",
                          outcome=list(Outcome)[i % 4], annotator=annotator, id=rid)
    if kind == 1:
        return Ranking(prompt=[{"role": "user", "content": f"rank {i}"}],
                       responses=["x", "y", f"z{i}"], tiers=[[2], [0, 1]],
                       annotator=annotator, id=rid)
    if kind == 2:
        return Rating(prompt=f"rate {i}", response="r", scores={"help": i % 5},
                      scales={"help": (0, 4)}, annotator=annotator, id=rid)
    if kind == 3:
        return Binary(prompt=f"bin {i}", response="ok", desirable=bool(i % 2),
                      annotator=annotator, id=rid)
    if kind == 4:
        return Battle(model_a="m1", model_b=f"m{i % 9 + 2}", outcome=Outcome.B,
                      prompt_id=f"q{i}", timestamp=float(i), annotator=annotator, id=rid)
    return Critique(text=f"too long {i}", target_id=f"rec-{i - 1:06d}", aspect="length",
                    annotator=annotator, id=rid)


def expected_dict(i: int) -> dict:
    """What the store must hold for record ``i``: its native dict, id included."""
    return to_dict(with_id(make_record(i)))


def write_jsonl(path: Path, indices, bad_line: int | None = None) -> Path:
    """A native JSONL file of records ``indices``; line ``bad_line`` (1-based) is invalid."""
    with open(path, "wb") as f:
        for lineno, i in enumerate(indices, start=1):
            if lineno == bad_line:
                f.write(b'{"kind": "comparison", "prompt": "no responses", "outcome": "a"}\n')
            else:
                f.write(orjson.dumps(to_dict(make_record(i))) + b"\n")
    return path


def stored_dicts(store: FeedbackStore) -> dict[str, dict]:
    return {record_id(r): to_dict(r) for r in store.iter_records()}


# ---------------------------------------------------------------------------------------------
# Fixtures: an SQLite file or a fresh PostgreSQL schema
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    """URL of an empty store: an SQLite file, or a new schema of the PostgreSQL database in
    PREFKIT_TEST_POSTGRES_URL (dropped afterwards)."""
    with backend_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url):
    with FeedbackStore(store_url) as opened:
        yield opened


# ---------------------------------------------------------------------------------------------
# Idempotency and conflicts
# ---------------------------------------------------------------------------------------------


def test_adding_twice_stores_once(store):
    records = [make_record(i) for i in range(60)]
    first = store.add(records, batch_size=16)
    again = store.add([make_record(i) for i in range(60)], batch_size=7)
    assert (first.seen, first.inserted, first.duplicates, first.conflicts) == (60, 60, 0, 0)
    assert (again.seen, again.inserted, again.duplicates, again.conflicts) == (60, 0, 60, 0)
    assert store.count() == 60
    assert stored_dicts(store) == {record_id(r): expected_dict(i) for i, r in enumerate(records)}
    # records without an id are stored under their content-derived id, and left unchanged
    assert records[0].id is None
    assert store.get(record_id(records[0])).id == record_id(records[0])


def test_conflicts_are_reported_and_the_original_kept(store):
    original = Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.A,
                          id="same-id")
    store.add([original])
    changed = Comparison(prompt="p", response_a="a", response_b="b", outcome=Outcome.B,
                         id="same-id")
    new = make_record(1)
    report = store.add([changed, new, make_record(1)])
    assert report.inserted == 1
    assert report.duplicates == 1  # make_record(1) twice in one batch
    assert report.conflict_ids == ["same-id"]
    assert report.to_dict()["conflicts"] == 1
    assert to_dict(store.get("same-id")) == to_dict(original)
    assert store.count() == 2


def test_duplicates_and_conflicts_inside_one_batch(store):
    a = Binary(prompt="p", response="r", desirable=True, id="x")
    b = Binary(prompt="p", response="r", desirable=False, id="x")
    report = store.add([a, a, b, a])
    assert (report.inserted, report.duplicates, report.conflict_ids) == (1, 2, ["x"])
    assert store.get("x").desirable is True


# ---------------------------------------------------------------------------------------------
# Concurrency: 8 writer processes with overlapping slices
# ---------------------------------------------------------------------------------------------


def _writer(url: str, worker: int, barrier, results) -> None:
    """Write 2/8 of the records, every record being submitted by exactly two writers. Reports
    ``("ok", worker, seen, inserted, duplicates, conflicts)``, or ``("error", worker,
    traceback)``: a failure is told, never waited for."""
    import traceback

    try:
        share = N_UNIQUE // N_WRITERS
        indices = [(worker * share + k) % N_UNIQUE for k in range(2 * share)]
        random.Random(worker).shuffle(indices)
        # all open (and upgrade) the fresh store at the same moment, however long the others
        # take to start (no timeout: the parent aborts the barrier if a writer dies)
        barrier.wait()
        with FeedbackStore(url) as store:
            report = store.add((make_record(i) for i in indices), batch_size=250)
        results.put(("ok", worker, report.seen, report.inserted, report.duplicates,
                     report.conflicts))
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
        raise


def _collect(procs, barrier, results) -> list[tuple]:
    """One report per process, waiting on events, not on a clock: a report, an error report or
    a process that died without one (then the barrier is aborted, the others stopped, and the
    test fails with what happened). The poll only sets how soon a death is noticed; how long
    the writers take (a loaded machine, slow process starts) does not matter."""
    import queue

    reports: dict[int, tuple] = {}
    problem = None
    while len(reports) < len(procs) and problem is None:
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            dead = [w for w, p in enumerate(procs) if w not in reports
                    and p.exitcode is not None and p.exitcode != 0]
            if dead:
                problem = f"writer {dead[0]} died with exit code {procs[dead[0]].exitcode}"
            continue
        if message[0] == "error":
            problem = f"writer {message[1]} failed:\n{message[2]}"
        else:
            reports[message[1]] = message
    if problem is not None:
        barrier.abort()
        for proc in procs:
            proc.terminate()
            proc.join()
        pytest.fail(problem)
    for proc in procs:
        proc.join()  # every writer has reported: it is exiting
        assert proc.exitcode == 0
    return [reports[w] for w in range(len(procs))]


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_concurrent_writers(store_url):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N_WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(store_url, w, barrier, results))
             for w in range(N_WRITERS)]
    for proc in procs:
        proc.start()
    reports = _collect(procs, barrier, results)
    seen, inserted, duplicates, conflicts = (sum(r[k] for r in reports) for k in range(2, 6))
    assert (seen, inserted, duplicates, conflicts) == (2 * N_UNIQUE, N_UNIQUE, N_UNIQUE, 0)
    with FeedbackStore(store_url) as store:
        assert store.count() == N_UNIQUE
        stored = stored_dicts(store)
    expected = {record_id(make_record(i)): expected_dict(i) for i in range(N_UNIQUE)}
    assert stored == expected


def _broken_writer(url: str, worker: int, barrier, results) -> None:
    """Writer 0 waits at the barrier for the others, which never come: writer 1 fails with an
    exception, writer 2 dies without a word."""
    if worker == 1:
        results.put(("error", worker, "Traceback ...\nRuntimeError: disk on fire"))
        raise SystemExit(1)
    if worker == 2:
        os._exit(3)
    barrier.wait()


def test_a_failed_writer_is_reported_at_once_not_waited_for():
    """The concurrency test's harness: a writer that fails ends the test with its error, and
    the writers waiting for it are released (the barrier is aborted); nothing waits on a
    clock."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_broken_writer, args=("unused", w, barrier, results))
             for w in range(3)]
    for proc in procs:
        proc.start()
    failure = r"(?s)writer 1 failed:\n.*disk on fire|writer 2 died with exit code 3"
    with pytest.raises(pytest.fail.Exception, match=failure):
        _collect(procs, barrier, results)
    assert barrier.broken and all(proc.exitcode is not None for proc in procs)


# ---------------------------------------------------------------------------------------------
# Interrupted imports
# ---------------------------------------------------------------------------------------------


def test_import_stops_at_a_bad_line_and_a_rerun_completes(store, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", range(1000), bad_line=537)
    with pytest.raises(RecordError) as info:
        store.import_file(path, batch_size=100)
    assert info.value.line == 537
    assert "response_a" in str(info.value) and str(path) in str(info.value)
    assert store.count() == 500  # the whole batches before line 537
    failed = store.imports()[-1]
    assert (failed["status"], failed["seen"], failed["inserted"]) == ("failed", 500, 500)
    assert ":537" in failed["error"]

    write_jsonl(path, range(1000))
    report = store.import_file(path, batch_size=100)
    assert (report.seen, report.inserted, report.duplicates, report.conflicts) == (
        1000, 500, 500, 0)
    assert store.count() == 1000
    assert stored_dicts(store) == {record_id(make_record(i)): expected_dict(i)
                                   for i in range(1000)}
    done = store.imports()[-1]
    assert (done["status"], done["inserted"], done["duplicates"]) == ("done", 500, 500)
    assert done["finished_at"] is not None


def test_add_keeps_whole_batches_when_the_iterator_fails(store):
    def records_then_crash():
        for i in range(250):
            yield make_record(i)
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        store.add(records_then_crash(), batch_size=100)
    assert store.count() == 200
    report = store.add((make_record(i) for i in range(250)), batch_size=100)
    assert (report.inserted, report.duplicates) == (50, 200)
    assert store.count() == 250


_SLOW_IMPORT = """
import sys, time
import prefkit.data.io as io
from prefkit.data.store import FeedbackStore

read = io.read_records

def slow_read(*args, **kwargs):  # a slow source, so the kill lands mid-import
    for n, record in enumerate(read(*args, **kwargs)):
        if n % 50 == 0:
            time.sleep(0.02)
        yield record

io.read_records = slow_read
FeedbackStore(sys.argv[1]).import_file(sys.argv[2], batch_size=100)
"""


def test_killed_import_leaves_a_consistent_store(tmp_path):
    db, n = tmp_path / "store.db", 6000
    path = write_jsonl(tmp_path / "big.jsonl", range(n))
    child = subprocess.Popen([sys.executable, "-c", _SLOW_IMPORT, str(db), str(path)])
    try:
        deadline = time.monotonic() + 60
        while _raw_count(db) < 500 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, "the import finished (or failed) before it was killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with FeedbackStore(db) as store:
        killed_at = store.count()
        assert 500 <= killed_at < n and killed_at % 100 == 0
        assert _integrity(db) == "ok"
        stored = stored_dicts(store)
        assert all(stored[rid] == expected_dict(i) for i in range(n)
                   if (rid := record_id(make_record(i))) in stored)
        assert store.imports()[-1]["status"] == "running"  # killed: never finished
        report = store.import_file(path, batch_size=100)
        assert (report.inserted, report.duplicates) == (n - killed_at, killed_at)
        assert store.count() == n


def _raw_count(db: Path) -> int:
    """Records in an SQLite store, read without opening (or upgrading) it."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:  # no table yet
        return 0
    finally:
        conn.close()


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Round trips, queries, stats, export
# ---------------------------------------------------------------------------------------------


def every_kind() -> list[Record]:
    judge = Annotator("gpt-judge", AnnotatorKind.JUDGE)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo ✓"}]
    return [
        Comparison(prompt=chat, response_a=[{"role": "assistant", "content": "hi"}],
                   response_b=[{"role": "assistant", "content": "hey there"}],
                   outcome=Outcome.BOTH_BAD, strength=2.5, soft_label=0.25, rationale="meh",
                   annotator=Annotator("alice"),
                   critiques=[Critique(text="both rude", aspect="tone", annotator=judge)],
                   metadata={"source": "unit", "nested": {"k": [1, 2, None]}}),
        Ranking(prompt="rank", responses=["a", "b", "c", "d"], tiers=[[3], [0, 2]],
                annotator=judge, id="ranking-1"),
        Rating(prompt="rate", response="r", scores={"help": 3.5, "safe": 1},
               scales={"help": (0, 4), "safe": (0, 1)}, metadata={"n": 1}),
        Binary(prompt="kto", response="yes", desirable=False,
               annotator=Annotator("rm", AnnotatorKind.REWARD_MODEL)),
        Battle(model_a="m-a", model_b="m-b", outcome=Outcome.TIE, prompt_id="q1",
               style={"len_a": 10, "len_b": 12}, timestamp=1712.5, annotator=Annotator("v9")),
        Critique(text="free-standing", target_id="ranking-1", aspect="facts",
                 annotator=Annotator("sim", AnnotatorKind.SIMULATED), id="crit-7"),
    ]


def test_round_trip_every_kind(store):
    records = every_kind()
    store.add(records)
    expected = {record_id(r): to_dict(with_id(r)) for r in every_kind()}
    assert stored_dicts(store) == expected
    paged = [to_dict(r) for r in store.iter_records(page_size=2)]
    assert sorted(paged, key=lambda d: d["id"]) == [expected[k] for k in sorted(expected)]
    assert [to_dict(r) for r in store.iter_records(kind="ranking")] == [expected["ranking-1"]]
    assert [r.kind for r in store.iter_records(annotator="alice")] == ["comparison"]
    assert store.count(kind="battle") == 1
    with pytest.raises(ValueError, match="unknown record kind"):
        store.count(kind="vote")


def test_stats(tmp_path):
    with FeedbackStore(tmp_path / "s.db") as store:
        store.add(every_kind())
        store.import_file(write_jsonl(tmp_path / "d.jsonl", range(12)))
        stats = store.stats()
    assert stats["schema_version"] == LATEST_VERSION
    assert stats["records"] == 18
    assert stats["kinds"] == {"battle": 3, "binary": 3, "comparison": 3, "critique": 3,
                              "ranking": 3, "rating": 3}
    assert sum(stats["annotator_kinds"].values()) == 18
    assert stats["annotator_kinds"]["judge"] == 1 + 2  # every_kind's ranking; i = 2, 6
    assert stats["imports"] == 1
    assert stats["url"].startswith("sqlite:///") and stats["url"].endswith("s.db")


def test_export_round_trips_through_a_file(tmp_path):
    from prefkit.data.io import read_records

    with FeedbackStore(tmp_path / "s.db") as store:
        store.add(every_kind())
        report = store.export(tmp_path / "out.jsonl")
        pairs = store.export(tmp_path / "pairs.jsonl", "trl-preference", kind="comparison")
    assert report.written == 6 and report.dropped == {}
    exported = [to_dict(r) for r in read_records(tmp_path / "out.jsonl")]
    assert sorted(exported, key=lambda d: d["id"]) == sorted(
        (to_dict(with_id(r)) for r in every_kind()), key=lambda d: d["id"])
    assert pairs.written == 0 and sum(pairs.dropped.values()) == 1  # a both-bad tie


def test_password_is_masked_in_the_url():
    url = "postgresql+psycopg://user:secret@db.invalid/prefkit"
    engine = create_store_engine(url)
    assert "secret" not in engine.url.render_as_string(hide_password=True)
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# Schema versions
# ---------------------------------------------------------------------------------------------


def test_version_1_store_upgrades_without_losing_records(tmp_path):
    db = tmp_path / "old.db"
    engine = create_store_engine(db)
    assert upgrade(engine, target=1) == 1
    old = Rating(prompt="p", response="r", scores={"q": 1}, annotator=Annotator(
        "judge-1", AnnotatorKind.JUDGE), id="old-1")
    row = record_row(old)
    del row["annotator_kind"]  # not a column at version 1
    with engine.begin() as conn:
        conn.execute(sa.insert(sa.table("records", *map(sa.column, row))), [row])
        assert schema_version(conn) == 1
        assert "annotator_kind" not in {c["name"] for c in sa.inspect(conn).get_columns(
            "records")}
    engine.dispose()

    with FeedbackStore(db) as store:
        assert store.version == LATEST_VERSION == 3
        assert to_dict(store.get("old-1")) == to_dict(old)
        stats = store.stats()
        assert stats["annotator_kinds"] == {"judge": 1}  # backfilled by migration 2
        assert stats["imports"] == 0
        with store.engine.connect() as conn:
            versions = conn.execute(sa.select(VERSIONS.c.version)).scalars().all()
            kinds = conn.execute(sa.select(RECORDS.c.annotator_kind)).scalars().all()
            tables = set(sa.inspect(conn).get_table_names())
        assert versions == [1, 2, 3] and kinds == ["judge"]
        assert {"annotators", "campaigns", "items", "assignments", "labels"} <= tables
    with FeedbackStore(db) as again:  # opening an up-to-date store changes nothing
        assert again.version == 3 and again.count() == 1


def test_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "new.db"
    FeedbackStore(db).close()
    engine = create_store_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.insert(VERSIONS).values(
            version=LATEST_VERSION + 1, description="from the future",
            applied_at=sa.func.current_timestamp()))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match=f"schema version {LATEST_VERSION + 1}"):
        FeedbackStore(db)


# ---------------------------------------------------------------------------------------------
# `prefkit store` commands
# ---------------------------------------------------------------------------------------------

runner = CliRunner()


def _cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", b""), ("blank.jsonl", b"\n\n"),
                                             ("empty.json", b"[]"), ("bad.jsonl", b"{nope\n")])
def test_cli_import_of_a_source_that_cannot_start_creates_nothing(tmp_path, name, content):
    data = tmp_path / name
    data.write_bytes(content)
    db = tmp_path / "new" / "store.db"
    result = _cli("import", data, "--db", db, "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error.startswith(str(data)) and ("[no_records]" in error
                                            or "[malformed_json]" in error)
    assert not (tmp_path / "new").exists()  # no store, not even its folder
    assert "Traceback" not in result.stderr and "import it again" not in result.stderr


def test_importing_an_empty_file_logs_no_import(store, tmp_path):
    store.import_file(write_jsonl(tmp_path / "one.jsonl", range(3)))
    before = store.imports()
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(RecordError, match=r"\[no_records\]"):
        store.import_file(empty)
    assert store.imports() == before and store.count() == 3


def test_cli_import_stats_export(tmp_path):
    db, data = tmp_path / "cli.db", write_jsonl(tmp_path / "in.jsonl", range(30))
    first = _cli("import", data, "--db", db, "--json")
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout) | {"db": None} == {
        "ok": True, "file": str(data), "db": None, "seen": 30, "inserted": 30,
        "duplicates": 0, "conflicts": 0, "conflict_ids": [], "import_id": 1, "records": 30}
    again = json.loads(_cli("import", data, "--db", db, "--json").stdout)
    assert (again["inserted"], again["duplicates"]) == (0, 30)

    stats = json.loads(_cli("stats", "--db", db, "--json").stdout)
    assert (stats["records"], stats["imports"], stats["kinds"]["rating"]) == (30, 2, 5)

    out = tmp_path / "ratings.jsonl"
    exported = _cli("export", out, "--db", db, "--kind", "rating", "--json")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["written"] == 5
    assert len(out.read_bytes().splitlines()) == 5

    human = _cli("stats", "--db", db)
    assert human.exit_code == 0 and "30 records" in human.stdout


def test_cli_bad_record_is_exit_2_with_the_location(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "in.jsonl", range(10), bad_line=4)
    monkeypatch.setenv("PREFKIT_STORE", str(tmp_path / "env.db"))
    result = _cli("import", data, "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and f"{data}:4" in payload["error"]
    assert payload["detail"]["field"] == "response_a"
    assert f"{data}:4" in result.stderr
    assert (tmp_path / "env.db").exists()  # PREFKIT_STORE chose the store

    human = _cli("import", data)
    assert human.exit_code == 2 and human.stdout == "" and "import it again" in human.stderr


def test_cli_errors(tmp_path):
    missing = _cli("import", tmp_path / "nope.jsonl", "--db", tmp_path / "x.db", "--json")
    assert missing.exit_code == 2 and "no such file" in json.loads(missing.stdout)["error"]
    bad_kind = _cli("export", tmp_path / "o.jsonl", "--db", tmp_path / "x.db", "--kind", "vote")
    assert bad_kind.exit_code == 2 and "unknown record kind" in bad_kind.stderr

    db = tmp_path / "future.db"
    FeedbackStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO prefkit_schema_version VALUES (99, 'future', '2099-01-01')")
    conn.close()
    future = _cli("stats", "--db", db, "--json")
    assert future.exit_code == 1 and "schema version 99" in json.loads(future.stdout)["error"]


# ---------------------------------------------------------------------------------------------
# Store paths and URLs: one clear message (exit 2), and read-only commands create nothing
# ---------------------------------------------------------------------------------------------


def _clear_error(result, *words: str) -> str:
    """Exit code 2, no traceback, one JSON object whose error holds every word."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stdout + result.stderr
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    for word in words:
        assert word in payload["error"], payload["error"]
    return payload["error"]


def test_read_only_commands_do_not_create_stores(tmp_path):
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    _clear_error(_cli("stats", "--db", missing, "--json"), f"no store at {missing}")
    _clear_error(_cli("export", tmp_path / "out.jsonl", "--db", tmp_path / "typo.db", "--json"),
                 f"no store at {tmp_path / 'typo.db'}", "store import")
    assert os.listdir(tmp_path) == []  # no folder, no store, no empty output
    with pytest.raises(StoreError, match="no store at"):
        FeedbackStore(missing, create=False)
    assert not missing.parent.exists()


def test_read_only_commands_open_an_existing_store_only(tmp_path):
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (x)")
    conn.close()
    before = foreign.read_bytes()
    _clear_error(_cli("stats", "--db", foreign, "--json"), "no prefkit store")
    assert foreign.read_bytes() == before  # looked at read-only
    (tmp_path / "empty.db").write_bytes(b"")
    _clear_error(_cli("stats", "--db", tmp_path / "empty.db", "--json"), "no store at")
    data = write_jsonl(tmp_path / "in.jsonl", range(6))
    assert _cli("import", data, "--db", tmp_path / "new" / "s.db").exit_code == 0
    stats = json.loads(_cli("stats", "--db", tmp_path / "new" / "s.db", "--json").stdout)
    assert stats["records"] == 6


@pytest.mark.parametrize("command", ["import", "stats"])
def test_db_that_is_not_a_store(tmp_path, command):
    data = write_jsonl(tmp_path / "in.jsonl", range(3))
    folder = tmp_path / "folder"
    folder.mkdir()
    text = tmp_path / "notes.db"
    text.write_text("hello, not SQLite\n")
    args = [data] if command == "import" else []
    _clear_error(_cli(command, *args, "--db", folder, "--json"),
                 f"{folder} is a folder, not a store")
    _clear_error(_cli(command, *args, "--db", text, "--json"),
                 f"{text} is not a prefkit store: not an SQLite database file")
    assert text.read_text() == "hello, not SQLite\n" and os.listdir(folder) == []


def test_store_paths_that_cannot_be_created(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", range(3))
    _clear_error(_cli("import", data, "--db", data / "x.db", "--json"),
                 f"cannot write {data / 'x.db'}", "is a file, not a folder")
    _clear_error(_cli("import", data, "--db", "/proc/prefkit-test/x.db", "--json"),
                 "cannot write /proc/prefkit-test/x.db")


def test_postgres_without_its_driver_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    data = write_jsonl(tmp_path / "in.jsonl", range(3))
    error = _clear_error(_cli("import", data, "--db", "postgresql+psycopg://u:secret@h/db",
                              "--json"), "pip install 'prefkit[postgres]'")
    assert "secret" not in error
    with pytest.raises(StoreError, match=r"prefkit\[postgres\]"):
        FeedbackStore("postgresql+psycopg2://u@h/db")  # another driver, not installed here


def test_unreachable_or_unsupported_databases(tmp_path):
    pytest.importorskip("psycopg")
    _clear_error(_cli("stats", "--db", "postgresql+psycopg://u@127.0.0.1:1/db", "--json"),
                 "cannot open the store postgresql+psycopg://u@127.0.0.1:1/db",
                 "Connection refused")
    _clear_error(_cli("stats", "--db", "mysql://u@h/db", "--json"), "unsupported database")
    _clear_error(_cli("stats", "--db", "postgresql+nodriver://u@h/db", "--json"),
                 "unknown database driver")


def test_export_with_nothing_to_write_exits_2_and_writes_nothing(tmp_path):
    db = tmp_path / "s.db"
    data = write_jsonl(tmp_path / "in.jsonl", [0, 6])  # two comparisons
    assert _cli("import", data, "--db", db).exit_code == 0
    out = tmp_path / "out.jsonl"
    _clear_error(_cli("export", out, "--db", db, "--to", "rating", "--json"),
                 "nothing to export", "rating format holds none of them",
                 "2 comparison record", "was not written")
    _clear_error(_cli("export", out, "--db", db, "--kind", "rating", "--json"),
                 "no record matches --kind 'rating'")
    assert not out.exists()
    _clear_error(_cli("export", "/proc/prefkit-test/o.jsonl", "--db", db, "--json"),
                 "cannot write /proc/prefkit-test/o.jsonl")
    ok = _cli("export", out, "--db", db, "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["written"] == 2
