"""memberships: users' roles in organisations (a copy of auth's, from its events), back-filled from profiles

Revision ID: 0004
Revises: 0003

Until organisations, every account had a tenant of its own (``profiles.tenant_id``); that id
became the id of the user's first organisation, which they own. The back-fill makes those
memberships exist before auth's ``organization.member_added`` events arrive (``synced_at`` stays
empty, so any event overrides it). A tenant several profiles share gives them the ``member`` role:
which of them owns it is auth's to say.
"""

import sqlalchemy as sa
from alembic import op

from shared.migration_ops import utc_column, uuid_column

revision: str = "0004"
down_revision: str | None = "0003"


def upgrade() -> None:
    op.create_table(
        "memberships",
        uuid_column("organization_id"),
        uuid_column("user_id"),
        sa.Column("role", sa.String(length=20), nullable=False),
        utc_column("joined_at"),
        utc_column("synced_at", nullable=True),
        utc_column("removed_at", nullable=True),
        sa.PrimaryKeyConstraint("organization_id", "user_id", name=op.f("pk_memberships")),
    )
    op.create_index("ix_memberships_user_id", "memberships", ["user_id"], unique=False)
    op.create_index(
        "ix_memberships_organization_id_joined_at", "memberships", ["organization_id", "joined_at"], unique=False
    )
    op.execute(
        """
        INSERT INTO memberships (organization_id, user_id, role, joined_at)
        SELECT p.tenant_id, p.id,
               CASE WHEN (SELECT count(*) FROM profiles AS other
                          WHERE other.tenant_id = p.tenant_id AND other.deleted_at IS NULL) = 1
                    THEN 'owner' ELSE 'member' END,
               p.created_at
        FROM profiles AS p
        WHERE p.tenant_id IS NOT NULL AND p.deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.drop_table("memberships")
