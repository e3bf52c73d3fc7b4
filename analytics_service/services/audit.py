"""The audit log: written from the platform's ``audit.recorded`` events, read by administrators and
organisation managers a page at a time."""

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service import repositories as repo
from analytics_service.errors import (
    InvalidCursor,
    InvalidQuery,
    OrganizationManagersOnly,
)
from analytics_service.models import AuditEntry
from analytics_service.schemas import (
    AuditEntryRead,
    AuditPage,
    AuditRecorded,
)
from analytics_service.services.common import contains_nul, no_nul
from shared.events import Event as BusEvent
from shared.security import ORG_MANAGERS, Identity

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
    details = data.details if not contains_nul(data.details) else {}
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


@dataclass(frozen=True)
class AuditService:
    """The audit log as one caller (``identity``) may read it."""

    db: AsyncSession
    identity: Identity

    async def entries(self, filters: repo.AuditFilters, cursor: str | None, limit: int) -> AuditPage:
        """Platform administrators read every entry; an organisation's owners and admins only
        their active organisation's (asking for another is a 403); anyone else gets a 403."""
        no_nul(filters.action, filters.target_id, cursor)
        identity = self.identity
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
