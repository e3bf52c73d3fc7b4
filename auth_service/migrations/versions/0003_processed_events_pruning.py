"""processed events: an index on processed_at, by which old ids are pruned

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_processed_events_processed_at", table_name="processed_events")
