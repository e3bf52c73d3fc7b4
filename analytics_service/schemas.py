"""Request and response bodies of the analytics service."""

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from analytics_service.config import MAX_BATCH_ITEMS
from shared.http import check_date_time

EventType = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-/]+$")]
UserRef = Annotated[str, Meta(min_length=1, max_length=64)]
SessionRef = Annotated[str, Meta(min_length=1, max_length=128)]
AwareDateTime = Annotated[datetime, Meta(tz=True)]
EventId = Annotated[
    str,
    Meta(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="A UUID (the dedup key)",
    ),
]
MetricName = Annotated[str, Meta(min_length=1, max_length=200)]
Label = Annotated[str, Meta(max_length=100)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=10**12)]
NonNegativeFloat = Annotated[float, Meta(ge=0, le=10**9)]
Aggregation = Literal["sum", "avg", "min", "max", "count", "p50", "p95"]
Interval = Literal["minute", "hour", "day"]
Period = Literal["day", "week", "month"]
ItemStatus = Literal["accepted", "duplicate", "rejected"]


class EventCreate(Struct, forbid_unknown_fields=True):
    event_type: EventType
    event_id: EventId | None = None
    user_id: UserRef | None = None
    session_id: SessionRef | None = None
    properties: dict[str, Any] = {}
    occurred_at: AwareDateTime | None = None

    def __post_init__(self) -> None:
        check_date_time(self.occurred_at, "occurred_at")


class LLMUsage(Struct):
    """The properties an ``llm_usage`` event must carry."""

    model: Annotated[str, Meta(min_length=1, max_length=100)]
    prompt_tokens: NonNegativeInt = 0
    completion_tokens: NonNegativeInt = 0
    cost_usd: NonNegativeFloat = 0.0
    service: Annotated[str, Meta(min_length=1, max_length=100)] | None = None


class EventBatch(Struct):
    events: Annotated[
        list[dict[str, Any]],
        Meta(min_length=1, description=f"At most {MAX_BATCH_ITEMS} items; each an EventCreate object"),
    ]


class WellFormedBatch(Struct):
    """A batch whose every item is an EventCreate: decoded in one pass, the usual case."""

    events: list[EventCreate]


class EventResult(Struct, omit_defaults=True):
    """What became of one item: ``accepted`` (stored now), ``duplicate`` (its ``event_id`` was
    stored before) or ``rejected`` (not stored; ``reason`` says why)."""

    index: int
    status: ItemStatus
    event_id: str | None = None
    reason: str | None = None


class BatchResult(Struct):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class EventRead(Struct):
    event_id: uuid.UUID
    event_type: str
    user_id: str | None
    session_id: str | None
    properties: dict[str, Any]
    occurred_at: datetime
    received_at: datetime


class MetricCreate(Struct, forbid_unknown_fields=True):
    name: MetricName
    value: Annotated[float, Meta(ge=-1e15, le=1e15)]
    type: Literal["counter", "gauge", "histogram"] = "counter"
    user_id: UserRef | None = None
    service_name: Label | None = None
    endpoint: Annotated[str, Meta(max_length=300)] | None = None
    labels: dict[str, Any] = {}
    timestamp: AwareDateTime | None = None

    def __post_init__(self) -> None:
        check_date_time(self.timestamp, "timestamp")


class MetricBatch(Struct):
    metrics: Annotated[list[MetricCreate], Meta(min_length=1, description=f"At most {MAX_BATCH_ITEMS} items")]


class MetricRead(Struct):
    id: uuid.UUID
    name: str
    value: float
    type: str
    user_id: str | None
    service_name: str | None
    endpoint: str | None
    labels: dict[str, Any]
    timestamp: datetime


class MetricBatchResult(Struct):
    created: int


class MetricPoint(Struct):
    bucket: datetime
    value: float
    count: int


class MetricQueryResult(Struct):
    """Raw metrics (newest first) without ``aggregation``; one point per bucket with it."""

    count: int
    metrics: list[MetricRead]
    points: list[MetricPoint]
    aggregation: Aggregation | None = None
    interval: Interval | None = None


class UsageTotals(Struct):
    api_calls: int
    airtable_calls: int
    errors: int
    tokens_used: int
    cost_usd: float


class UsagePeriod(Struct):
    period_start: date
    api_calls: int
    airtable_calls: int
    errors: int
    tokens_used: int
    cost_usd: float


class UsageResponse(Struct):
    user_id: str
    period: Period
    start: date
    end: date
    totals: UsageTotals
    items: list[UsagePeriod]


class CostTotals(Struct):
    cost_usd: float
    tokens_used: int
    api_calls: int
    cost_per_token: float
    cost_per_api_call: float


class UserCost(Struct):
    user_id: str
    cost_usd: float
    tokens_used: int
    api_calls: int


class BreakdownItem(Struct):
    name: str
    cost_usd: float
    tokens_used: int
    calls: int


class CostsResponse(Struct):
    start: date
    end: date
    totals: CostTotals
    by_user: list[UserCost]
    by_service: list[BreakdownItem]
    by_model: list[BreakdownItem]


class EndpointStats(Struct):
    route: str
    calls: int
    errors: int
    avg_latency_ms: float


class DashboardResponse(Struct):
    start: datetime
    end: datetime
    total_events: int
    active_users: int
    api_calls: int
    errors: int
    error_rate: float
    total_cost_usd: float
    top_endpoints: list[EndpointStats]
    recent_events: list[EventRead]


class PurgeResult(Struct):
    deleted: dict[str, int]


# -- audit log ------------------------------------------------------------------------------------

AuditAction = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")]


class AuditRecorded(Struct):
    """An ``audit.recorded`` event's data (shared/audit.py); anything else it holds is ignored."""

    action: str
    actor_id: str | None = None
    organization_id: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    ip: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = {}


class AuditEntryRead(Struct):
    id: uuid.UUID
    occurred_at: datetime
    action: str
    actor_id: str | None
    organization_id: str | None
    target_type: str | None
    target_id: str | None
    ip: str | None
    request_id: str | None
    details: dict[str, Any]
    source: str


class AuditPage(Struct):
    """Newest first; ``next_cursor`` (absent on the last page) asks for the entries after these."""

    entries: list[AuditEntryRead]
    next_cursor: str | None = None


# -- usage per organisation, member and API key ---------------------------------------------------


class RouteUsage(Struct):
    route: str
    api_calls: int
    errors: int
    tokens_used: int
    cost_usd: float


class OrganizationUsage(Struct):
    organization_id: uuid.UUID
    period: Period
    start: date
    end: date
    totals: UsageTotals
    items: list[UsagePeriod]
    by_route: list[RouteUsage]


class MemberUsage(Struct):
    user_id: str
    api_calls: int
    airtable_calls: int
    errors: int
    tokens_used: int
    cost_usd: float


class OrganizationMembersUsage(Struct):
    organization_id: uuid.UUID
    start: date
    end: date
    members: list[MemberUsage]


class KeyUsage(Struct):
    key_id: str
    api_calls: int
    airtable_calls: int
    errors: int
    last_used_on: date


class KeysUsage(Struct):
    """The caller's requests per API key (requests made with a key only)."""

    user_id: str
    start: date
    end: date
    keys: list[KeyUsage]
