"""Data access for the analytics service: AsyncSession in, rows out.

Bulk writes are single statements: events with ``INSERT ... ON CONFLICT DO NOTHING RETURNING``
(what comes back was accepted, the rest were duplicates), rollups with ``INSERT ... ON CONFLICT
DO UPDATE`` adding to the counters. PostgreSQL and SQLite both speak these.
"""

import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    bindparam,
    delete,
    distinct,
    func,
    literal_column,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.models import (
    AuditEntry,
    CostDaily,
    EndpointHourly,
    Event,
    EventHourly,
    Metric,
    UsageApplied,
    UsageDaily,
    UsageScopedDaily,
)
from shared.db import DirectStatements

EVENTS: Table = Event.__table__  # type: ignore[assignment]
METRICS: Table = Metric.__table__  # type: ignore[assignment]
USAGE_DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]
COST_DAILY: Table = CostDaily.__table__  # type: ignore[assignment]
ENDPOINT_HOURLY: Table = EndpointHourly.__table__  # type: ignore[assignment]
EVENT_HOURLY: Table = EventHourly.__table__  # type: ignore[assignment]
USAGE_APPLIED: Table = UsageApplied.__table__  # type: ignore[assignment]
USAGE_SCOPED_DAILY: Table = UsageScopedDaily.__table__  # type: ignore[assignment]
AUDIT_LOG: Table = AuditEntry.__table__  # type: ignore[assignment]


def dialect_name(session: AsyncSession) -> str:
    bind = session.get_bind()
    return str(bind.dialect.name)


def _insert(session: AsyncSession, table: Table) -> Any:
    return (postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert)(table)


async def insert_new(
    session: AsyncSession, table: Table, keys: Sequence[str], rows: Sequence[dict[str, Any]]
) -> set[tuple[Any, ...]]:
    """Insert the rows whose key (the ``keys`` columns) is not stored yet; the keys of those inserted."""
    if not rows:
        return set()
    columns = [table.c[key] for key in keys]
    statement = _insert(session, table).on_conflict_do_nothing(index_elements=columns).returning(*columns)
    result = await session.execute(statement, list(rows))
    return {tuple(row) for row in result}


# The new events and, in the same statement, their counts per hour and type (``event_hourly``).
_INSERT_EVENTS_FROM_JSON = text(
    """
    WITH inserted AS (
        INSERT INTO events (event_id, user_id, session_id, event_type, properties, ip, user_agent, occurred_at,
                            received_at)
        SELECT e.event_id, e.user_id, e.session_id, e.event_type, e.properties, e.ip, e.user_agent, e.occurred_at,
               e.received_at
        FROM json_to_recordset(CAST(:rows AS json)) AS e(
            event_id uuid, user_id text, session_id text, event_type text, properties jsonb, ip text,
            user_agent text, occurred_at timestamptz, received_at timestamptz)
        ORDER BY e.user_id, e.event_id
        ON CONFLICT (user_id, event_id) DO NOTHING
        RETURNING user_id, event_id, event_type, occurred_at,
                  CASE WHEN event_type = 'llm_usage' THEN (properties->>'cost_usd')::numeric END AS cost_usd
    ), hourly AS (
        INSERT INTO event_hourly (hour, event_type, shard, events, cost_usd)
        SELECT date_trunc('hour', occurred_at, 'UTC'), event_type, pg_backend_pid() % 16, count(*),
               coalesce(sum(cost_usd), 0)
        FROM inserted
        GROUP BY 1, 2
        ORDER BY 1, 2
        ON CONFLICT (hour, event_type, shard) DO UPDATE
        SET events = event_hourly.events + excluded.events, cost_usd = event_hourly.cost_usd + excluded.cost_usd
    )
    SELECT user_id, event_id::text FROM inserted
    """
)
_INSERT_EVENTS_RETURNING_KEYS = _INSERT_EVENTS_FROM_JSON.columns(user_id=String, event_id=String)
_json = msgspec.json.Encoder()


EventKey = tuple[str, str]  # (user_id, event_id): an event id is unique per user


def event_key(row: dict[str, Any]) -> EventKey:
    return row["user_id"], row["event_id"]


async def insert_new_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[EventKey]:
    """The events not stored yet, inserted and counted in ``event_hourly``; their keys.

    On PostgreSQL the whole batch is one JSON parameter (encoded in C by msgspec, parsed in C by
    PostgreSQL) and one statement: per-value parameter binding in Python would cost more than the
    insert itself."""
    if not rows:
        return set()
    if dialect_name(session) != "postgresql":
        typed = [{**row, "event_id": uuid.UUID(row["event_id"])} for row in rows]
        inserted = await insert_new(session, EVENTS, ["user_id", "event_id"], typed)
        accepted = {(user_id, str(event_id)) for user_id, event_id in inserted}
        await upsert_add(
            session,
            EVENT_HOURLY,
            ["hour", "event_type", "shard"],
            ["events", "cost_usd"],
            event_hourly_rows(rows, accepted),
        )
        return accepted
    result = await session.execute(_INSERT_EVENTS_FROM_JSON, {"rows": _json.encode(rows).decode()})
    return {(user_id, event_id) for user_id, event_id in result}


async def insert_new_events_committed(direct: DirectStatements, rows: Sequence[dict[str, Any]]) -> set[EventKey]:
    """``insert_new_events`` on PostgreSQL as one statement committed on its own, outside any
    session; the keys of the events that were new."""
    if not rows:
        return set()
    inserted = await direct.all(_INSERT_EVENTS_RETURNING_KEYS, rows=_json.encode(rows).decode())
    return {(row["user_id"], row["event_id"]) for row in inserted}


def event_hourly_rows(rows: Sequence[dict[str, Any]], accepted: set[EventKey]) -> list[dict[str, Any]]:
    hourly: dict[tuple[datetime, str], dict[str, Any]] = {}
    for row in rows:
        if event_key(row) not in accepted:
            continue
        hour = row["occurred_at"].replace(minute=0, second=0, microsecond=0)
        bucket = hourly.setdefault(
            (hour, row["event_type"]),
            {"hour": hour, "event_type": row["event_type"], "shard": 0, "events": 0, "cost_usd": 0},
        )
        bucket["events"] += 1
        if row["event_type"] == "llm_usage":
            bucket["cost_usd"] += Decimal(str(row["properties"].get("cost_usd", 0)))
    return list(hourly.values())


async def upsert_add(
    session: AsyncSession, table: Table, keys: Sequence[str], counters: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Insert each row, or add its counters to the stored row with the same key. The rows' keys
    must be distinct; they are written in key order, so concurrent writers never deadlock."""
    if not rows:
        return
    statement = _insert(session, table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={name: table.c[name] + statement.excluded[name] for name in counters},
    )
    ordered = sorted(rows, key=lambda row: tuple(str(row[k]) for k in keys))
    await session.execute(statement, ordered)


async def insert_rows(session: AsyncSession, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(table.insert(), list(rows))


async def delete_older(session: AsyncSession, table: Table, column: str, cutoff: Any, limit: int) -> int:
    """Delete up to ``limit`` rows older than ``cutoff`` (by an indexed column); how many went."""
    keys = list(table.primary_key.columns)
    victims = select(*keys).where(table.c[column] < cutoff).limit(limit)
    result = await session.execute(delete(table).where(tuple_(*keys).in_(victims)))
    return int(getattr(result, "rowcount", 0) or 0)


# -- reads -------------------------------------------------------------------------------------


USAGE_OF_USER = (
    select(*USAGE_DAILY.c)
    .where(
        USAGE_DAILY.c.user_id == bindparam("user_id"),
        USAGE_DAILY.c.day >= bindparam("start"),
        USAGE_DAILY.c.day <= bindparam("end"),
    )
    .order_by(USAGE_DAILY.c.day)
)


async def usage_rows(direct: DirectStatements, user_id: str, start: date, end: date) -> list[dict[str, Any]]:
    """A user's daily usage rows from ``start`` to ``end``, as committed (DirectStatements: the hottest
    report, ``GET /analytics/usage/me``)."""
    return await direct.all(USAGE_OF_USER, user_id=user_id, start=start, end=end)


async def cost_by_user(session: AsyncSession, start: date, end: date, user_id: str | None, limit: int) -> list[Any]:
    c = USAGE_DAILY.c
    cost = func.sum(c.cost_usd)
    query = (
        select(c.user_id, cost.label("cost_usd"), func.sum(c.tokens_used).label("tokens_used"))
        .add_columns(func.sum(c.api_calls).label("api_calls"))
        .where(c.day >= start, c.day <= end)
        .group_by(c.user_id)
        .order_by(cost.desc(), c.user_id)
        .limit(limit)
    )
    if user_id is not None:
        query = query.where(c.user_id == user_id)
    return list(await session.execute(query))


async def cost_totals(session: AsyncSession, start: date, end: date, user_id: str | None) -> Any:
    c = USAGE_DAILY.c
    query = select(
        func.coalesce(func.sum(c.cost_usd), 0).label("cost_usd"),
        func.coalesce(func.sum(c.tokens_used), 0).label("tokens_used"),
        func.coalesce(func.sum(c.api_calls), 0).label("api_calls"),
    ).where(c.day >= start, c.day <= end)
    if user_id is not None:
        query = query.where(c.user_id == user_id)
    return (await session.execute(query)).one()


async def cost_breakdown(session: AsyncSession, by: str, start: date, end: date, user_id: str | None) -> list[Any]:
    c = COST_DAILY.c
    cost = func.sum(c.cost_usd)
    query = (
        select(c[by].label("name"), cost.label("cost_usd"), func.sum(c.tokens_used).label("tokens_used"))
        .add_columns(func.sum(c.calls).label("calls"))
        .where(c.day >= start, c.day <= end)
        .group_by(c[by])
        .order_by(cost.desc(), c[by])
        .limit(100)
    )
    if user_id is not None:
        query = query.where(c.user_id == user_id)
    return list(await session.execute(query))


async def event_totals(session: AsyncSession, since_hour: datetime) -> Any:
    c = EVENT_HOURLY.c
    query = select(
        func.coalesce(func.sum(c.events), 0).label("events"), func.coalesce(func.sum(c.cost_usd), 0).label("cost_usd")
    ).where(c.hour >= since_hour)
    return (await session.execute(query)).one()


async def endpoint_stats(session: AsyncSession, since_hour: datetime, limit: int) -> tuple[Any, list[Any]]:
    c = EndpointHourly.__table__.c
    window = c.hour >= since_hour
    totals = (
        await session.execute(
            select(func.coalesce(func.sum(c.calls), 0).label("calls"), func.coalesce(func.sum(c.errors), 0)).where(
                window
            )
        )
    ).one()
    calls = func.sum(c.calls)
    top = await session.execute(
        select(c.route, calls.label("calls"), func.sum(c.errors).label("errors"))
        .add_columns(func.sum(c.latency_ms_total).label("latency_ms_total"))
        .where(window)
        .group_by(c.route)
        .order_by(calls.desc(), c.route)
        .limit(limit)
    )
    return totals, list(top)


async def active_users(session: AsyncSession, since_day: date) -> int:
    c = USAGE_DAILY.c
    count = await session.scalar(select(func.count(distinct(c.user_id))).where(c.day >= since_day))
    return int(count or 0)


async def recent_events(session: AsyncSession, since: datetime, limit: int) -> list[Event]:
    rows = await session.scalars(
        select(Event).where(Event.occurred_at >= since).order_by(Event.occurred_at.desc()).limit(limit)
    )
    return list(rows)


def metric_filters(
    name: str | None,
    service: str | None,
    endpoint: str | None,
    user_id: str | None,
    start: datetime,
    end: datetime,
) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = [Metric.timestamp >= start, Metric.timestamp <= end]
    for column, value in (
        (Metric.name, name),
        (Metric.service_name, service),
        (Metric.endpoint, endpoint),
        (Metric.user_id, user_id),
    ):
        if value is not None:
            filters.append(column == value)
    return filters


async def latest_metrics(session: AsyncSession, filters: list[ColumnElement[bool]], limit: int) -> list[Metric]:
    rows = await session.scalars(select(Metric).where(*filters).order_by(Metric.timestamp.desc()).limit(limit))
    return list(rows)


_INTERVALS = {"minute": "minute", "hour": "hour", "day": "day"}
_SQL_AGGREGATES: dict[str, Callable[[Any], Any]] = {
    "sum": lambda v: func.sum(v),
    "avg": lambda v: func.avg(v),
    "min": lambda v: func.min(v),
    "max": lambda v: func.max(v),
    "count": lambda v: func.count(v),
    "p50": lambda v: func.percentile_cont(0.5).within_group(v),
    "p95": lambda v: func.percentile_cont(0.95).within_group(v),
}


async def metric_buckets_sql(
    session: AsyncSession, filters: list[ColumnElement[bool]], aggregation: str, interval: str
) -> list[Any]:
    """PostgreSQL: one row per bucket (UTC), computed by the database."""
    # Literal SQL (``interval`` is one of three known words): the same text in SELECT and GROUP BY.
    unit: ColumnElement[str] = literal_column(f"'{_INTERVALS[interval]}'")
    bucket = func.date_trunc(unit, Metric.timestamp, literal_column("'UTC'")).label("bucket")
    query = (
        select(bucket, _SQL_AGGREGATES[aggregation](Metric.value).label("value"), func.count().label("count"))
        .where(*filters)
        .group_by(bucket)
        .order_by(bucket)
    )
    return list(await session.execute(query))


async def metric_values(session: AsyncSession, filters: list[ColumnElement[bool]], limit: int) -> list[Any]:
    """Other databases (SQLite): the values, bucketed by the caller."""
    rows = await session.execute(
        select(Metric.timestamp, Metric.value).where(*filters).order_by(Metric.timestamp).limit(limit)
    )
    return list(rows)


# -- audit log --------------------------------------------------------------------------------------


class AuditFilters(msgspec.Struct, frozen=True):
    action: str | None = None
    actor_id: str | None = None
    target_id: str | None = None
    organization_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    # Keyset pagination: the entries strictly after this (occurred_at, id) in newest-first order.
    after: tuple[datetime, uuid.UUID] | None = None


async def audit_entries(session: AsyncSession, filters: AuditFilters, limit: int) -> list[AuditEntry]:
    """Newest first, ties broken by id (a stable order to page through)."""
    conditions: list[ColumnElement[bool]] = []
    for column, value in (
        (AuditEntry.action, filters.action),
        (AuditEntry.actor_id, filters.actor_id),
        (AuditEntry.target_id, filters.target_id),
        (AuditEntry.organization_id, filters.organization_id),
    ):
        if value is not None:
            conditions.append(column == value)
    if filters.since is not None:
        conditions.append(AuditEntry.occurred_at >= filters.since)
    if filters.until is not None:
        conditions.append(AuditEntry.occurred_at < filters.until)
    if filters.after is not None:
        at, entry_id = filters.after
        conditions.append(
            or_(AuditEntry.occurred_at < at, and_(AuditEntry.occurred_at == at, AuditEntry.id < entry_id))
        )
    rows = await session.scalars(
        select(AuditEntry).where(*conditions).order_by(AuditEntry.occurred_at.desc(), AuditEntry.id.desc()).limit(limit)
    )
    return list(rows)


# -- usage per organisation, member and key -------------------------------------------------------


def _scoped_sums() -> list[Any]:
    c = USAGE_SCOPED_DAILY.c
    return [
        func.sum(c.api_calls).label("api_calls"),
        func.sum(c.airtable_calls).label("airtable_calls"),
        func.sum(c.errors).label("errors"),
        func.sum(c.tokens_used).label("tokens_used"),
        func.sum(c.cost_usd).label("cost_usd"),
    ]


async def organization_usage(session: AsyncSession, organization_id: str, start: date, end: date, by: str) -> list[Any]:
    """An organisation's usage summed per ``by`` (``day``, ``route`` or ``user_id``)."""
    c = USAGE_SCOPED_DAILY.c
    query = (
        select(c[by].label("name"), *_scoped_sums())
        .where(c.organization_id == organization_id, c.day >= start, c.day <= end)
        .group_by(c[by])
        .order_by(c[by])
    )
    return list(await session.execute(query))


async def key_usage(session: AsyncSession, user_id: str, start: date, end: date) -> list[Any]:
    """A user's requests made with an API key, per key."""
    c = USAGE_SCOPED_DAILY.c
    query = (
        select(c.key_id, *_scoped_sums(), func.max(c.day).label("last_day"))
        .where(c.user_id == user_id, c.key_id != "", c.day >= start, c.day <= end)
        .group_by(c.key_id)
        .order_by(c.key_id)
    )
    return list(await session.execute(query))


def new_id() -> uuid.UUID:
    return uuid.uuid4()
