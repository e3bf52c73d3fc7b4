"""API keys: personal and service keys, stored as keyed hashes of their secrets

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from shared.migration_ops import utc_column, uuid_column

revision: str = "0005"
down_revision: str | None = "0004"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        uuid_column("id"),
        sa.Column("kind", sa.String(length=10), nullable=False),
        uuid_column("owner_id", nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        uuid_column("created_by", nullable=True),
        utc_column("created_at"),
        utc_column("expires_at", nullable=True),
        utc_column("last_used_at", nullable=True),
        utc_column("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_api_keys_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index("ix_api_keys_owner_id", "api_keys", ["owner_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_api_keys_owner_id", table_name="api_keys")
    op.drop_table("api_keys")
