"""Event ingestion: one event or a batch, validated, deduplicated per user, counted into usage."""

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from analytics_service import repositories as repo
from analytics_service.config import MAX_BATCH_ITEMS, AnalyticsSettings
from analytics_service.errors import (
    BatchTooLarge,
    EventRejected,
)
from analytics_service.models import Event
from analytics_service.schemas import (
    BatchResult,
    EventCreate,
    EventRead,
    EventResult,
    ItemStatus,
    LLMUsage,
    WellFormedBatch,
)
from analytics_service.services.common import (
    LLM_USAGE,
    USAGE_COUNTERS,
    Client,
    Clock,
    ScopedUsage,
    contains_nul,
    usage_row,
)
from shared.db import DirectStatements
from shared.security import Identity


class _Caller(msgspec.Struct, frozen=True):
    """What every event of one request shares."""

    user_id: str
    organization_id: str  # the caller's active organisation, "" without one
    is_admin: bool
    ip: str
    user_agent: str | None
    received_at: datetime
    oldest: datetime


@dataclass(frozen=True)
class EventService:
    """Events recorded by one caller (``identity``), from where their request came (``client``).
    It opens a session (``sessions``) only for what DirectStatements does not write alone."""

    sessions: async_sessionmaker[AsyncSession]
    settings: AnalyticsSettings
    clock: Clock
    identity: Identity
    client: Client
    direct: DirectStatements

    async def ingest(self, items: Sequence[Any], body: bytes | None = None) -> BatchResult:
        """Store the acceptable items not stored before; the rows are committed on return.

        ``body``, the request's JSON, is decoded again straight into EventCreate items when every
        item is well-formed (the usual case: one pass in C); otherwise each item is converted on
        its own, so that each can be rejected with its own reason."""
        if len(items) > MAX_BATCH_ITEMS:
            raise BatchTooLarge(MAX_BATCH_ITEMS)
        received_at = self.clock()
        identity, client = self.identity, self.client
        caller = _Caller(
            user_id=str(identity.user_id),
            organization_id=str(identity.tenant_id or ""),
            is_admin=identity.is_admin,
            ip=client.ip,
            user_agent=(client.user_agent or "")[:512] or None,
            received_at=received_at,
            oldest=received_at - timedelta(days=self.settings.retention_days),
        )
        parsed: list[EventCreate] | None = None
        if body is not None:
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                parsed = _well_formed.decode(body).events
        check_nul = body is None or b"\\u0000" in body  # JSON writes a NUL character only so
        # Per item: its event id, its key when acceptable, else the reason it was rejected.
        outcomes: list[tuple[str | None, repo.EventKey | None, str | None]] = []
        rows: dict[repo.EventKey, dict[str, Any]] = {}
        for index, raw in enumerate(items):
            try:
                item = parsed[index] if parsed is not None else msgspec.convert(raw, EventCreate)
                if check_nul and contains_nul(raw):
                    raise ValueError("a text value contains the NUL character, which cannot be stored")
                row = self._row(caller, item)
            except (msgspec.ValidationError, ValueError) as exc:
                outcomes.append((_event_id_of(raw), None, str(exc)))
                continue
            key = repo.event_key(row)
            rows.setdefault(key, row)
            outcomes.append((row["event_id"], key, None))
        accepted = await self._store(list(rows.values()), caller)
        results, counts = [], {"accepted": 0, "duplicate": 0, "rejected": 0}
        for index, (event_id, stored_as, reason) in enumerate(outcomes):
            if stored_as is None:
                status: ItemStatus = "rejected"
            elif stored_as in accepted:
                status = "accepted"
                accepted.discard(stored_as)  # the same id again later in the batch is a duplicate
            else:
                status = "duplicate"
            counts[status] += 1
            results.append(EventResult(index=index, status=status, event_id=event_id, reason=reason))
        return BatchResult(counts["accepted"], counts["duplicate"], counts["rejected"], results)

    async def _store(self, rows: list[dict[str, Any]], caller: "_Caller") -> set[repo.EventKey]:
        """The new rows stored, committed, and the keys of those that were new.

        A batch without LLM usage is one statement on PostgreSQL (the events and their hourly
        counts), atomic on its own: it runs outside the session, with no transaction to begin and
        commit (the hottest write, ``POST /analytics/events``). LLM usage is also rolled up into
        the usage tables, in one transaction with the events."""
        if self.direct.on_postgresql and all(row["event_type"] != LLM_USAGE for row in rows):
            return await repo.insert_new_events_committed(self.direct, rows)
        async with self.sessions() as db:
            accepted = await repo.insert_new_events(db, rows)
            await self._roll_up(db, [row for row in rows if repo.event_key(row) in accepted], caller)
            await db.commit()
        return accepted

    async def ingest_one(self, item: EventCreate) -> EventResult:
        result = (await self.ingest([msgspec.to_builtins(item)])).results[0]
        if result.status == "rejected":
            raise EventRejected(result.reason or "The event was rejected.")
        return result

    def _row(self, caller: "_Caller", item: EventCreate) -> dict[str, Any]:
        if item.user_id is not None and item.user_id != caller.user_id and not caller.is_admin:
            raise ValueError("user_id: only administrators may record events of another user")
        occurred_at = caller.received_at
        if item.occurred_at is not None:
            occurred_at = min(item.occurred_at.astimezone(UTC), occurred_at)  # the future is clamped to now
            if occurred_at < caller.oldest:
                raise ValueError("occurred_at: older than the retention period")
        if item.event_type == LLM_USAGE:
            msgspec.convert(item.properties, LLMUsage)  # raises ValidationError naming the field
        return {
            "event_id": item.event_id.lower() if item.event_id else str(uuid.uuid4()),
            "user_id": item.user_id or caller.user_id,
            "session_id": item.session_id,
            "event_type": item.event_type,
            "properties": item.properties,
            "ip": caller.ip,
            "user_agent": caller.user_agent,
            "occurred_at": occurred_at,
            "received_at": caller.received_at,
        }

    async def _roll_up(self, db: AsyncSession, rows: list[dict[str, Any]], caller: "_Caller") -> None:
        """LLM usage into the per-user-per-day usage, the cost breakdown and (for the caller's own
        events) the caller's active organisation's usage (``event_hourly`` is kept by the insert itself)."""
        usage: dict[tuple[str, date], dict[str, Any]] = {}
        scoped = ScopedUsage()
        costs: dict[tuple[date, str, str, str], dict[str, Any]] = {}
        for row in rows:
            if row["event_type"] != LLM_USAGE:
                continue
            llm = msgspec.convert(row["properties"], LLMUsage)
            tokens, cost = llm.prompt_tokens + llm.completion_tokens, Decimal(str(llm.cost_usd))
            day = row["occurred_at"].date()
            daily = usage.setdefault((row["user_id"], day), usage_row(row["user_id"], day))
            daily["tokens_used"] += tokens
            daily["cost_usd"] += cost
            if caller.organization_id and row["user_id"] == caller.user_id:
                scoped_row = scoped.row(day, caller.organization_id, row["user_id"], "", "")
                scoped_row["tokens_used"] += tokens
                scoped_row["cost_usd"] += cost
            key = (day, row["user_id"], llm.service or "unknown", llm.model)
            entry = costs.setdefault(
                key,
                {"day": day, "user_id": key[1], "service": key[2], "model": key[3], "calls": 0, "tokens_used": 0}
                | {"cost_usd": Decimal(0)},
            )
            entry["calls"] += 1
            entry["tokens_used"] += tokens
            entry["cost_usd"] += cost
        await repo.upsert_add(db, repo.USAGE_DAILY, ["user_id", "day"], USAGE_COUNTERS, list(usage.values()))
        await repo.upsert_add(
            db,
            repo.COST_DAILY,
            ["day", "user_id", "service", "model"],
            ["calls", "tokens_used", "cost_usd"],
            list(costs.values()),
        )
        await scoped.save(db)


def _event_id_of(raw: Any) -> str | None:
    if isinstance(raw, dict):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return str(uuid.UUID(str(raw.get("event_id"))))
    return None


_well_formed = msgspec.json.Decoder(WellFormedBatch)


def event_read(event: Event) -> EventRead:
    return msgspec.convert(event, EventRead, from_attributes=True)
