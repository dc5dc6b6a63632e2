"""A persistent judgment cache in one SQLite file, shared by processes and threads.

:class:`SQLiteCache` is a :class:`prefkit.judges.base.JudgmentCache`: :func:`ajudge_all` looks
every request's :func:`prefkit.judges.base.cache_key` up in it (the judge's configuration and
what the judge is shown: template, prompt, responses and their order) and stores the ``ok`` and
``unparsed`` answers, so a re-run makes no calls.

The rules:

- One row per key (``INSERT OR REPLACE``: a second ``put`` of a key overwrites the first). The
  row holds the judgment's ``to_dict()`` (orjson), its task and status, and a judge label:
  ``judgment.extra["judge"]`` when that is a non-empty string, else none (what
  :meth:`SQLiteCache.stats` and :meth:`SQLiteCache.clear` group by).
- A ``failed`` judgment is refused (``ValueError``): caching it would make every re-run repeat
  the failure instead of trying again.
- Every ``put`` commits at once (``put_many``: one transaction for all its items), so a process
  that is killed loses at most the write in flight. The file is in WAL mode with
  ``synchronous=NORMAL``: a committed write survives the process being killed; only a power
  loss or an OS crash can undo the last commits.
- Many processes and threads may read and write one file at once: each thread of each process
  has its own connection (a process started by ``fork`` opens its own and never touches the
  ones it inherited), readers never wait for writers (WAL), and a writer waits for the write
  lock up to ``timeout`` seconds (SQLite's busy timeout, then retries with backoff for the
  cases SQLite reports busy at once) before :class:`CacheBusyError`.
- The file carries a ``meta`` table (format name and version). Opening a file that is not an
  SQLite database, an SQLite database of something else, or a cache written by a newer format
  raises ``ValueError`` naming the file and what was expected; such a file is not modified.
  A new or empty file becomes a cache; the parent directory is created.
- ``:memory:`` is refused: each thread's connection would get its own empty database.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from .base import Judgment

FORMAT = "prefkit.judges.cache"
VERSION = 1
_CHUNK = 500  # keys per SELECT ... IN (...): well under SQLite's oldest variable limit (999)
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, task TEXT NOT NULL, "
    "status TEXT NOT NULL, judge TEXT, payload BLOB NOT NULL, created REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS judgments_judge ON judgments (judge)",
)
_PUT = ("INSERT OR REPLACE INTO judgments (key, task, status, judge, payload, created) "
        "VALUES (?, ?, ?, ?, ?, ?)")

# Connections a forked child inherited from its parent: never used and never closed in the
# child (closing would run SQLite's close path on the parent's file state), kept alive here so
# that garbage collection does not close them either.
_INHERITED: list[Any] = []


class CacheBusyError(TimeoutError):
    """The cache file stayed locked by other writers for longer than the cache's timeout."""


class _Handle:
    """One thread's connection, with the process and thread that opened it."""

    __slots__ = ("conn", "pid", "thread")

    def __init__(self, conn: sqlite3.Connection, thread: threading.Thread):
        self.conn = conn
        self.pid = os.getpid()
        self.thread = weakref.ref(thread)


class SQLiteCache:
    """Judgments by cache key in the SQLite file ``path`` (module docstring for the rules).

    ``timeout``: seconds a write (or the opening of the file) waits for other writers before
    :class:`CacheBusyError`. Use it as a context manager, or call :meth:`close`. It pickles as
    its path and timeout (a worker process reopens the file)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0):
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ValueError(f"SQLiteCache needs a file path, got {str(path)!r} (an in-memory "
                             "database is not shared between the cache's connections)")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.path = Path(path)
        self.timeout = float(timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: list[_Handle] = []
        self._closed = False
        self._pid = os.getpid()
        if self.path.is_dir():
            raise ValueError(f"{self.path}: is a directory, expected a judgment cache file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._retry("open", self._init_file)
        except BaseException:
            self.close()
            raise

    # -- the JudgmentCache protocol ----------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> dict[str, Judgment]:
        """The stored judgment of every key that has one (missing keys are left out), as
        stored (``cached`` and ``attempts`` unchanged: :func:`ajudge_all` marks the hits). A
        row that no longer decodes into a :class:`Judgment` counts as missing, with a
        warning (the next ``put`` of its key replaces it)."""
        unique = list(dict.fromkeys(keys))
        rows: list[tuple[str, bytes]] = []
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start:start + _CHUNK]
            sql = ("SELECT key, payload FROM judgments WHERE key IN "
                   f"({', '.join('?' * len(chunk))})")
            rows.extend(self._retry("read", lambda sql=sql, chunk=chunk:
                                    self._conn().execute(sql, chunk).fetchall()))
        found: dict[str, Judgment] = {}
        bad: list[str] = []
        for key, payload in rows:
            try:
                found[key] = Judgment.from_dict(orjson.loads(payload))
            except (orjson.JSONDecodeError, TypeError, ValueError):
                bad.append(key)
        if bad:
            warnings.warn(f"{self.path}: {len(bad)} cached judgment(s) could not be read and "
                          f"count as missing (first key {bad[0]})", RuntimeWarning,
                          stacklevel=2)
        return found

    def put(self, key: str, judgment: Judgment) -> None:
        """Store ``judgment`` under ``key`` (replacing any earlier one), committed at once."""
        row = _row(key, judgment)
        self._retry("write", lambda: self._conn().execute(_PUT, row))

    # -- beyond the protocol ----------------------------------------------------------------

    def put_many(self, items: Iterable[tuple[str, Judgment]]) -> int:
        """Store every ``(key, judgment)`` in one transaction (all or none); the number
        stored. Every item is checked before anything is written."""
        rows = [_row(key, judgment) for key, judgment in items]
        if rows:
            self._retry("write", lambda: self._transaction(
                lambda conn: conn.executemany(_PUT, rows)))
        return len(rows)

    def stats(self) -> dict[str, Any]:
        """``{"path", "entries", "by_task", "by_status", "by_judge", "no_judge"}``:
        ``by_task`` / ``by_status`` count every entry (each task / status present appears);
        ``by_judge`` counts the entries with a judge label by label, ``no_judge`` those
        without one (the two add up to ``entries``)."""

        def read() -> dict[str, Any]:
            conn = self._conn()
            conn.execute("BEGIN")  # one snapshot for every count
            try:
                entries = conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
                by = {column: dict(conn.execute(
                    f"SELECT {column}, COUNT(*) FROM judgments GROUP BY {column} "
                    f"ORDER BY {column}").fetchall()) for column in ("task", "status", "judge")}
            finally:
                conn.execute("COMMIT")
            no_judge = by["judge"].pop(None, 0)
            return {"path": str(self.path), "entries": entries, "by_task": by["task"],
                    "by_status": by["status"], "by_judge": by["judge"], "no_judge": no_judge}

        return self._retry("read", read)

    def clear(self, judge: str | None = None) -> int:
        """Delete every entry (``judge=None``) or those of one judge label; the number
        deleted."""
        if judge is None:
            sql, args = "DELETE FROM judgments", ()
        else:
            sql, args = "DELETE FROM judgments WHERE judge = ?", (judge,)
        return self._retry("write", lambda: self._conn().execute(sql, args).rowcount)

    def __len__(self) -> int:
        return self._retry("read", lambda: self._conn().execute(
            "SELECT COUNT(*) FROM judgments").fetchone()[0])

    def close(self) -> None:
        """Close this process's connections (call it when no other thread is using the
        cache); any later use raises ``ValueError``. Closing twice is harmless."""
        with self._lock:
            self._closed = True
            mine = [h for h in self._handles if h.pid == os.getpid()]
            _INHERITED.extend(h.conn for h in self._handles if h.pid != os.getpid())
            self._handles = []
        for handle in mine:
            handle.conn.close()

    def __enter__(self) -> SQLiteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return _reopen, (str(self.path), self.timeout)

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    # -- connections, retries, the file's format ---------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection in this process (opened on first use, and again in a
        process forked after the parent opened one)."""
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == os.getpid() and not self._closed:
            return handle.conn
        pid = os.getpid()
        if pid != self._pid:  # forked: the parent's lock may have been held at the fork
            self._lock = threading.Lock()
            self._pid = pid
        with self._lock:
            if self._closed:
                raise ValueError(f"{self!r} is closed")
            if any(h.pid != pid for h in self._handles):  # first use after a fork
                _INHERITED.extend(h.conn for h in self._handles if h.pid != pid)
                self._handles = [h for h in self._handles if h.pid == pid]
            # connections of threads that have ended: closed here rather than kept open
            ended = [h for h in self._handles if h.thread() is None
                     or not h.thread().is_alive()]  # type: ignore[union-attr]
            self._handles = [h for h in self._handles if h not in ended]
            for old in ended:
                old.conn.close()
            handle = _Handle(self._connect(), threading.current_thread())
            self._handles.append(handle)
        self._local.handle = handle
        return handle.conn

    def _connect(self) -> sqlite3.Connection:
        # autocommit (isolation_level=None): every statement commits by itself, put_many
        # opens its own BEGIN IMMEDIATE; check_same_thread=False only so close() may close
        # the connections of other threads -- each connection is used by one thread.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise
            raise self._not_a_cache(f"it is not an SQLite database ({exc})") from exc
        return conn

    def _transaction(self, body: Any) -> Any:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _retry(self, what: str, operation: Any) -> Any:
        """``operation()``, tried again with backoff while SQLite reports the file busy or
        locked, until ``timeout`` seconds have passed: then :class:`CacheBusyError`."""
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CacheBusyError(
                        f"{self.path}: could not {what} the judgment cache: the file stayed "
                        f"locked by other writers for {self.timeout:g} s ({exc}); raise "
                        "timeout= or use fewer concurrent writers") from exc
                time.sleep(min(left, delay * (0.5 + random.random())))
                delay = min(delay * 2, 0.5)

    def _init_file(self) -> None:
        """Check the file is a cache of this format (or empty, then make it one) and in WAL
        mode. Nothing is written to a file that fails the check."""
        conn = self._conn()
        tables = self._tables(conn)
        if tables:
            self._check_format(conn, tables)
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        if not tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = self._tables(conn)  # another process may have made it meanwhile
                if tables:
                    self._check_format(conn, tables)
                else:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                                     [("format", FORMAT), ("version", str(VERSION))])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _tables(self, conn: sqlite3.Connection) -> set[str]:
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {name for (name,) in rows.fetchall()}
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise
            raise self._not_a_cache(f"it cannot be read as SQLite ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise self._not_a_cache(f"it is not an SQLite database ({exc})") from exc

    def _check_format(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        if "meta" not in tables or "judgments" not in tables:
            names = ", ".join(sorted(tables))
            raise self._not_a_cache(f"it is an SQLite database with the tables {names}")
        try:
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise
            raise self._not_a_cache(f"its meta table cannot be read ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise self._not_a_cache(f"its meta table names the format {meta.get('format')!r}")
        version = meta.get("version")
        if version != str(VERSION):
            raise ValueError(f"{self.path}: judgment cache format version {version}, this "
                             f"prefkit reads version {VERSION} (written by a newer prefkit? "
                             "upgrade, or use another cache file)")

    def _not_a_cache(self, why: str) -> ValueError:
        return ValueError(f"{self.path}: not a prefkit judgment cache: {why}; expected an "
                          f"SQLite file with the tables meta (format {FORMAT!r}) and "
                          "judgments, or a new or empty file")


def _reopen(path: str, timeout: float) -> SQLiteCache:
    return SQLiteCache(path, timeout=timeout)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _row(key: str, judgment: Judgment) -> tuple[Any, ...]:
    if not isinstance(key, str):
        raise TypeError(f"a cache key is a string, got {type(key).__name__}")
    if not isinstance(judgment, Judgment):
        raise TypeError(f"expected a Judgment, got {type(judgment).__name__}")
    if judgment.status == "failed":
        raise ValueError(f"a failed judgment is not cached (key {key}): a re-run must try "
                         "again")
    try:
        payload = orjson.dumps(judgment.to_dict())
    except TypeError as exc:
        raise TypeError(f"judgment (key {key}) cannot be stored as JSON: {exc} (extra must "
                        "hold JSON values)") from exc
    label = judgment.extra.get("judge")
    label = label if isinstance(label, str) and label else None
    return key, judgment.task, judgment.status, label, payload, time.time()
