"""processed events: the ids of events this service has applied (idempotent consumers)

Revision ID: 0002
Revises: 0001
"""

from shared import migration_ops

revision: str = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    migration_ops.create_processed_events(pruning_index=False)


def downgrade() -> None:
    migration_ops.drop_processed_events()
