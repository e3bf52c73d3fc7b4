"""Dependency providers of the analytics service: each service serves the request's caller."""

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.services.audit import AuditService
from analytics_service.services.common import Client
from analytics_service.services.events import EventService
from analytics_service.services.metrics import MetricService
from analytics_service.services.reports import ReportService, TeamUsageService, UsageReports
from shared.http import client_ip
from shared.security import Identity

AnyRequest = Request[Identity, Any, Any]


def provide_events(state: State, request: AnyRequest) -> EventService:
    return EventService(
        state.sessionmaker, state.settings, state.clock, request.user, _client(request, state), state.direct
    )


def provide_metrics(db_session: NamedDependency[AsyncSession], state: State, request: AnyRequest) -> MetricService:
    return MetricService(db_session, state.clock, request.user)


def provide_reports(db_session: NamedDependency[AsyncSession], state: State, request: AnyRequest) -> ReportService:
    return ReportService(db_session, state.clock, request.user)


def provide_usage_reports(state: State, request: AnyRequest) -> UsageReports:
    return UsageReports(state.clock, request.user, state.direct)


def provide_audit(db_session: NamedDependency[AsyncSession], request: AnyRequest) -> AuditService:
    return AuditService(db_session, request.user)


def provide_team_usage(
    db_session: NamedDependency[AsyncSession], state: State, request: AnyRequest
) -> TeamUsageService:
    return TeamUsageService(db_session, state.clock, request.user)


def _client(request: AnyRequest, state: State) -> Client:
    """Where the request came from."""
    return Client(
        ip=client_ip(request.scope, state.settings.trusted_proxy_list),
        user_agent=request.headers.get("user-agent"),
    )
