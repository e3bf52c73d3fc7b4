"""What the services' migrations share: column kinds, and the kernel's tables that several
services keep in their own database.

The outbox (shared/outbox.py) and the processed event ids (shared/events.py) are the same table
in every service that has them, so their migrations call these instead of each writing the table
out again. A migration must make the same schema however late it runs: everything here is frozen
as the revisions that use it first ran, and its output never changes. A later change to one of
these tables or column kinds is a new revision in each service (and, if they share it, a new
function here), never an edit of these.
"""

from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from alembic import op

import shared.db


def uuid_column(name: str, *, nullable: bool = False) -> sa.Column[UUID]:
    """A UUID (``uuid`` on PostgreSQL, 32 hex digits on SQLite), NOT NULL unless ``nullable``."""
    return sa.Column(name, sa.Uuid(), nullable=nullable)


def utc_column(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    """A UTC timestamp (shared.db.UTCDateTime: ``timestamp with time zone`` on PostgreSQL), NOT NULL
    unless ``nullable``."""
    return sa.Column(name, shared.db.UTCDateTime(timezone=True), nullable=nullable)


def create_outbox() -> None:
    """The ``outbox`` table and the index the relay finds unpublished events by, as the first
    revisions of auth and users (0001) and of the Airtable gateway (0002) made them."""
    op.create_table(
        "outbox",
        uuid_column("id"),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=50), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        utc_column("occurred_at"),
        utc_column("published_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["published_at", "occurred_at"], unique=False)


def drop_outbox() -> None:
    op.drop_index("ix_outbox_unpublished", table_name="outbox")
    op.drop_table("outbox")


def create_processed_events(*, pruning_index: bool = True) -> None:
    """The ``processed_events`` table (the ids of the events a consumer applied), with the index
    that pruning finds old ids by unless ``pruning_index`` is False (the first services had the
    table a revision before the index)."""
    op.create_table(
        "processed_events",
        uuid_column("event_id"),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        utc_column("processed_at"),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_processed_events")),
    )
    if pruning_index:
        create_processed_events_pruning_index()


def drop_processed_events() -> None:
    op.drop_table("processed_events")  # its index goes with it


def create_processed_events_pruning_index() -> None:
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"], unique=False)


def drop_processed_events_pruning_index() -> None:
    op.drop_index("ix_processed_events_processed_at", table_name="processed_events")
