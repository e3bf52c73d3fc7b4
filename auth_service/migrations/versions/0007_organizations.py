"""organisations: organisations, memberships, invitations; the session's active organisation, the
organisation of an API key; every user's tenant becomes an organisation of the same id, the user
its owner (users.tenant_id is now the organisation last made active, nullable)

Revision ID: 0007
Revises: 0006
"""

import re
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import shared.db
from shared.migration_ops import utc_column, uuid_column

revision: str = "0007"
down_revision: str | None = "0006"

# Frozen copies of the tables as this revision knows them (the models may change later).
users = sa.table(
    "users",
    sa.column("id", sa.Uuid()),
    sa.column("email", sa.String()),
    sa.column("first_name", sa.String()),
    sa.column("last_name", sa.String()),
    sa.column("tenant_id", sa.Uuid()),
    sa.column("created_at", shared.db.UTCDateTime()),
)
organizations = sa.table(
    "organizations",
    sa.column("id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("slug", sa.String()),
    sa.column("created_at", shared.db.UTCDateTime()),
    sa.column("require_two_factor", sa.Boolean()),
)
memberships = sa.table(
    "memberships",
    sa.column("organization_id", sa.Uuid()),
    sa.column("user_id", sa.Uuid()),
    sa.column("role", sa.String()),
    sa.column("created_at", shared.db.UTCDateTime()),
)
outbox = sa.table(
    "outbox",
    sa.column("id", sa.Uuid()),
    sa.column("event_type", sa.String()),
    sa.column("source", sa.String()),
    sa.column("payload", sa.JSON()),
    sa.column("occurred_at", shared.db.UTCDateTime()),
    sa.column("attempts", sa.Integer()),
)


def upgrade() -> None:
    op.create_table(
        "organizations",
        uuid_column("id"),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        utc_column("created_at"),
        sa.Column("require_two_factor", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("slug", name=op.f("uq_organizations_slug")),
    )
    op.create_table(
        "memberships",
        uuid_column("organization_id"),
        uuid_column("user_id"),
        sa.Column("role", sa.String(length=10), nullable=False),
        utc_column("created_at"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_memberships_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_memberships_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("organization_id", "user_id", name=op.f("pk_memberships")),
    )
    op.create_index("ix_memberships_user_id", "memberships", ["user_id"], unique=False)
    op.create_table(
        "invitations",
        uuid_column("id"),
        uuid_column("organization_id"),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        uuid_column("invited_by", nullable=True),
        utc_column("created_at"),
        utc_column("expires_at"),
        utc_column("accepted_at", nullable=True),
        utc_column("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_invitations_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
    )
    op.create_index("ix_invitations_organization_id", "invitations", ["organization_id"], unique=False)
    with op.batch_alter_table("users") as batch:
        batch.alter_column("tenant_id", existing_type=sa.Uuid(), nullable=True)
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(uuid_column("organization_id", nullable=True))
        batch.create_foreign_key(
            op.f("fk_sessions_organization_id_organizations"),
            "organizations",
            ["organization_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_sessions_organization_id", ["organization_id"], unique=False)
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(uuid_column("organization_id", nullable=True))
        batch.create_foreign_key(
            op.f("fk_api_keys_organization_id_organizations"),
            "organizations",
            ["organization_id"],
            ["id"],
            ondelete="CASCADE",
        )
    _tenants_become_organizations()


def _tenants_become_organizations() -> None:
    """Each user's tenant becomes an organisation of the same id (tokens issued before keep a
    meaningful ``tid``), the user its owner; the users service hears of each membership."""
    bind = op.get_bind()
    now = datetime.now(UTC)
    rows = bind.execute(
        sa.select(
            users.c.id, users.c.email, users.c.first_name, users.c.last_name, users.c.tenant_id, users.c.created_at
        )
        .where(users.c.tenant_id.is_not(None))
        .order_by(users.c.created_at)
    ).all()
    slugs: set[str] = set()
    created: set[uuid.UUID] = set()
    for row in rows:
        if row.tenant_id not in created:
            name = _organization_name(row.first_name, row.last_name, row.email)
            slug = _unique_slug(name, slugs)
            bind.execute(
                organizations.insert().values(
                    id=row.tenant_id, name=name, slug=slug, created_at=row.created_at, require_two_factor=False
                )
            )
            created.add(row.tenant_id)
        bind.execute(
            memberships.insert().values(
                organization_id=row.tenant_id, user_id=row.id, role="owner", created_at=row.created_at
            )
        )
        bind.execute(
            outbox.insert().values(
                id=uuid.uuid4(),
                event_type="organization.member_added",
                source="auth",
                payload={"organization_id": str(row.tenant_id), "user_id": str(row.id), "role": "owner"},
                occurred_at=now,
                attempts=0,
            )
        )


def _organization_name(first_name: str | None, last_name: str | None, email: str) -> str:
    name = " ".join(part.strip() for part in (first_name, last_name) if part and part.strip())
    return (name or email.partition("@")[0])[:100]


def _unique_slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50] or "organization"
    slug, number = base, 1
    while slug in taken:
        number += 1
        slug = f"{base}-{number}"
    taken.add(slug)
    return slug


def downgrade() -> None:
    # Users who left every organisation get a tenant of their own again (the column was required).
    bind = op.get_bind()
    for (user_id,) in bind.execute(sa.select(users.c.id).where(users.c.tenant_id.is_(None))).all():
        bind.execute(users.update().where(users.c.id == user_id).values(tenant_id=uuid.uuid4()))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("fk_api_keys_organization_id_organizations"), type_="foreignkey")
        batch.drop_column("organization_id")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_organization_id")
        batch.drop_constraint(op.f("fk_sessions_organization_id_organizations"), type_="foreignkey")
        batch.drop_column("organization_id")
    with op.batch_alter_table("users") as batch:
        batch.alter_column("tenant_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_index("ix_invitations_organization_id", table_name="invitations")
    op.drop_table("invitations")
    op.drop_index("ix_memberships_user_id", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("organizations")
