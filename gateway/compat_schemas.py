"""The older platform service's request and response bodies (../shared/LEGACY-CONTRACT.md), and
the conversions between them and the platform's."""

from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class LegacyUser(msgspec.Struct):
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    is_active: bool
    created_at: datetime


class LegacyTokenResponse(msgspec.Struct):
    access_token: str
    expires_in: int
    user: LegacyUser
    # Not in the older service's answers: its clients ignore it, newer ones renew with it.
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - a token type, not a secret


class LegacyVerifyResponse(msgspec.Struct):
    valid: bool
    user: LegacyUser


class LegacyRegisterRequest(msgspec.Struct):
    email: str
    password: str
    first_name: str | None = None
    last_name: str | None = None


class LegacyLoginRequest(msgspec.Struct):
    email: str
    password: str


class LegacyProfileUpdate(msgspec.Struct):
    email: str  # required by the old service, never changed by this call
    first_name: str | None = None
    last_name: str | None = None


class LegacyMessage(msgspec.Struct):
    message: str


def legacy_user(user: dict[str, Any]) -> LegacyUser:
    return msgspec.convert(user, LegacyUser)


UserRef = Annotated[str | int, Meta(description="A user id (the platform's are UUIDs; old integer ids are accepted)")]


class LegacyEventCreate(msgspec.Struct):
    event_type: str
    event_data: dict[str, Any] = {}
    user_id: UserRef | None = None
    session_id: str | None = None


class LegacyEvent(msgspec.Struct):
    id: str
    event_type: str
    event_data: dict[str, Any]
    user_id: str | None
    session_id: str | None
    timestamp: datetime


class LegacyMetricCreate(msgspec.Struct):
    metric_name: str
    metric_value: float
    metric_type: str = "counter"
    user_id: UserRef | None = None
    service_name: str | None = None
    endpoint: str | None = None
    labels: dict[str, Any] = {}


class LegacyMetric(msgspec.Struct):
    id: str
    metric_name: str
    metric_value: float
    metric_type: str
    user_id: str | None
    service_name: str | None
    endpoint: str | None
    labels: dict[str, Any]
    timestamp: datetime


class LegacyMetricBatch(msgspec.Struct):
    metrics: list[LegacyMetricCreate]


class LegacyMetricList(msgspec.Struct):
    metrics: list[LegacyMetric]
    count: int


class LegacyUsage(msgspec.Struct):
    user_id: str
    api_calls_count: int
    tokens_used: int
    cost_usd: float
    date: date
    period_type: str


class LegacyCostSummary(msgspec.Struct):
    total_cost_usd: float
    total_tokens: int
    total_api_calls: int
    period_days: int
    cost_per_token: float
    cost_per_api_call: float


class LegacyUserCost(msgspec.Struct):
    user_id: str
    total_cost: float
    total_tokens: int
    total_api_calls: int


class LegacyPeriod(msgspec.Struct):
    start_date: date
    end_date: date


class LegacyCosts(msgspec.Struct):
    summary: LegacyCostSummary
    user_breakdown: list[LegacyUserCost]
    period: LegacyPeriod


class LegacyEndpointCount(msgspec.Struct):
    endpoint: str
    count: int


class LegacyDashboard(msgspec.Struct):
    total_events: int
    active_users: int
    total_api_calls: int
    total_cost: float
    top_endpoints: list[LegacyEndpointCount]
    recent_events: list[LegacyEvent]


def as_text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


# Each legacy field and the platform's name for it.
EVENT_FIELDS = {
    "id": "event_id",
    "event_type": "event_type",
    "event_data": "properties",
    "user_id": "user_id",
    "session_id": "session_id",
    "timestamp": "occurred_at",
}
METRIC_FIELDS = {
    "id": "id",
    "metric_name": "name",
    "metric_value": "value",
    "metric_type": "type",
    "user_id": "user_id",
    "service_name": "service_name",
    "endpoint": "endpoint",
    "labels": "labels",
    "timestamp": "timestamp",
}


def legacy_event(event: dict[str, Any]) -> LegacyEvent:
    return LegacyEvent(**_renamed(event, EVENT_FIELDS))


def legacy_metric(metric: dict[str, Any]) -> LegacyMetric:
    return LegacyMetric(**_renamed(metric, METRIC_FIELDS))


def _renamed(platform: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """The platform's values under their legacy names, as they are (no conversion)."""
    return {legacy: platform[name] for legacy, name in fields.items()}


def platform_metric(metric: LegacyMetricCreate) -> dict[str, Any]:
    return {
        "name": metric.metric_name,
        "value": metric.metric_value,
        "type": metric.metric_type,
        "user_id": as_text(metric.user_id),
        "service_name": metric.service_name,
        "endpoint": metric.endpoint,
        "labels": metric.labels,
    }
