"""What the analytics services share: the clock, where a request came from, whose data a request is
about, and the per-user usage rows that events and the usage pipeline both count into."""

import logging
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service import repositories as repo
from analytics_service.errors import (
    InvalidQuery,
    NotYourData,
)
from shared.security import Identity

logger = logging.getLogger("analytics_service")


Clock = Callable[[], datetime]


LLM_USAGE = "llm_usage"


AIRTABLE_ROUTE = "/api/v1/airtable"


ERROR_STATUS = 500  # a request counts as an error when the platform failed it (5xx), not the client (4xx)


class Client(msgspec.Struct, frozen=True):
    """Where a request came from."""

    ip: str
    user_agent: str | None = None


def money(value: Any) -> float:
    return float(value or 0)


def hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def no_nul(*values: str | None) -> None:
    """A filter with a NUL character matches nothing stored (and PostgreSQL refuses to compare it)."""
    if any(value is not None and "\x00" in value for value in values):
        raise InvalidQuery("A query value contains the NUL character.")


def user_asked_about(identity: Identity, requested: str | None, what: str) -> str:
    """The user a request is about: the caller, or (administrators only) another user."""
    no_nul(requested)
    own = str(identity.user_id)
    if requested is None or requested == own:
        return own
    if not identity.is_admin:
        raise NotYourData(what)
    return requested


def contains_nul(value: Any) -> bool:
    """Whether a NUL character hides in a string (or key) of a JSON value: PostgreSQL's text and
    jsonb cannot hold one."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(key) or contains_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


USAGE_COUNTERS = ["api_calls", "airtable_calls", "errors", "bytes_in", "tokens_used", "cost_usd"]


def usage_row(user_id: str, day: date) -> dict[str, Any]:
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
                **usage_row(user_id, day),
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
