"""data.write_lock.WriteLock: one writer at a time across threads and processes, a waiting
writer woken when the holder lets go (or dies), nothing on disk for an in-memory store."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from prefkit.data.write_lock import WriteLock

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")


def _hold(path: str, held, release, log) -> None:
    lock = WriteLock(path)
    lock.acquire()
    log.put(("held", time.monotonic()))
    held.set()
    release.wait(30)
    log.put(("released", time.monotonic()))
    lock.release()


def _hold_forever(path: str, held) -> None:
    lock = WriteLock(path)
    lock.acquire()
    held.set()
    time.sleep(60)


def test_another_process_blocks_then_wakes_the_waiter(tmp_path):
    db = str(tmp_path / "store.db")
    ctx = mp.get_context("spawn")
    held, release, log = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold, args=(db, held, release, log))
    holder.start()
    try:
        assert held.wait(60)
        lock = WriteLock(db)
        assert lock.acquire(blocking=False) is False and lock.held_elsewhere is True
        got = []

        def wait_for_it() -> None:
            lock.acquire()
            got.append(time.monotonic())
            lock.release()

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.2)
        assert got == []  # still waiting while the other process holds it
        release.set()
        waiter.join(30)
        events = dict([log.get(timeout=30), log.get(timeout=30)])
        # the order, not the speed: the waiter got the lock only after the holder let go
        assert got and got[0] >= events["released"]
        assert lock.acquire(blocking=False) is True
        lock.release()
    finally:
        release.set()
        holder.join(30)
    assert os.path.exists(db + "-writelock")


def test_threads_of_one_process_and_the_flag():
    lock = WriteLock(None)  # in memory: the thread lock alone
    assert lock.acquire() is True
    result = []
    thread = threading.Thread(target=lambda: result.append(
        (lock.acquire(blocking=False), lock.held_elsewhere)))
    thread.start()
    thread.join()
    assert result == [(False, False)]
    lock.release()
    with lock:
        pass
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_a_killed_holder_releases_the_lock(tmp_path):
    db = str(tmp_path / "store.db")
    ctx = mp.get_context("spawn")
    held = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(db, held))
    holder.start()
    assert held.wait(60)
    lock = WriteLock(db)
    assert lock.acquire(blocking=False) is False
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    assert lock.acquire(blocking=False) is True
    lock.release()
    lock.close()


def test_no_lock_file_for_memory_stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (None, "", ":memory:"):
        with WriteLock(name):
            pass
    assert list(tmp_path.iterdir()) == []
