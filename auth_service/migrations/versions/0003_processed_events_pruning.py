"""processed events: an index on processed_at, by which old ids are pruned

Revision ID: 0003
Revises: 0002
"""

from shared import migration_ops

revision: str = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    migration_ops.create_processed_events_pruning_index()


def downgrade() -> None:
    migration_ops.drop_processed_events_pruning_index()
