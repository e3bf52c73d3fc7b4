"""Analytics business logic: no Litestar imports, time from an injected clock."""

import base64
import binascii
import contextlib
import logging
import math
import statistics
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from analytics_service import repositories as repo
from analytics_service.config import MAX_BATCH_ITEMS, AnalyticsSettings
from analytics_service.errors import (
    AdminOnly,
    BatchTooLarge,
    EventRejected,
    InvalidCursor,
    InvalidQuery,
    NotYourData,
    OrganizationManagersOnly,
    OrganizationNotFound,
)
from analytics_service.models import AuditEntry, Event, Metric
from analytics_service.schemas import (
    Aggregation,
    AuditEntryRead,
    AuditPage,
    AuditRecorded,
    BatchResult,
    BreakdownItem,
    CostsResponse,
    CostTotals,
    DashboardResponse,
    EndpointStats,
    EventCreate,
    EventRead,
    EventResult,
    Interval,
    ItemStatus,
    KeysUsage,
    KeyUsage,
    LLMUsage,
    MemberUsage,
    MetricCreate,
    MetricPoint,
    MetricQueryResult,
    MetricRead,
    OrganizationMembersUsage,
    OrganizationUsage,
    Period,
    RouteUsage,
    UsagePeriod,
    UsageResponse,
    UsageTotals,
    UserCost,
    WellFormedBatch,
)
from shared.events import Event as BusEvent
from shared.periodic import BackgroundWorker, PeriodicTask
from shared.security import ORG_MANAGERS, Identity
from shared.usage import UsageConsumer, UsageMessage

logger = logging.getLogger("analytics_service")
Clock = Callable[[], datetime]
LLM_USAGE = "llm_usage"
AIRTABLE_ROUTE = "/api/v1/airtable"
ERROR_STATUS = 500  # a request counts as an error when the platform failed it (5xx), not the client (4xx)
MAX_METRIC_BUCKETS = 10_000
MAX_PYTHON_AGGREGATION_ROWS = 200_000


class Client(msgspec.Struct, frozen=True):
    """Where a request came from."""

    ip: str
    user_agent: str | None = None


def _money(value: Any) -> float:
    return float(value or 0)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _no_nul(*values: str | None) -> None:
    """A filter with a NUL character matches nothing stored (and PostgreSQL refuses to compare it)."""
    if any(value is not None and "\x00" in value for value in values):
        raise InvalidQuery("A query value contains the NUL character.")


def _owner(identity: Identity, requested: str | None, what: str) -> str:
    """The user a request is about: the caller, or (administrators only) another user."""
    _no_nul(requested)
    own = str(identity.user_id)
    if requested is None or requested == own:
        return own
    if not identity.is_admin:
        raise NotYourData(what)
    return requested


class _Caller(msgspec.Struct, frozen=True):
    """What every event of one request shares."""

    user_id: str
    organization_id: str  # the caller's active organisation, "" without one
    is_admin: bool
    ip: str
    user_agent: str | None
    received_at: datetime
    oldest: datetime


class EventService:
    def __init__(self, db: AsyncSession, settings: AnalyticsSettings, clock: Clock) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock

    async def ingest(
        self, identity: Identity, client: Client, items: Sequence[Any], body: bytes | None = None
    ) -> BatchResult:
        """Store the acceptable items not stored before; the rows are committed on return.

        ``body``, the request's JSON, is decoded again straight into EventCreate items when every
        item is well-formed (the usual case: one pass in C); otherwise each item is converted on
        its own, so that each can be rejected with its own reason."""
        if len(items) > MAX_BATCH_ITEMS:
            raise BatchTooLarge(MAX_BATCH_ITEMS)
        received_at = self.clock()
        caller = _Caller(
            user_id=str(identity.user_id),
            organization_id=str(identity.tenant_id or ""),
            is_admin=identity.is_admin,
            ip=client.ip,
            user_agent=(client.user_agent or "")[:512] or None,
            received_at=received_at,
            oldest=received_at - timedelta(days=self.settings.retention_days),
        )
        parsed: list[EventCreate] | None = None
        if body is not None:
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                parsed = _well_formed.decode(body).events
        check_nul = body is None or b"\\u0000" in body  # JSON writes a NUL character only so
        # Per item: its event id, its key when acceptable, else the reason it was rejected.
        outcomes: list[tuple[str | None, repo.EventKey | None, str | None]] = []
        rows: dict[repo.EventKey, dict[str, Any]] = {}
        for index, raw in enumerate(items):
            try:
                item = parsed[index] if parsed is not None else msgspec.convert(raw, EventCreate)
                if check_nul and _contains_nul(raw):
                    raise ValueError("a text value contains the NUL character, which cannot be stored")
                row = self._row(caller, item)
            except (msgspec.ValidationError, ValueError) as exc:
                outcomes.append((_event_id_of(raw), None, str(exc)))
                continue
            key = repo.event_key(row)
            rows.setdefault(key, row)
            outcomes.append((row["event_id"], key, None))
        accepted = await repo.insert_new_events(self.db, list(rows.values()))
        await self._roll_up([row for key, row in rows.items() if key in accepted], caller)
        await self.db.commit()
        results, counts = [], {"accepted": 0, "duplicate": 0, "rejected": 0}
        for index, (event_id, stored_as, reason) in enumerate(outcomes):
            if stored_as is None:
                status: ItemStatus = "rejected"
            elif stored_as in accepted:
                status = "accepted"
                accepted.discard(stored_as)  # the same id again later in the batch is a duplicate
            else:
                status = "duplicate"
            counts[status] += 1
            results.append(EventResult(index=index, status=status, event_id=event_id, reason=reason))
        return BatchResult(counts["accepted"], counts["duplicate"], counts["rejected"], results)

    async def ingest_one(self, identity: Identity, client: Client, item: EventCreate) -> EventResult:
        result = (await self.ingest(identity, client, [msgspec.to_builtins(item)])).results[0]
        if result.status == "rejected":
            raise EventRejected(result.reason or "The event was rejected.")
        return result

    def _row(self, caller: "_Caller", item: EventCreate) -> dict[str, Any]:
        if item.user_id is not None and item.user_id != caller.user_id and not caller.is_admin:
            raise ValueError("user_id: only administrators may record events of another user")
        occurred_at = caller.received_at
        if item.occurred_at is not None:
            occurred_at = min(item.occurred_at.astimezone(UTC), occurred_at)  # the future is clamped to now
            if occurred_at < caller.oldest:
                raise ValueError("occurred_at: older than the retention period")
        if item.event_type == LLM_USAGE:
            msgspec.convert(item.properties, LLMUsage)  # raises ValidationError naming the field
        return {
            "event_id": item.event_id.lower() if item.event_id else str(uuid.uuid4()),
            "user_id": item.user_id or caller.user_id,
            "session_id": item.session_id,
            "event_type": item.event_type,
            "properties": item.properties,
            "ip": caller.ip,
            "user_agent": caller.user_agent,
            "occurred_at": occurred_at,
            "received_at": caller.received_at,
        }

    async def _roll_up(self, rows: list[dict[str, Any]], caller: "_Caller") -> None:
        """LLM usage into the per-user-per-day usage, the cost breakdown and (for the caller's own
        events) the caller's active organisation's usage (``event_hourly`` is kept by the insert itself)."""
        usage: dict[tuple[str, date], dict[str, Any]] = {}
        scoped = ScopedUsage()
        costs: dict[tuple[date, str, str, str], dict[str, Any]] = {}
        for row in rows:
            if row["event_type"] != LLM_USAGE:
                continue
            llm = msgspec.convert(row["properties"], LLMUsage)
            tokens, cost = llm.prompt_tokens + llm.completion_tokens, Decimal(str(llm.cost_usd))
            day = row["occurred_at"].date()
            daily = usage.setdefault((row["user_id"], day), _usage_row(row["user_id"], day))
            daily["tokens_used"] += tokens
            daily["cost_usd"] += cost
            if caller.organization_id and row["user_id"] == caller.user_id:
                scoped_row = scoped.row(day, caller.organization_id, row["user_id"], "", "")
                scoped_row["tokens_used"] += tokens
                scoped_row["cost_usd"] += cost
            key = (day, row["user_id"], llm.service or "unknown", llm.model)
            entry = costs.setdefault(
                key,
                {"day": day, "user_id": key[1], "service": key[2], "model": key[3], "calls": 0, "tokens_used": 0}
                | {"cost_usd": Decimal(0)},
            )
            entry["calls"] += 1
            entry["tokens_used"] += tokens
            entry["cost_usd"] += cost
        await repo.upsert_add(self.db, repo.USAGE_DAILY, ["user_id", "day"], USAGE_COUNTERS, list(usage.values()))
        await repo.upsert_add(
            self.db,
            repo.COST_DAILY,
            ["day", "user_id", "service", "model"],
            ["calls", "tokens_used", "cost_usd"],
            list(costs.values()),
        )
        await scoped.save(self.db)


def _contains_nul(value: Any) -> bool:
    """Whether a NUL character hides in a string (or key) of a JSON value: PostgreSQL's text and
    jsonb cannot hold one."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(key) or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


def _event_id_of(raw: Any) -> str | None:
    if isinstance(raw, dict):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return str(uuid.UUID(str(raw.get("event_id"))))
    return None


_well_formed = msgspec.json.Decoder(WellFormedBatch)
USAGE_COUNTERS = ["api_calls", "airtable_calls", "errors", "bytes_in", "tokens_used", "cost_usd"]


def _usage_row(user_id: str, day: date) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "day": day,
        "api_calls": 0,
        "airtable_calls": 0,
        "errors": 0,
        "bytes_in": 0,
        "tokens_used": 0,
        "cost_usd": Decimal(0),
    }


class ScopedUsage:
    """Rows of ``usage_scoped_daily`` being summed before one upsert."""

    def __init__(self) -> None:
        self.rows: dict[tuple[date, str, str, str, str], dict[str, Any]] = {}

    def row(self, day: date, organization_id: str, user_id: str, key_id: str, route: str) -> dict[str, Any]:
        key = (day, organization_id, user_id, key_id, route)
        if key not in self.rows:
            self.rows[key] = {
                "organization_id": organization_id,
                "key_id": key_id,
                "route": route,
                **_usage_row(user_id, day),
            }
        return self.rows[key]

    async def save(self, session: AsyncSession) -> None:
        await repo.upsert_add(
            session,
            repo.USAGE_SCOPED_DAILY,
            ["day", "organization_id", "user_id", "key_id", "route"],
            USAGE_COUNTERS,
            list(self.rows.values()),
        )


# -- the usage pipeline -------------------------------------------------------------------------


async def apply_usage(session: AsyncSession, messages: Sequence[UsageMessage], now: datetime) -> int:
    """Roll the messages not applied before into the usage and endpoint rollups, in the caller's
    transaction; how many records were counted."""
    fresh = await repo.insert_new(
        session, repo.USAGE_APPLIED, ["message_id"], [{"message_id": m.id, "applied_at": now} for m in messages]
    )
    records = [record for message in messages if (message.id,) in fresh for record in message.records]
    usage: dict[tuple[str, date], dict[str, Any]] = {}
    endpoints: dict[tuple[datetime, str], dict[str, Any]] = {}
    scoped = ScopedUsage()
    for record in records:
        moment = datetime.fromtimestamp(record.at, UTC)
        failed = record.status >= ERROR_STATUS
        key = (_hour(moment), record.route)
        endpoint = endpoints.setdefault(
            key, {"hour": key[0], "route": record.route, "calls": 0, "errors": 0, "latency_ms_total": 0.0}
        )
        endpoint["calls"] += 1
        endpoint["errors"] += failed
        endpoint["latency_ms_total"] += record.latency_ms
        if record.user_id is None:
            continue
        day = moment.date()
        daily = usage.setdefault((record.user_id, day), _usage_row(record.user_id, day))
        daily["api_calls"] += 1
        daily["airtable_calls"] += record.route == AIRTABLE_ROUTE
        daily["errors"] += failed
        daily["bytes_in"] += record.bytes_in
        if record.organization_id or record.key_id:  # else usage_daily holds all there is to know
            # Clipped to the columns: one odd record must not make the whole batch fail again and again.
            organization_id, key_id = (record.organization_id or "")[:64], (record.key_id or "")[:64]
            by_scope = scoped.row(day, organization_id, record.user_id, key_id, record.route)
            by_scope["api_calls"] += 1
            by_scope["airtable_calls"] += record.route == AIRTABLE_ROUTE
            by_scope["errors"] += failed
            by_scope["bytes_in"] += record.bytes_in
    await repo.upsert_add(session, repo.USAGE_DAILY, ["user_id", "day"], USAGE_COUNTERS, list(usage.values()))
    await scoped.save(session)
    await repo.upsert_add(
        session,
        repo.ENDPOINT_HOURLY,
        ["hour", "route"],
        ["calls", "errors", "latency_ms_total"],
        list(endpoints.values()),
    )
    return len(records)


class UsagePipeline(BackgroundWorker):
    """Reads usage messages in batches, rolls them up, and acknowledges them once committed."""

    def __init__(
        self,
        consumer: UsageConsumer,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock,
        read_count: int = 500,
        block_seconds: float = 1.0,
    ) -> None:
        super().__init__("usage pipeline")
        self.consumer = consumer
        self.sessionmaker = sessionmaker
        self.clock = clock
        self.read_count = read_count
        self.block_seconds = block_seconds
        self.applied = 0

    async def run_once(self) -> int:
        messages = await self.consumer.read(self.read_count, self.block_seconds)
        if not messages:
            return 0
        async with self.sessionmaker() as session, session.begin():
            counted = await apply_usage(session, messages, self.clock())
        await self.consumer.ack([message.id for message in messages])
        self.applied += counted
        return counted

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self.run_once()
            except Exception as exc:
                # Unacknowledged messages stay pending and are claimed again later.
                logger.warning("usage pipeline failed; will retry", extra={"error": type(exc).__name__})
                await self._stopped_within(1.0)


# -- retention ----------------------------------------------------------------------------------


async def purge(
    sessionmaker: async_sessionmaker[AsyncSession], settings: AnalyticsSettings, now: datetime
) -> dict[str, int]:
    """Delete what is older than the retention periods, in batches of ``purge_batch_size`` rows,
    each its own transaction (short locks, bounded WAL); how many rows went per table."""
    raw_cutoff = now - timedelta(days=settings.retention_days)
    rollup_cutoff = now - timedelta(days=settings.rollup_retention_days)
    plan = [
        (repo.EVENTS, "occurred_at", raw_cutoff),
        (repo.METRICS, "timestamp", raw_cutoff),
        (repo.USAGE_APPLIED, "applied_at", now - timedelta(days=7)),
        (repo.ENDPOINT_HOURLY, "hour", rollup_cutoff),
        (repo.EVENT_HOURLY, "hour", rollup_cutoff),
        (repo.USAGE_DAILY, "day", rollup_cutoff.date()),
        (repo.COST_DAILY, "day", rollup_cutoff.date()),
        (repo.USAGE_SCOPED_DAILY, "day", rollup_cutoff.date()),
        (repo.AUDIT_LOG, "occurred_at", now - timedelta(days=settings.audit_retention_days)),
    ]
    deleted: dict[str, int] = {}
    for table, column, cutoff in plan:
        total = 0
        while True:
            async with sessionmaker() as session, session.begin():
                count = await repo.delete_older(session, table, column, cutoff, settings.purge_batch_size)
            total += count
            if count < settings.purge_batch_size:
                break
        deleted[table.name] = total
    return deleted


def periodic_purge(
    sessionmaker: async_sessionmaker[AsyncSession], settings: AnalyticsSettings, clock: Clock
) -> PeriodicTask:
    async def purge_once() -> None:
        deleted = await purge(sessionmaker, settings, clock())
        if any(deleted.values()):
            logger.info("retention purge", extra={"deleted": deleted})

    return PeriodicTask("retention purge", purge_once, settings.purge_interval_seconds)


# -- metrics ------------------------------------------------------------------------------------


def metric_read(metric: Metric) -> MetricRead:
    return msgspec.convert(metric, MetricRead, from_attributes=True)


class MetricService:
    def __init__(self, db: AsyncSession, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def record(self, identity: Identity, items: Sequence[MetricCreate]) -> list[dict[str, Any]]:
        if len(items) > MAX_BATCH_ITEMS:
            raise BatchTooLarge(MAX_BATCH_ITEMS)
        if _contains_nul(msgspec.to_builtins(items)):
            raise InvalidQuery("A text value contains the NUL character, which cannot be stored.")
        now = self.clock()
        rows = [
            {
                "id": uuid.uuid4(),
                "name": item.name,
                "value": item.value,
                "type": item.type,
                "user_id": _owner(identity, item.user_id, "metrics"),
                "service_name": item.service_name,
                "endpoint": item.endpoint,
                "labels": item.labels,
                "timestamp": min(item.timestamp or now, now).astimezone(UTC),
            }
            for item in items
        ]
        await repo.insert_rows(self.db, repo.METRICS, rows)
        await self.db.commit()
        return rows

    async def query(
        self,
        identity: Identity,
        *,
        name: str | None,
        service: str | None,
        endpoint: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        aggregation: Aggregation | None,
        interval: Interval,
        limit: int,
    ) -> MetricQueryResult:
        end = end or self.clock()
        start = start or end - timedelta(days=1)
        if start >= end:
            raise InvalidQuery("from must be earlier than to.")
        _no_nul(name, service, endpoint, user_id)
        if not identity.is_admin:
            user_id = _owner(identity, user_id, "metrics")
        filters = repo.metric_filters(name, service, endpoint, user_id, start, end)
        if aggregation is None:
            metrics = [metric_read(m) for m in await repo.latest_metrics(self.db, filters, limit)]
            return MetricQueryResult(count=len(metrics), metrics=metrics, points=[])
        if name is None:
            raise InvalidQuery("An aggregation needs a metric name.")
        if (end - start) / INTERVALS[interval] > MAX_METRIC_BUCKETS:
            raise InvalidQuery(f"At most {MAX_METRIC_BUCKETS} buckets: choose a coarser interval or a shorter range.")
        if repo.dialect_name(self.db) == "postgresql":
            rows = await repo.metric_buckets_sql(self.db, filters, aggregation, interval)
            points = [MetricPoint(row.bucket.astimezone(UTC), float(row.value), int(row.count)) for row in rows]
        else:
            values = await repo.metric_values(self.db, filters, MAX_PYTHON_AGGREGATION_ROWS)
            points = aggregate_in_python(values, aggregation, interval)
        return MetricQueryResult(
            count=len(points),
            metrics=[],
            points=points,
            aggregation=aggregation,
            interval=interval,
        )


INTERVALS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def _bucket(moment: datetime, interval: str) -> datetime:
    moment = moment.astimezone(UTC)
    if interval == "minute":
        return moment.replace(second=0, microsecond=0)
    if interval == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


_PYTHON_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "sum": lambda v: float(sum(v)),
    "avg": statistics.fmean,
    "min": min,
    "max": max,
    "count": lambda v: float(len(v)),
    "p50": lambda v: _percentile(v, 0.5),
    "p95": lambda v: _percentile(v, 0.95),
}


def aggregate_in_python(rows: Sequence[Any], aggregation: str, interval: str) -> list[MetricPoint]:
    buckets: dict[datetime, list[float]] = defaultdict(list)
    for timestamp, value in rows:
        buckets[_bucket(timestamp, interval)].append(float(value))
    compute = _PYTHON_AGGREGATES[aggregation]
    return [MetricPoint(bucket, compute(values), len(values)) for bucket, values in sorted(buckets.items())]


# -- usage, costs, dashboard --------------------------------------------------------------------


def _period_start(day: date, period: str) -> date:
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


PERIOD_COUNTERS = ("api_calls", "airtable_calls", "errors", "tokens_used", "cost_usd")


def usage_periods(
    daily: Sequence[tuple[date, Any]], start: date, end: date, period: Period
) -> tuple[UsageTotals, list[UsagePeriod]]:
    """Per-day counters summed per ``period`` (every period of start..end, zeros included) and in all."""
    periods: dict[date, dict[str, Any]] = {}
    day = start
    while day <= end:
        periods.setdefault(_period_start(day, period), dict.fromkeys(PERIOD_COUNTERS, 0))
        day += timedelta(days=1)
    for day, row in daily:
        bucket = periods[_period_start(day, period)]
        for counter in PERIOD_COUNTERS:
            bucket[counter] += getattr(row, counter)
    items = [
        UsagePeriod(
            period_start=begin,
            api_calls=int(v["api_calls"]),
            airtable_calls=int(v["airtable_calls"]),
            errors=int(v["errors"]),
            tokens_used=int(v["tokens_used"]),
            cost_usd=_money(v["cost_usd"]),
        )
        for begin, v in periods.items()
    ]
    totals = UsageTotals(
        api_calls=sum(i.api_calls for i in items),
        airtable_calls=sum(i.airtable_calls for i in items),
        errors=sum(i.errors for i in items),
        tokens_used=sum(i.tokens_used for i in items),
        cost_usd=_money(sum(Decimal(v["cost_usd"] or 0) for v in periods.values())),
    )
    return totals, items


class ReportService:
    def __init__(self, db: AsyncSession, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def usage(self, identity: Identity, user_id: str | None, period: Period, days: int) -> UsageResponse:
        owner = _owner(identity, user_id, "usage")
        end = self.clock().date()
        start = end - timedelta(days=days - 1)
        daily = [(row.day, row) for row in await repo.usage_rows(self.db, owner, start, end)]
        totals, items = usage_periods(daily, start, end, period)
        return UsageResponse(user_id=owner, period=period, start=start, end=end, totals=totals, items=items)

    async def costs(self, identity: Identity, user_id: str | None, days: int) -> CostsResponse:
        scope = None if identity.is_admin and user_id is None else _owner(identity, user_id, "costs")
        end = self.clock().date()
        start = end - timedelta(days=days - 1)
        totals = await repo.cost_totals(self.db, start, end, scope)
        cost, tokens, calls = _money(totals.cost_usd), int(totals.tokens_used), int(totals.api_calls)
        by_user = [
            UserCost(row.user_id, _money(row.cost_usd), int(row.tokens_used), int(row.api_calls))
            for row in await repo.cost_by_user(self.db, start, end, scope, limit=100)
        ]
        breakdowns = {
            by: [
                BreakdownItem(row.name, _money(row.cost_usd), int(row.tokens_used), int(row.calls))
                for row in await repo.cost_breakdown(self.db, by, start, end, scope)
            ]
            for by in ("service", "model")
        }
        return CostsResponse(
            start=start,
            end=end,
            totals=CostTotals(
                cost_usd=cost,
                tokens_used=tokens,
                api_calls=calls,
                cost_per_token=cost / tokens if tokens else 0.0,
                cost_per_api_call=cost / calls if calls else 0.0,
            ),
            by_user=by_user,
            by_service=breakdowns["service"],
            by_model=breakdowns["model"],
        )

    async def dashboard(self, identity: Identity, hours: int) -> DashboardResponse:
        if not identity.is_admin:
            raise AdminOnly()
        end = self.clock()
        start = end - timedelta(hours=hours)
        since_hour = _hour(start)
        events = await repo.event_totals(self.db, since_hour)
        (calls, errors), top = await repo.endpoint_stats(self.db, since_hour, limit=10)
        calls, errors = int(calls), int(errors)
        return DashboardResponse(
            start=start,
            end=end,
            total_events=int(events.events),
            active_users=await repo.active_users(self.db, start.date()),
            api_calls=calls,
            errors=errors,
            error_rate=errors / calls if calls else 0.0,
            total_cost_usd=_money(events.cost_usd),
            top_endpoints=[
                EndpointStats(
                    route=row.route,
                    calls=int(row.calls),
                    errors=int(row.errors),
                    avg_latency_ms=round(float(row.latency_ms_total) / int(row.calls), 3) if row.calls else 0.0,
                )
                for row in top
            ],
            recent_events=[event_read(e) for e in await repo.recent_events(self.db, start, limit=20)],
        )


def event_read(event: Event) -> EventRead:
    return msgspec.convert(event, EventRead, from_attributes=True)


# -- the audit log ------------------------------------------------------------------------------

MAX_AUDIT_PAGE = 500
_AUDIT_LIMITS = {"action": 100, "actor_id": 64, "organization_id": 64, "target_type": 50, "target_id": 200}
_AUDIT_LIMITS |= {"ip": 64, "request_id": 128}


def _clip(value: str | None, limit: int) -> str | None:
    """A stored text: at most ``limit`` characters, without NUL (which PostgreSQL cannot hold)."""
    return None if value is None else value.replace("\x00", "")[:limit]


async def apply_audit_event(session: AsyncSession, event: BusEvent) -> None:
    """Store an ``audit.recorded`` event once: its id is the entry's id (ON CONFLICT DO NOTHING),
    so even a redelivery that outlived ``processed_events`` is not stored twice."""
    data = msgspec.convert(event.data, AuditRecorded)
    details = data.details if not _contains_nul(data.details) else {}
    row = {
        "id": uuid.UUID(event.id),
        "occurred_at": event.occurred_at.astimezone(UTC),
        "source": _clip(event.source, 50) or "unknown",
        "details": details,
        **{name: _clip(getattr(data, name), limit) for name, limit in _AUDIT_LIMITS.items()},
    }
    await repo.insert_new(session, repo.AUDIT_LOG, ["id"], [row])


def audit_entry_read(entry: AuditEntry) -> AuditEntryRead:
    return msgspec.convert(entry, AuditEntryRead, from_attributes=True)


def encode_cursor(entry: AuditEntry) -> str:
    raw = f"{entry.occurred_at.astimezone(UTC).isoformat()}|{entry.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, entry_id = raw.partition("|")
        at = datetime.fromisoformat(moment)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at.astimezone(UTC), uuid.UUID(entry_id)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidCursor() from None


class AuditService:
    def __init__(self, db: AsyncSession) -> None:
        self.db = db

    async def entries(
        self, identity: Identity, filters: repo.AuditFilters, cursor: str | None, limit: int
    ) -> AuditPage:
        """Platform administrators read every entry; an organisation's owners and admins only
        their active organisation's (asking for another is a 403); anyone else gets a 403."""
        _no_nul(filters.action, filters.target_id, cursor)
        if not identity.is_admin:
            if identity.tenant_id is None or identity.org_role not in ORG_MANAGERS:
                raise OrganizationManagersOnly()
            own = str(identity.tenant_id)
            if filters.organization_id not in (None, own):
                raise OrganizationManagersOnly()
            filters = msgspec.structs.replace(filters, organization_id=own)
        if filters.since is not None and filters.until is not None and filters.since >= filters.until:
            raise InvalidQuery("since must be earlier than until.")
        if cursor is not None:
            filters = msgspec.structs.replace(filters, after=decode_cursor(cursor))
        rows = await repo.audit_entries(self.db, filters, limit + 1)
        page = rows[:limit]
        return AuditPage(
            entries=[audit_entry_read(entry) for entry in page],
            next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None,
        )


# -- usage per organisation, member and API key -------------------------------------------------


def managed_organization(identity: Identity, organization_id: uuid.UUID) -> str:
    """The organisation a usage route is about, if the caller may see it: its owners and admins
    (it must be their active organisation) and platform administrators. A member of it gets a 403;
    anyone else a 404, as for an organisation that does not exist."""
    if identity.is_admin or identity.has_org_role(organization_id, *ORG_MANAGERS):
        return str(organization_id)
    if identity.tenant_id == organization_id:
        raise OrganizationManagersOnly()
    raise OrganizationNotFound()


def _route_usage(row: Any) -> RouteUsage:
    return RouteUsage(
        route=row.name,
        api_calls=int(row.api_calls),
        errors=int(row.errors),
        tokens_used=int(row.tokens_used),
        cost_usd=_money(row.cost_usd),
    )


class TeamUsageService:
    def __init__(self, db: AsyncSession, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def _window(self, days: int) -> tuple[date, date]:
        end = self.clock().date()
        return end - timedelta(days=days - 1), end

    async def organization(
        self, identity: Identity, organization_id: uuid.UUID, period: Period, days: int
    ) -> OrganizationUsage:
        scope = managed_organization(identity, organization_id)
        start, end = self._window(days)
        daily = [(row.name, row) for row in await repo.organization_usage(self.db, scope, start, end, "day")]
        totals, items = usage_periods(daily, start, end, period)
        by_route = [
            _route_usage(row) for row in await repo.organization_usage(self.db, scope, start, end, "route") if row.name
        ]  # LLM usage events have no route ("")
        by_route.sort(key=lambda usage: (-usage.api_calls, usage.route))
        return OrganizationUsage(organization_id, period, start, end, totals, items, by_route)

    async def members(self, identity: Identity, organization_id: uuid.UUID, days: int) -> OrganizationMembersUsage:
        scope = managed_organization(identity, organization_id)
        start, end = self._window(days)
        members = [
            MemberUsage(
                user_id=row.name,
                api_calls=int(row.api_calls),
                airtable_calls=int(row.airtable_calls),
                errors=int(row.errors),
                tokens_used=int(row.tokens_used),
                cost_usd=_money(row.cost_usd),
            )
            for row in await repo.organization_usage(self.db, scope, start, end, "user_id")
        ]
        members.sort(key=lambda usage: (-usage.api_calls, -usage.cost_usd, usage.user_id))
        return OrganizationMembersUsage(organization_id, start, end, members)

    async def my_keys(self, identity: Identity, days: int) -> KeysUsage:
        start, end = self._window(days)
        own = str(identity.user_id)
        keys = [
            KeyUsage(
                key_id=row.key_id,
                api_calls=int(row.api_calls),
                airtable_calls=int(row.airtable_calls),
                errors=int(row.errors),
                last_used_on=row.last_day,
            )
            for row in await repo.key_usage(self.db, own, start, end)
        ]
        return KeysUsage(user_id=own, start=start, end=end, keys=keys)
