"""The feedback store: every record prefkit has seen, in one SQL database.

``FeedbackStore(url)`` opens (and creates or upgrades) a store. ``url`` is a plain path for an
SQLite file, or any SQLAlchemy URL of an SQLite or PostgreSQL database, e.g.
``postgresql+psycopg://user:password@localhost/prefkit``.

- **Idempotent**: a record is stored once under its id (:func:`~prefkit.data.records.record_id`,
  content-derived when the record has none). Adding it again counts as a *duplicate*; adding a
  different record under a stored id is a *conflict*: reported with its id, never overwritten.
- **Safe to interrupt**: records are written in batches, one transaction each, so an interrupted
  import leaves whole batches only, and running it again completes it.
- **Concurrent**: several processes may write at once. SQLite runs in WAL mode with a busy
  timeout and takes the write lock up front (``BEGIN IMMEDIATE``); transient "database is
  locked" errors (and PostgreSQL deadlocks or serialization failures) are retried with backoff.
- **Versioned**: ``prefkit_schema_version`` records the migrations applied; opening a store
  applies the missing ones (:data:`MIGRATIONS`) in one transaction, and refuses a store written
  by a newer prefkit.
- **Checked before opening** (:func:`check_store_url`): a folder, a file that is not an SQLite
  database, a missing PostgreSQL driver (with the extra to install) or a server that cannot be
  reached is a :class:`StoreError` (a ``ValueError``: exit code 2 in the CLI) with one clear
  message. ``FeedbackStore(url, create=False)`` (what read-only commands use) creates nothing:
  a store that does not exist is a :class:`StoreError` ("no store at ...").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from .app_schema import migration_3 as _app_migration_3
from .formats import decode_native
from .records import KINDS, Record, to_dict
from .write_lock import WriteLock

if TYPE_CHECKING:
    from .io import WriteReport

T = TypeVar("T")
log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0
"""How long an SQLite connection waits for another writer before giving up."""
DEFAULT_BATCH_SIZE = 1000
_LOOKUP_CHUNK = 500  # ids per "WHERE id IN (...)" (well under SQLite's variable limit)
_PAGE_SIZE = 1000  # rows per page when streaming records
_UPGRADE_LOCK_KEY = 0x7072_6566_6B69  # PostgreSQL advisory lock serializing schema upgrades
_RETRY_ATTEMPTS = 10
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
SUPPORTED_DIALECTS = ("sqlite", "postgresql")


class SchemaVersionError(RuntimeError):
    """The database's schema is newer than this version of prefkit knows."""


class StoreError(ValueError):
    """A store URL or path that does not name a usable store (see :func:`check_store_url`)."""


class WriteBusy(RuntimeError):
    """``FeedbackStore.transaction(action, wait=False)``: the write lock is not free right now
    (or the store cannot write without waiting: PostgreSQL); nothing was written. ``here``:
    another thread of this process holds it (it is let go within one short transaction)."""

    def __init__(self, message: str, *, here: bool = False):
        super().__init__(message)
        self.here = here


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


@dataclass
class AddReport:
    """What adding records did: ``seen`` records submitted, ``inserted`` new ones,
    ``duplicates`` (same id and content as a stored or earlier record) and conflicts (same id,
    different content; the stored record is kept) listed by id in ``conflict_ids``."""

    seen: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflict_ids: list[str] = field(default_factory=list)
    import_id: int | None = None

    @property
    def conflicts(self) -> int:
        return len(self.conflict_ids)

    def merge(self, other: AddReport) -> None:
        """Add another report's counts to this one."""
        self.seen += other.seen
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.conflict_ids.extend(other.conflict_ids)

    def to_dict(self, max_ids: int = 100) -> dict[str, Any]:
        """JSON-ready summary (at most ``max_ids`` conflicting ids are listed)."""
        out: dict[str, Any] = {
            "seen": self.seen,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "conflict_ids": self.conflict_ids[:max_ids],
        }
        if self.import_id is not None:
            out["import_id"] = self.import_id
        return out


# ---------------------------------------------------------------------------------------------
# Schema: the current tables (for queries) and the migrations that build them
# ---------------------------------------------------------------------------------------------

_META = sa.MetaData()

VERSIONS = sa.Table(
    "prefkit_schema_version", _META,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

RECORDS = sa.Table(
    "records", _META,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("annotator_id", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("annotator_kind", sa.String(32), nullable=True),  # migration 2
)

IMPORTS = sa.Table(
    "imports", _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("format", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("seen", sa.Integer, nullable=False, default=0),
    sa.Column("inserted", sa.Integer, nullable=False, default=0),
    sa.Column("duplicates", sa.Integer, nullable=False, default=0),
    sa.Column("conflicts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Migration:
    """One step of the schema history: ``apply`` runs inside the upgrade transaction."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _migration_1(conn: Connection) -> None:
    """The records table as first released (a frozen copy: later changes are migrations)."""
    meta = sa.MetaData()
    sa.Table(
        "records", meta,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("annotator_id", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ).create(conn)


def _migration_2(conn: Connection) -> None:
    """Annotator kinds (backfilled from the payloads), indexes for kind / annotator filters,
    and the imports log."""
    conn.execute(sa.text("ALTER TABLE records ADD COLUMN annotator_kind VARCHAR(32)"))
    _backfill_annotator_kind(conn)
    conn.execute(sa.text("CREATE INDEX ix_records_kind ON records (kind)"))
    conn.execute(sa.text("CREATE INDEX ix_records_annotator_id ON records (annotator_id)"))
    meta = sa.MetaData()
    sa.Table(
        "imports", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("format", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("seen", sa.Integer, nullable=False),
        sa.Column("inserted", sa.Integer, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("conflicts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    ).create(conn)


def _backfill_annotator_kind(conn: Connection) -> None:
    """Set ``annotator_kind`` of existing rows from their payloads, one page at a time."""
    table = sa.table("records", sa.column("id"), sa.column("payload"),
                     sa.column("annotator_id"), sa.column("annotator_kind"))
    query = (sa.select(table.c.id, table.c.payload)
             .where(table.c.annotator_id.is_not(None)).order_by(table.c.id).limit(_PAGE_SIZE))
    update = (sa.update(table).where(table.c.id == sa.bindparam("row_id"))
              .values(annotator_kind=sa.bindparam("row_kind")))
    last = None
    while True:
        page = query if last is None else query.where(table.c.id > last)
        rows = conn.execute(page).all()
        if not rows:
            return
        params = [{"row_id": rid, "row_kind": _payload_annotator_kind(payload)}
                  for rid, payload in rows]
        conn.execute(update, params)
        last = rows[-1][0]


def _payload_annotator_kind(payload: str) -> str | None:
    annotator = orjson.loads(payload).get("annotator")
    if isinstance(annotator, dict):
        return annotator.get("kind", "human")
    return None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "records table", _migration_1),
    Migration(2, "annotator kinds, indexes on kind and annotator, imports log", _migration_2),
    Migration(3, "annotation app: annotators, campaigns, items, assignments, labels",
              _app_migration_3),
)
LATEST_VERSION = MIGRATIONS[-1].version


# ---------------------------------------------------------------------------------------------
# Engines: URLs, SQLite settings, retries
# ---------------------------------------------------------------------------------------------


SQLITE_HEADER = b"SQLite format 3\x00"
POSTGRES_EXTRA = "pip install 'prefkit[postgres]'"


def store_url(url: str | os.PathLike) -> URL:
    """SQLAlchemy URL of a store: a plain path means an SQLite file. Creates nothing."""
    if isinstance(url, str) and "://" in url:
        try:
            return make_url(url)
        except sa.exc.ArgumentError:
            raise StoreError(f"{url}: not a database URL (expected a file path or e.g. "
                             "postgresql+psycopg://user:password@host/db)") from None
    path = Path(url).expanduser()
    return make_url(f"sqlite:///{path.resolve()}")


def _shown(sa_url: URL) -> str:
    return sa_url.render_as_string(hide_password=True)


def sqlite_path(sa_url: URL) -> Path | None:
    """The file of an SQLite URL (None for an in-memory database)."""
    if sa_url.database in (None, "", ":memory:") or sa_url.database.startswith("file:"):
        return None
    return Path(sa_url.database)


def check_store_url(url: str | os.PathLike, *, create: bool = True) -> URL:
    """The SQLAlchemy URL of a store, checked before anything is opened; creates nothing.

    An SQLite path must be an SQLite file, or (``create=True``) a new file in a folder that
    can be made; ``create=False`` requires a prefkit store there already. A PostgreSQL URL
    needs its driver installed (``pip install 'prefkit[postgres]'``). Raises
    :class:`StoreError` naming the path or URL and what was expected."""
    sa_url = store_url(url)
    dialect = sa_url.get_backend_name()
    if dialect not in SUPPORTED_DIALECTS:
        raise StoreError(f"unsupported database {dialect!r} in {_shown(sa_url)}: the feedback "
                         f"store runs on {' or '.join(SUPPORTED_DIALECTS)}")
    if dialect == "sqlite":
        _check_sqlite(sa_url, create)
    else:
        _check_driver(sa_url)
    return sa_url


def _check_sqlite(sa_url: URL, create: bool) -> None:
    path = sqlite_path(sa_url)
    if path is None:
        if not create:
            raise StoreError(f"no store at {_shown(sa_url)}: an in-memory database starts empty")
        return
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a store; give a file such as "
                         f"{path / 'prefkit.db'}")
    if path.exists():
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            raise StoreError(f"{path} is not a prefkit store: not an SQLite database file")
        if not create and not _has_prefkit_schema(path):
            raise StoreError(f"no store at {path}: the file holds no prefkit store (import "
                             f"records with `prefkit store import FILE --db {path}`)")
        return
    if not create:
        raise StoreError(f"no store at {path} (`prefkit store import FILE --db {path}` "
                         "creates one)")
    from .io import check_output_path

    check_output_path(path)


def _has_prefkit_schema(path: Path) -> bool:
    """True when the SQLite file has prefkit's schema table (read-only: changes nothing)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return False
    try:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                             (VERSIONS.name,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a prefkit store: {exc}") from None
    finally:
        conn.close()
    return found is not None


def _check_driver(sa_url: URL) -> None:
    try:
        dialect = sa_url.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise StoreError(f"{_shown(sa_url)}: unknown database driver "
                         f"{sa_url.get_driver_name()!r}; for PostgreSQL use "
                         f"postgresql+psycopg://... ({POSTGRES_EXTRA})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise StoreError(f"{_shown(sa_url)}: the PostgreSQL driver is not installed "
                         f"({exc}); {POSTGRES_EXTRA} and use postgresql+psycopg://...") from None


def create_store_engine(url: str | os.PathLike | URL, *, busy_timeout_s: float = BUSY_TIMEOUT_S
                        ) -> Engine:
    """An engine for a store URL or path, configured for concurrent writers (SQLite: waiting
    up to ``busy_timeout_s`` for another writer)."""
    sa_url = url if isinstance(url, URL) else store_url(url)
    dialect = sa_url.get_backend_name()
    if dialect not in SUPPORTED_DIALECTS:
        raise StoreError(f"unsupported database {dialect!r} in {_shown(sa_url)}: the feedback "
                         f"store runs on {' or '.join(SUPPORTED_DIALECTS)}")
    if dialect != "sqlite":
        return sa.create_engine(sa_url, pool_pre_ping=True)
    in_memory = sa_url.database in (None, "", ":memory:")
    options: dict[str, Any] = {"poolclass": StaticPool} if in_memory else {}
    engine = sa.create_engine(
        sa_url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}, **options)
    sa.event.listen(engine, "connect", _sqlite_connect_listener(wal=not in_memory,
                                                                busy_timeout_s=busy_timeout_s))
    # BEGIN comes from the dialect, not from an engine "begin" listener: any listener on the
    # engine has SQLAlchemy dispatch its execute events around every statement
    engine.dialect.do_begin = _sqlite_begin_immediate  # type: ignore[method-assign]
    return engine


def reader_engine(engine: Engine) -> Engine:
    """``engine`` for read-only work: on SQLite its transactions begin DEFERRED (no write
    lock); the engine's own begin IMMEDIATE."""
    reader = engine.execution_options(prefkit_begin="DEFERRED")
    if engine.dialect.name == "sqlite":
        sa.event.listen(reader, "begin", _sqlite_begin)
    return reader


def _sqlite_connect_listener(wal: bool, busy_timeout_s: float = BUSY_TIMEOUT_S
                             ) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN (pysqlite's implicit one is deferred).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if wal:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    return on_connect


def _sqlite_begin_immediate(dbapi_conn: Any) -> None:
    """Writers take the write lock at BEGIN (no deadlock-prone lock upgrades); a reader's
    transaction has begun already (:func:`_sqlite_begin`)."""
    if not dbapi_conn.in_transaction:
        cursor = dbapi_conn.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """A :func:`reader_engine`'s "begin" listener: ``prefkit_begin`` (DEFERRED) instead of the
    engine's IMMEDIATE."""
    mode = conn.get_execution_options().get("prefkit_begin", "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _is_transient(exc: DBAPIError) -> bool:
    """Errors worth retrying: SQLite lock timeouts, PostgreSQL deadlocks / serialization."""
    if getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


def _retrying(action: Callable[[], T], attempts: int = _RETRY_ATTEMPTS) -> T:
    """Run ``action`` (one whole transaction), retrying transient errors with backoff."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return action()
        except DBAPIError as exc:
            if attempt == attempts - 1 or not _is_transient(exc):
                raise
            log.info("retrying a transaction after a transient error: %s", exc.orig)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Schema versions and upgrades
# ---------------------------------------------------------------------------------------------


def schema_version(conn: Connection) -> int:
    """Schema version of the database on ``conn`` (0 for an empty database)."""
    if not sa.inspect(conn).has_table(VERSIONS.name):
        return 0
    return conn.execute(sa.select(sa.func.max(VERSIONS.c.version))).scalar() or 0


def _check_known(version: int, url: URL) -> None:
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"{url.render_as_string(hide_password=True)}: the store has schema version "
            f"{version} but this prefkit knows versions up to {LATEST_VERSION}; "
            "upgrade prefkit to open it"
        )


def upgrade(engine: Engine, target: int | None = None) -> int:
    """Apply the missing migrations up to ``target`` (default: the latest) in one transaction;
    returns the resulting version. Concurrent upgrades are serialized (SQLite's write lock,
    a PostgreSQL advisory lock). Raises :class:`SchemaVersionError` for a newer schema."""
    target = LATEST_VERSION if target is None else target
    with reader_engine(engine).connect() as conn:
        current = schema_version(conn)
    _check_known(current, engine.url)
    if current >= target:
        return current
    return _retrying(lambda: _upgrade_transaction(engine, target))


def _upgrade_transaction(engine: Engine, target: int) -> int:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_UPGRADE_LOCK_KEY)))
        VERSIONS.create(conn, checkfirst=True)
        current = schema_version(conn)
        _check_known(current, engine.url)
        for migration in MIGRATIONS[current:target]:
            migration.apply(conn)
            conn.execute(sa.insert(VERSIONS).values(
                version=migration.version, description=migration.description,
                applied_at=_now()))
        return max(current, target)


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def record_row(record: Record, created_at: datetime | None = None) -> dict[str, Any]:
    """The ``records`` row of a record (its payload carries the id, derived if missing)."""
    payload = to_dict(record)
    # records.content_hash and records.record_id (a content-derived id), from the one dictionary
    content = {k: v for k, v in payload.items() if k != "id"} if "id" in payload else payload
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    rid = record.id or f"{record.kind}-{digest[:24]}"
    payload["id"] = rid
    annotator = record.annotator
    return {
        "id": rid,
        "kind": record.kind,
        "content_hash": digest,
        "payload": orjson.dumps(payload).decode(),
        "annotator_id": annotator.id if annotator else None,
        "annotator_kind": annotator.kind.value if annotator else None,
        "created_at": created_at or _now(),
    }


def _dedupe_batch(records: list[Record]) -> tuple[list[dict[str, Any]], AddReport]:
    """Rows of a batch, one per id and sorted by id (a fixed lock order across writers), and
    the report of the repeats inside the batch."""
    report = AddReport(seen=len(records))
    now = _now()
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        row = record_row(record, now)
        first = rows.get(row["id"])
        if first is None:
            rows[row["id"]] = row
        elif first["content_hash"] == row["content_hash"]:
            report.duplicates += 1
        else:
            report.conflict_ids.append(row["id"])
    return [rows[rid] for rid in sorted(rows)], report


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class FeedbackStore:
    """Feedback records in an SQLite file or a PostgreSQL database (see the module docstring).

    Opening a store creates or upgrades its schema. ``create=False`` opens an existing store
    only (a missing one is a :class:`StoreError` and nothing is created); an older schema is
    still upgraded. Every failure to open is a :class:`StoreError` naming the store, except a
    schema newer than this prefkit (:class:`SchemaVersionError`). Use it as a context manager,
    or call :meth:`close`, to release its connections.
    """

    def __init__(self, url: str | os.PathLike, *, migrate: bool = True, create: bool = True):
        sa_url = check_store_url(url, create=create)
        path = sqlite_path(sa_url) if sa_url.get_backend_name() == "sqlite" else None
        if path is not None and create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the store {path}: {exc.strerror}") from None
        self.engine = create_store_engine(sa_url)
        self._reader = reader_engine(self.engine)
        try:
            if not create and self._read_version() == 0:
                raise StoreError(f"no store at {_shown(sa_url)}: the database holds no prefkit "
                                 "store")
            self.version = upgrade(self.engine) if migrate else self._read_version()
            _check_known(self.version, self.engine.url)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            reason = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot open the store {_shown(sa_url)}: "
                             f"{str(reason).strip().splitlines()[0]}") from None
        except BaseException:
            self.engine.dispose()
            raise
        self._insert = self._insert_statement()
        self._write_lock = (WriteLock(self.engine.url.database)
                            if self.engine.dialect.name == "sqlite" else contextlib.nullcontext())
        self._no_wait: Engine | None = None  # SQLite: writes that never wait (made when needed)

    # --- lifecycle ----------------------------------------------------------------------------

    @functools.cached_property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release the store's connections."""
        self.engine.dispose()
        if self._no_wait is not None and self._no_wait is not self.engine:
            self._no_wait.dispose()
        if isinstance(self._write_lock, WriteLock):
            self._write_lock.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({self.url!r})"

    def _read_version(self) -> int:
        with self._reader.connect() as conn:
            return schema_version(conn)

    def _insert_statement(self) -> sa.Insert:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return (insert(RECORDS).on_conflict_do_nothing(index_elements=[RECORDS.c.id])
                .returning(RECORDS.c.id))

    # --- writing ------------------------------------------------------------------------------

    def add(self, records: Iterable[Record], batch_size: int = DEFAULT_BATCH_SIZE) -> AddReport:
        """Store records, ``batch_size`` per transaction. Stored records are never changed:
        re-adding one counts as a duplicate, a different record under a stored id as a
        conflict. If ``records`` raises midway, the batches committed so far stay."""
        report = AddReport()
        self._add_batches(records, batch_size, report, import_id=None)
        return report

    def add_in(self, conn: Connection, record: Record) -> str:
        """Store one record inside the caller's transaction ``conn`` (e.g. the annotation app's
        label and its bookkeeping commit together). Returns ``"inserted"``, ``"duplicate"``
        (same id and content stored) or ``"conflict"`` (another record under its id: kept)."""
        row = record_row(record)
        if conn.execute(self._insert, [row]).scalars().first() is not None:
            return "inserted"
        stored = self._stored_hashes(conn, [row["id"]])
        return "duplicate" if stored.get(row["id"]) == row["content_hash"] else "conflict"

    def delete_in(self, conn: Connection, rid: str) -> bool:
        """Delete the record ``rid`` inside the caller's transaction (the annotation app's undo
        of an annotator's own last label); True when it existed."""
        return conn.execute(sa.delete(RECORDS).where(RECORDS.c.id == rid)).rowcount > 0

    def transaction(self, action: Callable[[Connection], T], *, wait: bool = True) -> T:
        """Run ``action(conn)`` in one write transaction, retried on transient lock errors
        (SQLite: the write lock is taken at BEGIN). On SQLite writers first queue on a
        :class:`~prefkit.data.write_lock.WriteLock` (this process's threads, then other
        processes through a lock file): SQLite's busy handler polls with sleeps of up to 100 ms
        rather than waking a waiting writer, which put a server's slowest requests at several
        times its median.

        ``wait=False`` (for a caller that must not block, such as an event loop): run it only
        if the write lock is free right now, else raise :class:`WriteBusy` having written
        nothing -- SQLite only (another thread of this process or another process writing:
        busy); on PostgreSQL always :class:`WriteBusy` (its statements wait on the network)."""
        if not wait:
            return self._transaction_now(action)

        def run() -> T:
            with self._write_lock, self.engine.begin() as conn:
                return action(conn)

        return _retrying(run)

    def _transaction_now(self, action: Callable[[Connection], T]) -> T:
        if self.engine.dialect.name != "sqlite":
            raise WriteBusy("PostgreSQL transactions wait on the server")
        if not self._write_lock.acquire(blocking=False):
            if self._write_lock.held_elsewhere:
                raise WriteBusy("another process is writing")
            raise WriteBusy("another thread of this process is writing", here=True)
        try:
            if self._no_wait is None:  # in memory: no other process can hold its lock
                in_memory = self.engine.url.database in (None, "", ":memory:")
                self._no_wait = (self.engine if in_memory else
                                 create_store_engine(self.engine.url, busy_timeout_s=0))
            with self._no_wait.begin() as conn:
                return action(conn)
        except DBAPIError as exc:
            if _is_transient(exc):  # rolled back: another process holds SQLite's write lock
                raise WriteBusy("another process is writing") from exc
            raise
        finally:
            self._write_lock.release()

    def read(self, action: Callable[[Connection], T]) -> T:
        """Run ``action(conn)`` on a read-only connection (no write lock)."""
        with self._reader.connect() as conn:
            return action(conn)

    def import_file(self, path: str | os.PathLike, format: str | None = None, *,
                    split: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> AddReport:
        """Import a feedback file (any source :func:`prefkit.data.io.read_records` reads) and
        log it in the imports table. The first bad record raises its
        :class:`~prefkit.data.errors.RecordError`; the batches before it stay committed, so
        importing the fixed file again completes the import. A source that cannot start (empty,
        unreadable, an unknown split, a bad first record) raises before the import is logged."""
        from .io import primed, read_records

        records = primed(read_records(path, format, split=split))
        report = AddReport(import_id=self._start_import(path, format))
        try:
            self._add_batches(records, batch_size, report, report.import_id)
        except BaseException as exc:
            with contextlib.suppress(SQLAlchemyError):
                self._finish_import(report.import_id, "failed", str(exc) or repr(exc))
            raise
        self._finish_import(report.import_id, "done")
        return report

    def _add_batches(self, records: Iterable[Record], batch_size: int, report: AddReport,
                     import_id: int | None) -> None:
        for batch in _batches(records, batch_size):
            rows, batch_report = _dedupe_batch(batch)
            write = functools.partial(self._write_batch, rows, batch_report, import_id)
            stored = _retrying(write)
            batch_report.merge(stored)
            report.merge(batch_report)

    def _write_batch(self, rows: list[dict[str, Any]], in_batch: AddReport,
                     import_id: int | None) -> AddReport:
        """One transaction: insert the new rows, classify the others, log progress."""
        with self.engine.begin() as conn:
            inserted = set(conn.execute(self._insert, rows).scalars())
            report = AddReport(inserted=len(inserted))
            others = {r["id"]: r["content_hash"] for r in rows if r["id"] not in inserted}
            stored = self._stored_hashes(conn, list(others))
            for rid, digest in others.items():
                if stored.get(rid) == digest:
                    report.duplicates += 1
                else:
                    report.conflict_ids.append(rid)
            if import_id is not None:
                self._log_progress(conn, import_id, in_batch, report)
            return report

    @staticmethod
    def _stored_hashes(conn: Connection, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(ids, _LOOKUP_CHUNK):
            query = sa.select(RECORDS.c.id, RECORDS.c.content_hash).where(RECORDS.c.id.in_(chunk))
            found.update(conn.execute(query).all())
        return found

    # --- the imports log ----------------------------------------------------------------------

    def _start_import(self, path: str | os.PathLike, format: str | None) -> int:
        def start() -> int:
            with self.engine.begin() as conn:
                result = conn.execute(sa.insert(IMPORTS).values(
                    source=str(path), format=format, status="running", seen=0, inserted=0,
                    duplicates=0, conflicts=0, started_at=_now()))
                return result.inserted_primary_key[0]

        return _retrying(start)

    @staticmethod
    def _log_progress(conn: Connection, import_id: int, in_batch: AddReport,
                      stored: AddReport) -> None:
        conn.execute(sa.update(IMPORTS).where(IMPORTS.c.id == import_id).values(
            seen=IMPORTS.c.seen + in_batch.seen,
            inserted=IMPORTS.c.inserted + stored.inserted,
            duplicates=IMPORTS.c.duplicates + in_batch.duplicates + stored.duplicates,
            conflicts=IMPORTS.c.conflicts + in_batch.conflicts + stored.conflicts,
        ))

    def _finish_import(self, import_id: int | None, status: str, error: str | None = None
                       ) -> None:
        def finish() -> None:
            with self.engine.begin() as conn:
                conn.execute(sa.update(IMPORTS).where(IMPORTS.c.id == import_id).values(
                    status=status, error=error, finished_at=_now()))

        _retrying(finish)

    def imports(self) -> list[dict[str, Any]]:
        """The imports log, oldest first."""
        with self._reader.connect() as conn:
            rows = conn.execute(sa.select(IMPORTS).order_by(IMPORTS.c.id)).mappings().all()
        return [dict(row) for row in rows]

    # --- reading ------------------------------------------------------------------------------

    def _filtered(self, query: sa.Select, kind: str | None, annotator: str | None) -> sa.Select:
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
            query = query.where(RECORDS.c.kind == kind)
        if annotator is not None:
            query = query.where(RECORDS.c.annotator_id == annotator)
        return query

    def iter_records(self, kind: str | None = None, annotator: str | None = None, *,
                     page_size: int = _PAGE_SIZE) -> Iterator[Record]:
        """Stored records in id order, optionally of one ``kind`` and/or ``annotator`` id.
        Streams page by page (keyset pagination): the table is never loaded whole and no
        transaction stays open between pages."""
        base = self._filtered(sa.select(RECORDS.c.id, RECORDS.c.payload), kind, annotator)
        base = base.order_by(RECORDS.c.id).limit(page_size)
        last: str | None = None
        while True:
            query = base if last is None else base.where(RECORDS.c.id > last)
            with self._reader.connect() as conn:
                rows = conn.execute(query).all()
            for _rid, payload in rows:
                yield decode_native(orjson.loads(payload))
            if len(rows) < page_size:
                return
            last = rows[-1][0]

    def get(self, rid: str) -> Record | None:
        """The record stored under id ``rid``, or None."""
        with self._reader.connect() as conn:
            payload = conn.execute(
                sa.select(RECORDS.c.payload).where(RECORDS.c.id == rid)).scalar()
        return None if payload is None else decode_native(orjson.loads(payload))

    def count(self, kind: str | None = None, annotator: str | None = None) -> int:
        """Number of stored records (of one kind and/or annotator)."""
        query = self._filtered(sa.select(sa.func.count()).select_from(RECORDS), kind, annotator)
        with self._reader.connect() as conn:
            return conn.execute(query).scalar_one()

    def stats(self) -> dict[str, Any]:
        """Counts per kind and per annotator kind, distinct annotators, imports, version, URL."""
        with self._reader.connect() as conn:
            kinds = self._group_counts(conn, RECORDS.c.kind)
            annotator_kinds = self._group_counts(conn, RECORDS.c.annotator_kind)
            annotators = conn.execute(
                sa.select(sa.func.count(sa.distinct(RECORDS.c.annotator_id)))).scalar_one()
            imports = conn.execute(sa.select(sa.func.count()).select_from(IMPORTS)).scalar_one()
            version = schema_version(conn)
        return {
            "url": self.url,
            "schema_version": version,
            "records": sum(kinds.values()),
            "kinds": kinds,
            "annotator_kinds": {("none" if k is None else k): n
                                for k, n in annotator_kinds.items()},
            "annotators": annotators,
            "imports": imports,
        }

    @staticmethod
    def _group_counts(conn: Connection, column: sa.Column) -> dict[Any, int]:
        query = sa.select(column, sa.func.count()).group_by(column).order_by(column)
        return dict(conn.execute(query).all())

    def export(self, path: str | os.PathLike, format: str = "prefkit", *,
               kind: str | None = None, annotator: str | None = None,
               keep_empty: bool = True) -> WriteReport:
        """Write the stored records (optionally one kind / annotator) to ``path`` in
        ``format`` via :func:`prefkit.data.io.write_records` (``keep_empty=False``: no file
        when nothing is written)."""
        from .io import write_records

        return write_records(self.iter_records(kind, annotator), path, format,
                             keep_empty=keep_empty)
