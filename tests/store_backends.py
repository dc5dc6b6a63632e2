"""Stores for tests on both backends: an SQLite file, or a fresh schema of the PostgreSQL
database named by ``PREFKIT_TEST_POSTGRES_URL`` (dropped afterwards; skipped when it is not set,
as it is not outside ``.ci/run``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

PG_ENV = "PREFKIT_TEST_POSTGRES_URL"
PG_SKIP = ("PREFKIT_TEST_POSTGRES_URL not set: start PostgreSQL and set it (e.g. "
           "postgresql+psycopg://prefkit:prefkit@127.0.0.1:5432/prefkit; .ci/run does) to run "
           "these tests against it")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""``@pytest.fixture(params=BACKENDS)``: a test on SQLite and (when PG_ENV is set) PostgreSQL."""


@contextmanager
def backend_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """URL of an empty store: an SQLite file in ``tmp_path``, or a new schema of the PostgreSQL
    database in PREFKIT_TEST_POSTGRES_URL (dropped afterwards)."""
    if kind == "sqlite":
        yield str(tmp_path / "store.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    schema = f"prefkit_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
