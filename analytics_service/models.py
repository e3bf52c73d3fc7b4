"""The analytics service's tables: raw events and metrics, and the rollups queries read.

Raw rows (events, metrics) are kept ``RETENTION_DAYS``; the routes that must stay fast at millions
of events (usage, costs, dashboard) read the small rollups, updated by upsert as data arrives.
"""

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, Float, Index, Numeric, SmallInteger, String, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, service_metadata
from shared.events import processed_events_table

JSONDocument = JSON().with_variant(JSONB(), "postgresql")
Money = Numeric(20, 8)
UserId = String(64)


class Base(DeclarativeBase):
    metadata = service_metadata()


class Event(Base):
    """One client event. ``event_id`` (client-supplied or generated) is unique per user: one user's
    retry is a duplicate, another user's event with the same id is an event of its own."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_occurred_at", "occurred_at"),
        Index("ix_events_user_id_occurred_at", "user_id", "occurred_at"),
    )

    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    session_id: Mapped[str | None] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(100))
    properties: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        Index("ix_metrics_name_timestamp", "name", "timestamp"),
        Index("ix_metrics_user_id_timestamp", "user_id", "timestamp"),
        Index("ix_metrics_timestamp", "timestamp"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    type: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(UserId)
    service_name: Mapped[str | None] = mapped_column(String(100))
    endpoint: Mapped[str | None] = mapped_column(String(300))
    labels: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)


class UsageCounters:
    """What a usage rollup adds up for each of its keys (``usage_daily``, ``usage_scoped_daily``)."""

    api_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    airtable_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))


class UsageDaily(UsageCounters, Base):
    """Per user per UTC day: the gateway's requests and the LLM usage events."""

    __tablename__ = "usage_daily"
    __table_args__ = (Index("ix_usage_daily_day", "day"),)

    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)


class CostDaily(Base):
    """LLM usage per day, user, service and model (``GET /costs`` breakdowns)."""

    __tablename__ = "cost_daily"
    __table_args__ = (Index("ix_cost_daily_user_id_day", "user_id", "day"),)

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    service: Mapped[str] = mapped_column(String(100), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))


class EndpointHourly(Base):
    """The gateway's requests per hour and route (dashboard: API calls, error rate, top endpoints)."""

    __tablename__ = "endpoint_hourly"

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    route: Mapped[str] = mapped_column(String(200), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_total: Mapped[float] = mapped_column(Float, default=0.0)


class EventHourly(Base):
    """Accepted events per hour and type (dashboard: total events, cost).

    Split into shards (on PostgreSQL, the writing connection's backend PID modulo 16): concurrent
    ingestion transactions update different rows instead of queueing on one row lock per hour
    and type until each commits. Readers sum the shards."""

    __tablename__ = "event_hourly"

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, default=0)
    events: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))


class UsageScopedDaily(UsageCounters, Base):
    """Per UTC day, organisation, user, API key and route: what the per-organisation, per-member and
    per-key usage routes read. ``organization_id`` and ``key_id`` are ``""`` when the request had none
    (a key column cannot be NULL); a request with neither is counted in ``usage_daily`` only."""

    __tablename__ = "usage_scoped_daily"
    __table_args__ = (
        Index("ix_usage_scoped_daily_organization_id_day", "organization_id", "day"),
        Index("ix_usage_scoped_daily_user_id_day", "user_id", "day"),
        Index("ix_usage_scoped_daily_day", "day"),
    )

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    route: Mapped[str] = mapped_column(String(200), primary_key=True)


class AuditEntry(Base):
    """One security-relevant action (an ``audit.recorded`` event); ``id`` is the event's id, so a
    redelivered event is stored once. Holds user ids and the client's address, never an email."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_occurred_at_id", "occurred_at", "id"),
        Index("ix_audit_log_organization_id_occurred_at", "organization_id", "occurred_at"),
        Index("ix_audit_log_actor_id_occurred_at", "actor_id", "occurred_at"),
        Index("ix_audit_log_target_id_occurred_at", "target_id", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(100))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    organization_id: Mapped[str | None] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[str | None] = mapped_column(String(200))
    ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    source: Mapped[str] = mapped_column(String(50))


class UsageApplied(Base):
    """Usage messages already rolled up: a redelivered message is not counted twice."""

    __tablename__ = "usage_applied"
    __table_args__ = (Index("ix_usage_applied_applied_at", "applied_at"),)

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime)


processed_events = processed_events_table(Base.metadata)
