"""prefkit.judges.cache.SQLiteCache: round trips, ajudge_all through it, the cache key, many
processes and threads on one file, stats / clear, refused files, lock waits."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import sqlite3
import threading
import time

import pytest

from prefkit.judges import SQLiteCache
from prefkit.judges.base import FunctionJudge, JudgeRequest, Judgment, ajudge_all, cache_key
from prefkit.judges.cache import CacheBusyError

PROCS, THREADS, KEYS = 8, 4, 50


def _judgment(proc: int, thread: int, i: int) -> Judgment:
    """A distinct, deterministic judgment for each writer and index (all three tasks)."""
    kind = i % 3
    extra = {"judge": f"j{proc}", "writer": [proc, thread, i]}
    if kind == 0:
        return Judgment(task="compare", verdict="first", p_first=0.5 + i / 1000,
                        rationale=f"{proc}/{thread}/{i}", extra=extra)
    if kind == 1:
        return Judgment(task="grade", score=float(proc * 1000 + thread * 100 + i), extra=extra)
    return Judgment(task="rank", ranking=[[i % 2], [1 - i % 2, 2]], raw=f"{proc}-{thread}",
                    extra=extra)


def _writer(path: str, proc: int, same_keys: bool, start) -> None:
    """One process: THREADS threads, each puts KEYS judgments and re-reads what it wrote
    every 10 puts; raises (exit code 1) on any missing or different entry."""
    cache = SQLiteCache(path)
    errors: list[str] = []
    ready = threading.Barrier(THREADS)

    def work(thread: int) -> None:
        try:
            write(thread)
        except Exception as exc:  # a thread's exception would not fail the process
            errors.append(f"thread {thread}: {exc!r}")

    def write(thread: int) -> None:
        ready.wait()
        mine: dict[str, Judgment] = {}
        for i in range(KEYS):
            key = f"same-{i}" if same_keys else f"p{proc}-t{thread}-k{i}"
            mine[key] = _judgment(proc, thread, i)
            cache.put(key, mine[key])
            if i % 10 == 9:
                got = cache.get_many(list(mine))
                if same_keys:
                    if set(got) != set(mine):
                        errors.append(f"missing {set(mine) - set(got)}")
                elif got != mine:
                    errors.append(f"thread {thread} re-read {len(got)} of {len(mine)}")

    start.wait()
    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    if errors:
        raise AssertionError("; ".join(errors[:5]))


def _run_writers(path: str, same_keys: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=_writer, args=(path, p, same_keys, start))
             for p in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)  # a hang guard, not a timing check
    assert [p.exitcode for p in procs] == [0] * PROCS


def test_processes_and_threads_lose_no_entry(tmp_path):
    path = str(tmp_path / "sub" / "cache.db")  # created by the 8 workers at once
    _run_writers(path, same_keys=False)
    expected = {f"p{p}-t{t}-k{i}": _judgment(p, t, i)
                for p in range(PROCS) for t in range(THREADS) for i in range(KEYS)}
    with SQLiteCache(path) as cache:
        got = cache.get_many(list(expected))
        assert len(cache) == len(expected) == 1600
        assert got == expected
        stats = cache.stats()
    assert stats["by_judge"] == {f"j{p}": THREADS * KEYS for p in range(PROCS)}
    assert stats["no_judge"] == 0


def test_writers_of_the_same_keys(tmp_path):
    path = str(tmp_path / "cache.db")
    SQLiteCache(path).close()
    _run_writers(path, same_keys=True)
    with SQLiteCache(path) as cache:
        got = cache.get_many([f"same-{i}" for i in range(KEYS)])
        assert len(cache) == KEYS
    assert sorted(got) == sorted(f"same-{i}" for i in range(KEYS))
    for i in range(KEYS):
        candidates = [_judgment(p, t, i) for p in range(PROCS) for t in range(THREADS)]
        assert got[f"same-{i}"] in candidates


def _compare(p: float, **fields) -> Judgment:
    return Judgment(task="compare", verdict="first" if p > 0.5 else "second", p_first=p,
                    **fields)


def test_round_trip_missing_keys_and_overwrite(tmp_path):
    judgments = {
        "ok": _compare(0.75, rationale="A is right", raw="[[A]]", prompt_tokens=12,
                       completion_tokens=3, latency_s=0.25, attempts=2,
                       extra={"logprobs": [-0.1, -2.3], "judge": "gpt"}),
        "unparsed": Judgment.unparsed("compare", "no verdict: 'maybe'", raw="maybe"),
        "rank": Judgment(task="rank", ranking=[[2], [0, 1]]),
        "grade": Judgment(task="grade", score=7.5, rationale="fine"),
    }
    with SQLiteCache(tmp_path / "c.db") as cache:
        for key, judgment in judgments.items():
            cache.put(key, judgment)
        assert cache.get_many([*judgments, "nope", "ok"]) == judgments
        assert cache.get_many(["nope"]) == {}
        assert cache.get_many([]) == {}
        cache.put("ok", _compare(0.1))
        assert cache.get_many(["ok"]) == {"ok": _compare(0.1)}
        assert len(cache) == 4
    with SQLiteCache(tmp_path / "c.db") as again:  # persisted
        assert again.get_many(list(judgments))["rank"] == judgments["rank"]


@pytest.mark.skipif(not hasattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER"),
                    reason="Connection.setlimit needs Python >= 3.11")
def test_get_many_beyond_sqlites_variable_limit(tmp_path):
    with SQLiteCache(tmp_path / "c.db") as cache:
        # this thread's connection limited to 999 variables, SQLite's oldest default
        cache._conn().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        assert cache.put_many((f"k{i}", _compare(i / 2000)) for i in range(1500)) == 1500
        got = cache.get_many([f"k{i}" for i in range(2000)])
    assert len(got) == 1500
    assert got["k1499"] == _compare(1499 / 2000)


def test_failed_judgments_and_bad_items_are_refused(tmp_path):
    with SQLiteCache(tmp_path / "c.db") as cache:
        with pytest.raises(ValueError, match="failed judgment is not cached"):
            cache.put("k", Judgment.failed("compare", "timeout"))
        with pytest.raises(ValueError, match="failed"):  # checked before anything is written
            cache.put_many([("a", _compare(0.9)), ("b", Judgment.failed("grade", "http"))])
        with pytest.raises(TypeError, match="JSON"):
            cache.put("k", _compare(0.9, extra={"x": object()}))
        assert len(cache) == 0


def _counting(fn):
    calls: list[JudgeRequest] = []

    def counted(request: JudgeRequest):
        calls.append(request)
        return fn(request)

    return counted, calls


def _requests() -> list[JudgeRequest]:
    return [JudgeRequest("compare", f"q{i}", (f"a{i}", "b" * i)) for i in range(6)]


def test_ajudge_all_rerun_makes_no_calls(tmp_path):
    requests = _requests()
    fn, calls = _counting(lambda r: 0.9 if len(r.responses[0]) < 3 else 0.2)
    judge = FunctionJudge(fn, name="len")
    with SQLiteCache(tmp_path / "c.db") as cache:
        first = asyncio.run(ajudge_all(judge, requests, cache=cache))
        assert len(calls) == 6
    with SQLiteCache(tmp_path / "c.db") as cache:  # a new run, same file
        second = asyncio.run(ajudge_all(judge, requests, cache=cache))
        assert len(calls) == 6
        assert [j.verdict for j in second] == [j.verdict for j in first] == ["first"] * 6
        assert [(j.cached, j.attempts) for j in second] == [(True, 0)] * 6
        assert [j.p_first for j in second] == [j.p_first for j in first]
        # another judge's configuration shares the file but not the entries
        other = FunctionJudge(fn, name="len-v2")
        asyncio.run(ajudge_all(other, requests, cache=cache))
        assert len(calls) == 12
        assert len(cache) == 12


def test_failed_is_retried_unparsed_is_kept(tmp_path):
    seen: dict[str, int] = {}

    def flaky(request: JudgeRequest):
        seen[request.prompt] = seen.get(request.prompt, 0) + 1
        if request.prompt == "q0" and seen["q0"] == 1:
            raise ConnectionError("reset by peer")
        if request.prompt == "q1":
            return Judgment.unparsed("compare", "no verdict", raw="hmm")
        return 0.5

    requests = _requests()[:3]
    judge = FunctionJudge(flaky, name="flaky")
    with SQLiteCache(tmp_path / "c.db") as cache:
        run1 = asyncio.run(ajudge_all(judge, requests, cache=cache))
        assert [j.status for j in run1] == ["failed", "unparsed", "ok"]
        assert len(cache) == 2
        run2 = asyncio.run(ajudge_all(judge, requests, cache=cache))
        assert seen == {"q0": 2, "q1": 1, "q2": 1}
        assert [(j.status, j.cached) for j in run2] == [
            ("ok", False), ("unparsed", True), ("ok", True)]
        run3 = asyncio.run(ajudge_all(judge, requests, cache=cache))
        assert seen == {"q0": 2, "q1": 1, "q2": 1}
        assert [(j.status, j.verdict, j.cached) for j in run3] == [
            ("ok", "tie", True), ("unparsed", None, True), ("ok", "tie", True)]


def test_cache_key_follows_what_the_judge_sees():
    config = {"backend": "openai", "model": "m", "template": "pairwise-v1",
              "temperature": 0.0}
    request = JudgeRequest("compare", "q", ("a", "b"), models=("x", "y"))
    key = cache_key(config, request)
    changed_configs = [{**config, "model": "m2"}, {**config, "template": "pairwise-v2"},
                       {**config, "temperature": 0.7}]
    changed_requests = [JudgeRequest("compare", "q!", ("a", "b")),
                        JudgeRequest("compare", "q", ("a", "c")), request.swapped(),
                        JudgeRequest("compare", "q", ("a", "b"), reference="r")]
    keys = {key, *(cache_key(c, request) for c in changed_configs),
            *(cache_key(config, r) for r in changed_requests)}
    assert len(keys) == 1 + len(changed_configs) + len(changed_requests)
    assert cache_key(config, JudgeRequest("compare", "q", ("a", "b"), models=("z", "w"))) == key
    assert cache_key(config, JudgeRequest("compare", "q", ("a", "b"))) == key
    assert cache_key(dict(reversed(config.items())), request) == key  # key order is no matter
    assert len(key) == 64 and int(key, 16) >= 0


def test_stats_and_clear(tmp_path):
    with SQLiteCache(tmp_path / "c.db") as cache:
        empty = cache.stats()
        assert (empty["entries"], empty["by_task"], empty["by_status"], empty["by_judge"],
                empty["no_judge"]) == (0, {}, {}, {}, 0)
        cache.put_many([(f"a{i}", _compare(0.9, extra={"judge": "A"})) for i in range(5)])
        cache.put_many([(f"b{i}", Judgment(task="grade", score=1.0, extra={"judge": "B"}))
                        for i in range(3)])
        cache.put("u", Judgment.unparsed("rank", "no ranking", extra={"judge": "B"}))
        cache.put("n1", _compare(0.1))
        cache.put("n2", _compare(0.2, extra={"judge": ""}))  # an empty label is no label
        stats = cache.stats()
        assert stats == {"path": str(tmp_path / "c.db"), "entries": 11,
                         "by_task": {"compare": 7, "grade": 3, "rank": 1},
                         "by_status": {"ok": 10, "unparsed": 1},
                         "by_judge": {"A": 5, "B": 4}, "no_judge": 2}
        assert cache.clear("nobody") == 0
        assert cache.clear("B") == 4
        assert cache.stats()["by_judge"] == {"A": 5}
        assert sorted(cache.get_many(["a0", "b0", "u", "n1"])) == ["a0", "n1"]
        assert cache.clear() == 7
        assert cache.clear() == 0
        assert len(cache) == 0


def test_foreign_and_corrupt_files_are_refused_untouched(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with pytest.raises(ValueError, match=r"notes\.txt.*not an SQLite database"):
        SQLiteCache(text)
    assert text.read_text() == "not a database\n" * 100

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(ValueError, match=r"other\.db.*not a prefkit judgment cache.*users"):
        SQLiteCache(other)
    assert other.read_bytes() == before  # not switched to WAL, nothing created

    newer = tmp_path / "newer.db"
    SQLiteCache(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match=r"newer\.db.*version 99.*reads version 1"):
        SQLiteCache(newer)

    wrong = tmp_path / "wrong.db"
    SQLiteCache(wrong).close()
    conn = sqlite3.connect(wrong)
    conn.execute("UPDATE meta SET value = 'something.else' WHERE name = 'format'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match=r"wrong\.db.*format 'something\.else'"):
        SQLiteCache(wrong)

    with pytest.raises(ValueError, match="in-memory"):
        SQLiteCache(":memory:")
    with pytest.raises(ValueError, match="directory"):
        SQLiteCache(tmp_path)


def test_an_empty_file_becomes_a_cache(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    with SQLiteCache(empty) as cache:
        cache.put("k", _compare(0.6))
    with SQLiteCache(empty) as cache:
        assert cache.get_many(["k"]) == {"k": _compare(0.6)}
        assert cache._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_unreadable_row_counts_as_missing(tmp_path):
    with SQLiteCache(tmp_path / "c.db") as cache:
        cache.put("good", _compare(0.6))
        cache.put("bad", _compare(0.6))
        cache._conn().execute("UPDATE judgments SET payload = ? WHERE key = 'bad'",
                              (b'{"task": "compare", "colour": 1}',))
        with pytest.warns(RuntimeWarning, match="1 cached judgment"):
            assert cache.get_many(["good", "bad"]) == {"good": _compare(0.6)}
        cache.put("bad", _compare(0.3))
        assert cache.get_many(["bad"]) == {"bad": _compare(0.3)}


def test_a_held_write_lock_is_waited_for_then_reported(tmp_path):
    path = tmp_path / "c.db"
    with SQLiteCache(path, timeout=0.3) as cache:
        cache.put("k", _compare(0.6))
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        holder.execute("INSERT INTO meta VALUES ('x', 'y')")
        assert cache.get_many(["k"]) == {"k": _compare(0.6)}  # readers do not wait (WAL)
        with pytest.raises(CacheBusyError, match=r"c\.db.*locked by other writers"):
            cache.put("k2", _compare(0.7))
        with pytest.raises(CacheBusyError):
            cache.clear()

        # released while a put (most likely) waits: the put goes through
        waiter = SQLiteCache(path, timeout=60)

        def release() -> None:
            time.sleep(0.2)
            holder.execute("ROLLBACK")

        t = threading.Thread(target=release)
        t.start()
        waiter.put("k3", _compare(0.8))
        t.join()
        holder.close()
        waiter.close()
        assert sorted(cache.get_many(["k", "k2", "k3"])) == ["k", "k3"]


def test_threads_get_their_own_connections_and_close_closes_them(tmp_path):
    cache = SQLiteCache(tmp_path / "c.db")
    conns: list[sqlite3.Connection] = []

    def work(i: int) -> None:
        cache.put(f"k{i}", _compare(0.6))
        conns.append(cache._conn())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in conns}) == 3
    assert len(cache.get_many([f"k{i}" for i in range(3)])) == 3
    cache.close()
    cache.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conns[0].execute("SELECT 1")
    with pytest.raises(ValueError, match="closed"):
        cache.get_many(["k0"])


def _forked_child(cache: SQLiteCache, parent_conn_id: int, out) -> None:
    own = cache._conn()
    cache.put("child", _compare(0.2))
    out.put((id(own) != parent_conn_id, sorted(cache.get_many(["parent", "child"]))))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_opens_its_own_connection(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with SQLiteCache(tmp_path / "c.db") as cache:
        cache.put("parent", _compare(0.9))
        out = ctx.Queue()
        child = ctx.Process(target=_forked_child, args=(cache, id(cache._conn()), out))
        child.start()
        result = out.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert result == (True, ["child", "parent"])
        cache.put("parent2", _compare(0.8))  # the parent's connection still works
        assert sorted(cache.get_many(["parent", "child", "parent2"])) == [
            "child", "parent", "parent2"]


def _killed_writer(path: str, n: int) -> None:
    cache = SQLiteCache(path)
    for i in range(n):
        cache.put(f"k{i}", _compare(0.6))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_writer_keeps_its_committed_puts(tmp_path):
    path = str(tmp_path / "c.db")
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_killed_writer, args=(path, 30))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    with SQLiteCache(path) as cache:
        assert len(cache.get_many([f"k{i}" for i in range(30)])) == 30


def test_pickles_as_its_path(tmp_path):
    with SQLiteCache(tmp_path / "c.db", timeout=5) as cache:
        cache.put("k", _compare(0.6))
        copy = pickle.loads(pickle.dumps(cache))
        with copy:
            assert (copy.path, copy.timeout) == (cache.path, 5.0)
            assert copy.get_many(["k"]) == {"k": _compare(0.6)}
