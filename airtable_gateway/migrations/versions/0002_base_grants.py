"""base grants (which organisation may reach which Airtable base), the outbox of their audit
events, and the processed ids of the events consumed (organisation.deleted drops its grants)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 16:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from shared import migration_ops
from shared.migration_ops import utc_column, uuid_column

revision: str = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    op.create_table(
        "base_grants",
        uuid_column("id"),
        uuid_column("organization_id"),
        sa.Column("base_id", sa.String(length=17), nullable=False),
        sa.Column("access", sa.String(length=5), nullable=False),
        uuid_column("created_by"),
        utc_column("created_at"),
        utc_column("updated_at"),
        sa.CheckConstraint("access IN ('read', 'write')", name=op.f("ck_base_grants_access")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_grants")),
        sa.UniqueConstraint("organization_id", "base_id", name=op.f("uq_base_grants_organization_id")),
    )
    migration_ops.create_outbox()
    migration_ops.create_processed_events()


def downgrade() -> None:
    migration_ops.drop_processed_events()
    migration_ops.drop_outbox()
    op.drop_table("base_grants")
