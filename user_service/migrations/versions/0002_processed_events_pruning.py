"""processed events: an index on processed_at, by which old ids are pruned

Revision ID: 0002
Revises: 0001
"""

from shared import migration_ops

revision: str = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    migration_ops.create_processed_events_pruning_index()


def downgrade() -> None:
    migration_ops.drop_processed_events_pruning_index()
