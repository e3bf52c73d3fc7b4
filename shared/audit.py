"""Audit entries: security-relevant actions, recorded where they happen and kept by analytics.

A service that does such an action adds an ``audit.recorded`` event to its transactional outbox
in the same transaction as the change (:func:`record_audit`), so an entry exists exactly when the
change does; analytics consumes the events into its audit log (``GET /api/v1/analytics/audit``).

What an entry holds is documented in the README ("Audit log"): the action, the acting user, the
target, the organisation, the client's address and the request id. It never holds a secret, a
token, a hash or an email address: a failed login for an unknown address is recorded without it.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import Event, new_event
from shared.logs import request_id_var
from shared.outbox import add_event

AUDIT_EVENT = "audit.recorded"


def audit_event(
    source: str,
    action: str,
    *,
    actor_id: uuid.UUID | str | None,
    organization_id: uuid.UUID | str | None = None,
    target_type: str | None = None,
    target_id: uuid.UUID | str | None = None,
    ip: str | None = None,
    request_id: str | None = None,
    at: datetime | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """An ``audit.recorded`` event. ``action`` is dotted, object first (``member.role_changed``);
    ``details`` holds small non-secret facts (an old and a new role, a scope list). ``request_id``
    defaults to the request being served."""
    event = new_event(
        AUDIT_EVENT,
        source,
        {
            "action": action,
            "actor_id": _text(actor_id),
            "organization_id": _text(organization_id),
            "target_type": target_type,
            "target_id": _text(target_id),
            "ip": ip,
            "request_id": request_id or request_id_var.get(),
            "details": details or {},
        },
    )
    return event if at is None else Event(event.id, event.type, event.source, at, event.data, event.trace)


async def record_audit(db: AsyncSession, outbox: Table, source: str, action: str, **fields: Any) -> None:
    """Adds an audit event to the outbox, in the caller's transaction (see :func:`audit_event`)."""
    await add_event(db, outbox, audit_event(source, action, **fields))


def _text(value: uuid.UUID | str | None) -> str | None:
    return None if value is None else str(value)
