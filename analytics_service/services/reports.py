"""Reports read from the rollups: usage, costs and the dashboard per user, and usage per
organisation, member and API key."""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service import repositories as repo
from analytics_service.errors import (
    AdminOnly,
    OrganizationManagersOnly,
    OrganizationNotFound,
)
from analytics_service.schemas import (
    BreakdownItem,
    CostsResponse,
    CostTotals,
    DashboardResponse,
    EndpointStats,
    KeysUsage,
    KeyUsage,
    MemberUsage,
    OrganizationMembersUsage,
    OrganizationUsage,
    Period,
    RouteUsage,
    UsagePeriod,
    UsageResponse,
    UsageTotals,
    UserCost,
)
from analytics_service.services.common import Clock, hour, money, user_asked_about
from analytics_service.services.events import event_read
from shared.db import DirectStatements
from shared.security import ORG_MANAGERS, Identity


def _period_start(day: date, period: str) -> date:
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


S = TypeVar("S", bound=msgspec.Struct)
PERIOD_COUNTERS = ("api_calls", "airtable_calls", "errors", "tokens_used", "cost_usd")


def _summed(sums: Mapping[str, Any], into: type[S], **named: Any) -> S:
    """Summed usage (a rollup row's mapping, or a period's counters) as ``into``: ``named``, and
    each sum ``into`` has (counts as integers, the cost in dollars)."""
    values = {
        name: money(sums[name]) if name == "cost_usd" else int(sums[name])
        for name in into.__struct_fields__
        if name not in named
    }
    return into(**named, **values)


def usage_periods(
    daily: Sequence[tuple[date, Mapping[str, Any]]], start: date, end: date, period: Period
) -> tuple[UsageTotals, list[UsagePeriod]]:
    """Per-day counters summed per ``period`` (every period of start..end, zeros included) and in all."""
    sums: dict[date, dict[str, Any]] = {}
    for day, row in daily:
        begin = _period_start(day, period)
        bucket = sums.setdefault(begin, dict.fromkeys(PERIOD_COUNTERS, 0))
        for counter in PERIOD_COUNTERS:
            bucket[counter] += row[counter]
    items: list[UsagePeriod] = []
    day = start
    while day <= end:
        begin = _period_start(day, period)
        if not items or items[-1].period_start != begin:
            # Most periods of a report have no usage: built as zeros, not summed.
            counted = sums.get(begin)
            items.append(_summed(counted, UsagePeriod, period_start=begin) if counted else _no_usage(begin))
        day += timedelta(days=1)
    totals = UsageTotals(
        api_calls=sum(i.api_calls for i in items),
        airtable_calls=sum(i.airtable_calls for i in items),
        errors=sum(i.errors for i in items),
        tokens_used=sum(i.tokens_used for i in items),
        cost_usd=money(sum(Decimal(v["cost_usd"] or 0) for v in sums.values())),
    )
    return totals, items


def _no_usage(begin: date) -> UsagePeriod:
    return UsagePeriod(period_start=begin, api_calls=0, airtable_calls=0, errors=0, tokens_used=0, cost_usd=0.0)


@dataclass(frozen=True)
class UsageReports:
    """Usage per day, week or month as one caller (``identity``) may see it: read by DirectStatements,
    so its routes (``GET /analytics/usage/me`` is among the hottest) open no request session."""

    clock: Clock
    identity: Identity
    direct: DirectStatements

    async def usage(self, user_id: str | None, period: Period, days: int) -> UsageResponse:
        owner = user_asked_about(self.identity, user_id, "usage")
        end = self.clock().date()
        start = end - timedelta(days=days - 1)
        daily = [(row["day"], row) for row in await repo.usage_rows(self.direct, owner, start, end)]
        totals, items = usage_periods(daily, start, end, period)
        return UsageResponse(user_id=owner, period=period, start=start, end=end, totals=totals, items=items)


@dataclass(frozen=True)
class ReportService:
    """Costs and the dashboard as one caller (``identity``) may see them."""

    db: AsyncSession
    clock: Clock
    identity: Identity

    async def costs(self, user_id: str | None, days: int) -> CostsResponse:
        identity = self.identity
        scope = None if identity.is_admin and user_id is None else user_asked_about(identity, user_id, "costs")
        end = self.clock().date()
        start = end - timedelta(days=days - 1)
        totals = await repo.cost_totals(self.db, start, end, scope)
        cost, tokens, calls = money(totals.cost_usd), int(totals.tokens_used), int(totals.api_calls)
        by_user = [
            UserCost(row.user_id, money(row.cost_usd), int(row.tokens_used), int(row.api_calls))
            for row in await repo.cost_by_user(self.db, start, end, scope, limit=100)
        ]
        breakdowns = {
            by: [
                BreakdownItem(row.name, money(row.cost_usd), int(row.tokens_used), int(row.calls))
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

    async def dashboard(self, hours: int) -> DashboardResponse:
        if not self.identity.is_admin:
            raise AdminOnly()
        end = self.clock()
        start = end - timedelta(hours=hours)
        since_hour = hour(start)
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
            total_cost_usd=money(events.cost_usd),
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


def managed_organization(identity: Identity, organization_id: uuid.UUID) -> str:
    """The organisation a usage route is about, if the caller may see it: its owners and admins
    (it must be their active organisation) and platform administrators. A member of it gets a 403;
    anyone else a 404, as for an organisation that does not exist."""
    if identity.is_admin or identity.has_org_role(organization_id, *ORG_MANAGERS):
        return str(organization_id)
    if identity.tenant_id == organization_id:
        raise OrganizationManagersOnly()
    raise OrganizationNotFound()


@dataclass(frozen=True)
class TeamUsageService:
    """Usage by organisation, member and API key, as one caller (``identity``) may see it."""

    db: AsyncSession
    clock: Clock
    identity: Identity

    def _window(self, days: int) -> tuple[date, date]:
        end = self.clock().date()
        return end - timedelta(days=days - 1), end

    async def organization(self, organization_id: uuid.UUID, period: Period, days: int) -> OrganizationUsage:
        scope = managed_organization(self.identity, organization_id)
        start, end = self._window(days)
        daily = [(row.name, row._mapping) for row in await repo.organization_usage(self.db, scope, start, end, "day")]
        totals, items = usage_periods(daily, start, end, period)
        by_route = [
            _summed(row._mapping, RouteUsage, route=row.name)
            for row in await repo.organization_usage(self.db, scope, start, end, "route")
            if row.name
        ]  # LLM usage events have no route ("")
        by_route.sort(key=lambda usage: (-usage.api_calls, usage.route))
        return OrganizationUsage(organization_id, period, start, end, totals, items, by_route)

    async def members(self, organization_id: uuid.UUID, days: int) -> OrganizationMembersUsage:
        scope = managed_organization(self.identity, organization_id)
        start, end = self._window(days)
        members = [
            _summed(row._mapping, MemberUsage, user_id=row.name)
            for row in await repo.organization_usage(self.db, scope, start, end, "user_id")
        ]
        members.sort(key=lambda usage: (-usage.api_calls, -usage.cost_usd, usage.user_id))
        return OrganizationMembersUsage(organization_id, start, end, members)

    async def my_keys(self, days: int) -> KeysUsage:
        start, end = self._window(days)
        own = str(self.identity.user_id)
        keys = [
            _summed(row._mapping, KeyUsage, key_id=row.key_id, last_used_on=row.last_day)
            for row in await repo.key_usage(self.db, own, start, end)
        ]
        return KeysUsage(user_id=own, start=start, end=end, keys=keys)
