"""account lifecycle: verified addresses, one-time tokens sent by mail, the mail outbox, and the
access-token lifetime a session asked for (the older platform's JWT_EXPIRES_IN)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from shared.migration_ops import utc_column, uuid_column

revision: str = "0004"
down_revision: str | None = "0003"


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("email_verified", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("access_token_ttl", sa.Integer(), nullable=True))
    op.create_table(
        "one_time_tokens",
        uuid_column("id"),
        uuid_column("user_id"),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        utc_column("created_at"),
        utc_column("expires_at"),
        utc_column("used_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_one_time_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_one_time_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_one_time_tokens_token_hash")),
    )
    op.create_index("ix_one_time_tokens_user_id_purpose", "one_time_tokens", ["user_id", "purpose"], unique=False)
    op.create_table(
        "mail_outbox",
        uuid_column("id"),
        sa.Column("template", sa.String(length=50), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=False),
        utc_column("created_at"),
        utc_column("next_attempt_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        utc_column("sent_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_outbox")),
    )
    op.create_index("ix_mail_outbox_unsent", "mail_outbox", ["sent_at", "next_attempt_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_mail_outbox_unsent", table_name="mail_outbox")
    op.drop_table("mail_outbox")
    op.drop_index("ix_one_time_tokens_user_id_purpose", table_name="one_time_tokens")
    op.drop_table("one_time_tokens")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("access_token_ttl")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("email_verified")
