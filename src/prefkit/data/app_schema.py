"""The annotation app's tables in the feedback store (schema version 3).

The labels people give in ``prefkit serve`` are ordinary records in ``records``; these tables
hold what the app needs around them:

- ``annotators``: who may sign in -- a name, a role (``admin`` or ``annotator``), the SHA-256
  of their token (the token itself is shown once and never stored), revocation time;
- ``campaigns``: a labelling job -- task type, overlap (labels per item), guidelines, the
  task's settings (JSON) and which annotators may work on it (JSON list, null = everyone);
- ``items``: what is labelled -- one row per prompt with its candidate responses (JSON), the
  number of labels it has and whether that reached the overlap (``full``; both kept in the
  transaction of each label). ``role`` is ``item`` for what annotators are handed, ``pool``
  for an arena's prompts with every model's output (a battle is an ``item`` drawn from it);
- ``assignments``: an item leased to one annotator (``lease_expires``), the order the responses
  were shown in (JSON), and its state (``active``, ``done``, ``skipped``); one row per item and
  annotator, which is what guarantees nobody gets an item twice;
- ``labels``: one per submitted answer -- the assignment, the record it became, the client's
  idempotency key (unique: a retried submission finds its first result), the raw answer and the
  seconds the annotator spent.

The tables are frozen copies here (like migration 1): a later change is a new migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def _tables(meta: sa.MetaData) -> dict[str, sa.Table]:
    ts = sa.DateTime(timezone=True)
    annotators = sa.Table(
        "annotators", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
    )
    campaigns = sa.Table(
        "campaigns", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("overlap", sa.Integer, nullable=False),
        sa.Column("guidelines", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("annotators", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )
    items = sa.Table(
        "items", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("source_id", sa.Text, nullable=True),
        sa.Column("n_labels", sa.Integer, nullable=False),
        sa.Column("full", sa.Boolean, nullable=False),
        sa.UniqueConstraint("campaign_id", "position", name="uq_items_position"),
    )
    assignments = sa.Table(
        "assignments", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("shown", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("leased_at", ts, nullable=False),
        sa.Column("lease_expires", ts, nullable=False),
        sa.UniqueConstraint("item_id", "annotator_id", name="uq_assignments_item_annotator"),
    )
    labels = sa.Table(
        "labels", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False),
        sa.Column("record_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.UniqueConstraint("item_id", "annotator_id", name="uq_labels_item_annotator"),
    )
    return {"annotators": annotators, "campaigns": campaigns, "items": items,
            "assignments": assignments, "labels": labels}


_CURRENT = _tables(sa.MetaData())
ANNOTATORS = _CURRENT["annotators"]
CAMPAIGNS = _CURRENT["campaigns"]
ITEMS = _CURRENT["items"]
ASSIGNMENTS = _CURRENT["assignments"]
LABELS = _CURRENT["labels"]


def migration_3(conn: Connection) -> None:
    """The annotation app's tables and the indexes its queries use."""
    meta = sa.MetaData()
    tables = _tables(meta)
    sa.Index("ix_items_open", tables["items"].c.campaign_id, tables["items"].c.role,
             tables["items"].c.full, tables["items"].c.position)
    sa.Index("ix_assignments_annotator", tables["assignments"].c.annotator_id,
             tables["assignments"].c.campaign_id, tables["assignments"].c.state)
    sa.Index("ix_assignments_item_state", tables["assignments"].c.item_id,
             tables["assignments"].c.state)
    sa.Index("ix_labels_campaign", tables["labels"].c.campaign_id,
             tables["labels"].c.annotator_id)
    meta.create_all(conn)
