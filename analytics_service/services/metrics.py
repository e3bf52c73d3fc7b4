"""Metrics: recorded one by one or in batches, and queried with an aggregation per interval."""

import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service import repositories as repo
from analytics_service.config import MAX_BATCH_ITEMS
from analytics_service.errors import (
    BatchTooLarge,
    InvalidQuery,
)
from analytics_service.models import Metric
from analytics_service.schemas import (
    Aggregation,
    Interval,
    MetricCreate,
    MetricPoint,
    MetricQueryResult,
    MetricRead,
)
from analytics_service.services.common import Clock, contains_nul, no_nul, user_asked_about
from shared.security import Identity

MAX_METRIC_BUCKETS = 10_000


MAX_PYTHON_AGGREGATION_ROWS = 200_000


def metric_read(metric: Metric) -> MetricRead:
    return msgspec.convert(metric, MetricRead, from_attributes=True)


@dataclass(frozen=True)
class MetricService:
    """Metrics as one caller (``identity``) may record and read them."""

    db: AsyncSession
    clock: Clock
    identity: Identity

    async def record(self, items: Sequence[MetricCreate]) -> list[dict[str, Any]]:
        if len(items) > MAX_BATCH_ITEMS:
            raise BatchTooLarge(MAX_BATCH_ITEMS)
        if contains_nul(msgspec.to_builtins(items)):
            raise InvalidQuery("A text value contains the NUL character, which cannot be stored.")
        now = self.clock()
        rows = [
            {
                "id": uuid.uuid4(),
                "name": item.name,
                "value": item.value,
                "type": item.type,
                "user_id": user_asked_about(self.identity, item.user_id, "metrics"),
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
        no_nul(name, service, endpoint, user_id)
        if not self.identity.is_admin:
            user_id = user_asked_about(self.identity, user_id, "metrics")
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
    "avg": lambda v: math.fsum(v) / len(v),  # statistics.fmean's arithmetic, without its 1.5 MB import
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
