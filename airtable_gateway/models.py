import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, LargeBinary, String, UniqueConstraint, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, service_metadata, utcnow
from shared.events import processed_events_table
from shared.outbox import outbox_table


class Base(DeclarativeBase):
    metadata = service_metadata()


class UserToken(Base):
    """A user's own Airtable token, encrypted (AES-GCM, bound to the user's id)."""

    __tablename__ = "user_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    # The last characters, to show which token is set without showing it.
    hint: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class BaseGrant(Base):
    """An organisation's access to one Airtable base through the platform's token: ``read`` or
    ``write``. Without a row the organisation's members cannot reach the base (deny by default)."""

    __tablename__ = "base_grants"
    __table_args__ = (
        # Also the index of the hot path's lookup (organization_id, base_id) and of an organisation's listing.
        UniqueConstraint("organization_id", "base_id"),
        CheckConstraint("access IN ('read', 'write')", name="access"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    base_id: Mapped[str] = mapped_column(String(17))
    access: Mapped[str] = mapped_column(String(5))
    created_by: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# Audit events of grant changes, written in the change's transaction (shared/outbox.py).
outbox = outbox_table(Base.metadata)
# The ids of the events this service applied (organization.deleted), each applied once.
processed_events = processed_events_table(Base.metadata)
