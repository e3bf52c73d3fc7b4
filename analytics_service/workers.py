"""The analytics service's background work: the usage pipeline (the gateway's usage records rolled
up as they arrive) and the retention purge."""

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from analytics_service import repositories as repo
from analytics_service.config import AnalyticsSettings
from analytics_service.services.common import (
    AIRTABLE_ROUTE,
    ERROR_STATUS,
    USAGE_COUNTERS,
    Clock,
    ScopedUsage,
    hour,
    logger,
    usage_row,
)
from shared.periodic import BackgroundWorker, PeriodicTask
from shared.usage import UsageConsumer, UsageMessage


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
        key = (hour(moment), record.route)
        endpoint = endpoints.setdefault(
            key, {"hour": key[0], "route": record.route, "calls": 0, "errors": 0, "latency_ms_total": 0.0}
        )
        endpoint["calls"] += 1
        endpoint["errors"] += failed
        endpoint["latency_ms_total"] += record.latency_ms
        if record.user_id is None:
            continue
        day = moment.date()
        daily = usage.setdefault((record.user_id, day), usage_row(record.user_id, day))
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
