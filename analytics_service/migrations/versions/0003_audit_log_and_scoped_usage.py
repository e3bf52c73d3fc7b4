"""audit log (consumed audit.recorded events) and usage per organisation, user, API key and route

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from shared import migration_ops
from shared.migration_ops import utc_column, uuid_column

revision: str = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    op.create_table(
        "audit_log",
        uuid_column("id"),
        utc_column("occurred_at"),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=True),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("target_type", sa.String(length=50), nullable=True),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column(
            "details", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("source", sa.String(length=50), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_occurred_at_id", "audit_log", ["occurred_at", "id"], unique=False)
    op.create_index(
        "ix_audit_log_organization_id_occurred_at", "audit_log", ["organization_id", "occurred_at"], unique=False
    )
    op.create_index("ix_audit_log_actor_id_occurred_at", "audit_log", ["actor_id", "occurred_at"], unique=False)
    op.create_index("ix_audit_log_target_id_occurred_at", "audit_log", ["target_id", "occurred_at"], unique=False)
    migration_ops.create_processed_events()
    op.create_table(
        "usage_scoped_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("api_calls", sa.BigInteger(), nullable=False),
        sa.Column("airtable_calls", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=8), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "organization_id", "user_id", "key_id", "route", name=op.f("pk_usage_scoped_daily")
        ),
    )
    op.create_index(
        "ix_usage_scoped_daily_organization_id_day", "usage_scoped_daily", ["organization_id", "day"], unique=False
    )
    op.create_index("ix_usage_scoped_daily_user_id_day", "usage_scoped_daily", ["user_id", "day"], unique=False)
    op.create_index("ix_usage_scoped_daily_day", "usage_scoped_daily", ["day"], unique=False)


def downgrade() -> None:
    op.drop_table("usage_scoped_daily")
    migration_ops.drop_processed_events()
    op.drop_table("audit_log")
