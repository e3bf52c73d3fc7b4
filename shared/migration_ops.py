"""Alembic operations for the kernel's tables that several services keep in their own database.

The outbox (shared/outbox.py) and the processed event ids (shared/events.py) are the same table
in every service that has them, so their migrations call these instead of each writing the table
out again. A migration must make the same schema however late it runs: these functions are frozen
as the revisions that call them first ran, and their output never changes. A later change to one
of these tables is a new revision in each service (and, if they share it, a new function here),
never an edit of these.
"""

import sqlalchemy as sa
from alembic import op

import shared.db


def create_outbox() -> None:
    """The ``outbox`` table and the index the relay finds unpublished events by."""
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=50), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("occurred_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", shared.db.UTCDateTime(timezone=True), nullable=True),
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
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("processed_at", shared.db.UTCDateTime(timezone=True), nullable=False),
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
