"""Dependency providers of the analytics service."""

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.services.audit import AuditService
from analytics_service.services.common import Client
from analytics_service.services.events import EventService
from analytics_service.services.metrics import MetricService
from analytics_service.services.reports import ReportService, TeamUsageService
from shared.http import client_ip


def provide_events(db_session: NamedDependency[AsyncSession], state: State) -> EventService:
    return EventService(db_session, state.settings, state.clock)


def provide_metrics(db_session: NamedDependency[AsyncSession], state: State) -> MetricService:
    return MetricService(db_session, state.clock)


def provide_reports(db_session: NamedDependency[AsyncSession], state: State) -> ReportService:
    return ReportService(db_session, state.clock)


def provide_audit(db_session: NamedDependency[AsyncSession]) -> AuditService:
    return AuditService(db_session)


def provide_team_usage(db_session: NamedDependency[AsyncSession], state: State) -> TeamUsageService:
    return TeamUsageService(db_session, state.clock)


def provide_client(request: Request[Any, Any, Any], state: State) -> Client:
    return Client(
        ip=client_ip(request.scope, state.settings.trusted_proxy_list),
        user_agent=request.headers.get("user-agent"),
    )
