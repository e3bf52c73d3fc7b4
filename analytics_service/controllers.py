import uuid
from datetime import datetime
from http import HTTPStatus
from typing import Annotated

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from analytics_service.deps import (
    provide_audit,
    provide_events,
    provide_metrics,
    provide_reports,
    provide_team_usage,
    provide_usage_reports,
)
from analytics_service.repositories import AuditFilters
from analytics_service.schemas import (
    Aggregation,
    AuditPage,
    BatchResult,
    CostsResponse,
    DashboardResponse,
    EventBatch,
    EventCreate,
    EventResult,
    Interval,
    KeysUsage,
    MetricBatch,
    MetricBatchResult,
    MetricCreate,
    MetricQueryResult,
    MetricRead,
    OrganizationMembersUsage,
    OrganizationUsage,
    Period,
    UsageResponse,
)
from analytics_service.services.audit import MAX_AUDIT_PAGE, AuditService
from analytics_service.services.events import EventService
from analytics_service.services.metrics import MetricService
from analytics_service.services.reports import ReportService, TeamUsageService, UsageReports
from shared.errors import PROBLEM_MEDIA_TYPE, Problem
from shared.http import as_utc
from shared.security import Identity

BEARER: list[dict[str, list[str]]] = [{"BearerAuth": []}]


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem+json answers a route documents (with 400, 401 and 503, which every route has)."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=HTTPStatus(status).phrase,
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in sorted({400, 401, 503, *statuses})
    }


WRITE = problems(403, 413, 422)
READ = problems(403, 422)
ORGANIZATION_READ = problems(403, 404, 422)
Days = Annotated[int, QueryParameter(ge=1, le=366, description="How many days back, today included")]
Optional = Annotated[str | None, QueryParameter(max_length=300)]
PeriodQuery = Annotated[Period, QueryParameter()]
Events = NamedDependency[EventService]
Metrics = NamedDependency[MetricService]
Reports = NamedDependency[ReportService]
Usage = NamedDependency[UsageReports]
TeamUsage = NamedDependency[TeamUsageService]


class AnalyticsController(Controller):
    """Events, metrics, usage, costs and the dashboard."""

    path = "/api/v1/analytics"
    tags = ["analytics"]
    security = BEARER
    # Dependency names differ from every body field: Litestar would take a field's validation error
    # for a failed dependency (a 500).
    dependencies = {
        "event_service": Provide(provide_events, sync_to_thread=False),
        "metric_service": Provide(provide_metrics, sync_to_thread=False),
        "report_service": Provide(provide_reports, sync_to_thread=False),
        "usage_reports": Provide(provide_usage_reports, sync_to_thread=False),
        "audit_service": Provide(provide_audit, sync_to_thread=False),
        "team_usage": Provide(provide_team_usage, sync_to_thread=False),
    }

    @post("/events", operation_id="record_event", status_code=HTTP_202_ACCEPTED, responses=WRITE)
    async def record_event(self, data: JSONBody[EventCreate], event_service: Events) -> EventResult:
        """Record one event (``accepted``, or ``duplicate`` when its ``event_id`` is known); 202 once stored."""
        return await event_service.ingest_one(data)

    # Each item is accepted or rejected on its own, an item with the NUL character too.
    @post(
        "/events/batch",
        operation_id="record_events",
        status_code=HTTP_202_ACCEPTED,
        responses=WRITE,
        opt={"nul_per_item": True},
    )
    async def record_events(
        self, data: JSONBody[EventBatch], request: Request[Identity, str, State], event_service: Events
    ) -> BatchResult:
        """Record up to 1000 events (1 MB); each item is reported accepted, duplicate or rejected."""
        return await event_service.ingest(data.events, await request.body())

    @post("/metrics", operation_id="record_metric", status_code=HTTP_201_CREATED, responses=WRITE)
    async def record_metric(self, data: JSONBody[MetricCreate], metric_service: Metrics) -> MetricRead:
        """Record one metric value."""
        row = (await metric_service.record([data]))[0]
        return msgspec.convert(row, MetricRead)

    @post("/metrics/batch", operation_id="record_metrics", status_code=HTTP_201_CREATED, responses=WRITE)
    async def record_metrics(self, data: JSONBody[MetricBatch], metric_service: Metrics) -> MetricBatchResult:
        """Record up to 1000 metric values at once."""
        return MetricBatchResult(created=len(await metric_service.record(data.metrics)))

    @get("/metrics", operation_id="query_metrics", responses=READ)
    async def query_metrics(
        self,
        metric_service: Metrics,
        name: Annotated[str | None, QueryParameter(max_length=200)] = None,
        service: Optional = None,
        endpoint: Optional = None,
        user_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
        start: Annotated[datetime | None, QueryParameter(name="from", description="Default: `to` minus 1 day")] = None,
        end: Annotated[datetime | None, QueryParameter(name="to", description="Default: now")] = None,
        aggregation: Annotated[Aggregation | None, QueryParameter()] = None,
        interval: Annotated[Interval, QueryParameter()] = "hour",
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> MetricQueryResult:
        """Metric values (newest first), or with ``aggregation`` one value per ``interval`` bucket."""
        return await metric_service.query(
            name=name,
            service=service,
            endpoint=endpoint,
            user_id=user_id,
            start=as_utc(start, "from"),
            end=as_utc(end, "to"),
            aggregation=aggregation,
            interval=interval,
            limit=limit,
        )

    @get("/usage/me", operation_id="my_usage", responses=READ)
    async def my_usage(self, usage_reports: Usage, period: PeriodQuery = "day", days: Days = 30) -> UsageResponse:
        """The caller's usage per day, week or month."""
        return await usage_reports.usage(None, period, days)

    @get("/usage/me/keys", operation_id="my_key_usage", responses=READ)
    async def my_key_usage(self, team_usage: TeamUsage, days: Days = 30) -> KeysUsage:
        """The caller's requests made with each of their API keys (by key id)."""
        return await team_usage.my_keys(days)

    @get("/usage/orgs/{organization_id:uuid}", operation_id="organization_usage", responses=ORGANIZATION_READ)
    async def organization_usage(
        self, organization_id: FromPath[uuid.UUID], team_usage: TeamUsage, period: PeriodQuery = "day", days: Days = 30
    ) -> OrganizationUsage:
        """An organisation's usage per day, week or month and per route: its owners and admins (it must
        be their active organisation) and platform administrators; 403 for its other members, else 404."""
        return await team_usage.organization(organization_id, period, days)

    @get(
        "/usage/orgs/{organization_id:uuid}/members",
        operation_id="organization_members_usage",
        responses=ORGANIZATION_READ,
    )
    async def organization_members_usage(
        self, organization_id: FromPath[uuid.UUID], team_usage: TeamUsage, days: Days = 30
    ) -> OrganizationMembersUsage:
        """An organisation's usage per member (most requests first); who may see it as for the organisation's usage."""
        return await team_usage.members(organization_id, days)

    @get("/usage/{user_id:str}", operation_id="user_usage", responses=READ)
    async def user_usage(
        self, user_id: FromPath[str], usage_reports: Usage, period: PeriodQuery = "day", days: Days = 30
    ) -> UsageResponse:
        """A user's usage per day, week or month: the caller's own, or anyone's for administrators (else 403)."""
        return await usage_reports.usage(user_id, period, days)

    @get("/costs", operation_id="costs", responses=READ)
    async def costs(
        self,
        report_service: Reports,
        user_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
        days: Days = 30,
    ) -> CostsResponse:
        """Cost and token totals with breakdowns by user, service and model: the caller's own,
        everyone's for administrators."""
        return await report_service.costs(user_id, days)

    @get("/dashboard", operation_id="dashboard", responses=READ)
    async def dashboard(
        self,
        report_service: Reports,
        hours: Annotated[int, QueryParameter(ge=1, le=2160, description="The window: the last N hours")] = 24,
    ) -> DashboardResponse:
        """Platform totals for a time window (administrators only)."""
        return await report_service.dashboard(hours)

    @get("/audit", operation_id="list_audit_entries", responses=READ)
    async def list_audit_entries(
        self,
        audit_service: NamedDependency[AuditService],
        action: Annotated[
            str | None,
            QueryParameter(max_length=100, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$", description="e.g. login.failed"),
        ] = None,
        actor_id: Annotated[uuid.UUID | None, QueryParameter(description="The acting user")] = None,
        target_id: Annotated[str | None, QueryParameter(max_length=200)] = None,
        organization_id: Annotated[
            uuid.UUID | None, QueryParameter(description="Platform administrators: any; others: their active one")
        ] = None,
        since: Annotated[datetime | None, QueryParameter(description="Inclusive")] = None,
        until: Annotated[datetime | None, QueryParameter(description="Exclusive")] = None,
        cursor: Annotated[
            str | None, QueryParameter(max_length=200, description="`next_cursor` of the page before")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_AUDIT_PAGE)] = 100,
    ) -> AuditPage:
        """Audit entries, newest first: every organisation's for platform administrators, the active
        organisation's for its owners and admins (another organisation's: 403), else 403."""
        filters = AuditFilters(
            action=action,
            actor_id=str(actor_id) if actor_id else None,
            target_id=target_id,
            organization_id=str(organization_id) if organization_id else None,
            since=as_utc(since, "since"),
            until=as_utc(until, "until"),
        )
        return await audit_service.entries(filters, cursor, limit)
