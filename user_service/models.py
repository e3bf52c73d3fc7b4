import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, String, Uuid, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, service_metadata, utcnow
from shared.events import processed_events_table
from shared.outbox import outbox_table


class Base(DeclarativeBase):
    metadata = service_metadata()


class Profile(Base):
    """A user's profile; ``id`` is the auth service's user id.

    ``email``, ``email_verified``, ``role``, ``tenant_id``, ``is_active`` and ``last_login_at`` are copies of the
    account, kept up to date by auth's ``user.*`` events (``account_synced_at`` is the time of the
    latest one applied, so an older event arriving late changes nothing).
    """

    __tablename__ = "profiles"
    __table_args__ = (
        Index("ix_profiles_tenant_id", "tenant_id"),
        Index("ix_profiles_created_at", "created_at"),
        Index("ix_profiles_deleted_at", "deleted_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    display_name: Mapped[str | None] = mapped_column(String(100))
    avatar_url: Mapped[str | None] = mapped_column(String(2048))
    bio: Mapped[str | None] = mapped_column(String(1000))
    phone: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(35))
    preferences: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    role: Mapped[str] = mapped_column(String(20), default="user")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    account_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Membership(Base):
    """A user's role in an organisation: a copy of auth's, kept up to date by its
    ``organization.member_*`` events. ``synced_at`` is the time of the latest event applied (an
    older one arriving late changes nothing); a removed member is kept with ``removed_at`` set, so
    a late ``member_added`` older than the removal does not bring the membership back."""

    __tablename__ = "memberships"
    __table_args__ = (
        Index("ix_memberships_user_id", "user_id"),
        Index("ix_memberships_organization_id_joined_at", "organization_id", "joined_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


outbox = outbox_table(Base.metadata)
processed_events = processed_events_table(Base.metadata)
