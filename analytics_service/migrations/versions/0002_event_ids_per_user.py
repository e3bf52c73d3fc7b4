"""events: event ids unique per user, not across all users

Revision ID: 0002
Revises: 0001

Another user's event with an id already taken was answered ``duplicate`` and not counted, which
also told that user the id existed. The primary key becomes (user_id, event_id).
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    # The service always stored a user (the caller's, or the one an administrator named); a row
    # without one, written by hand, is kept under the empty user id.
    op.execute("UPDATE events SET user_id = '' WHERE user_id IS NULL")
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("pk_events", type_="primary")
        batch.alter_column("user_id", existing_type=sa.String(length=64), nullable=False)
        batch.create_primary_key("pk_events", ["user_id", "event_id"])


def downgrade() -> None:
    # One event per id again: of the users who share an id, the event of the first (by user id) stays.
    op.execute(
        "DELETE FROM events WHERE EXISTS (SELECT 1 FROM events AS other "
        "WHERE other.event_id = events.event_id AND other.user_id < events.user_id)"
    )
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("pk_events", type_="primary")
        batch.alter_column("user_id", existing_type=sa.String(length=64), nullable=True)
        batch.create_primary_key("pk_events", ["event_id"])
