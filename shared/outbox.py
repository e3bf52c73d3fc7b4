"""The transactional outbox: an event is written in the same transaction as the change it
announces, and a relay publishes it afterwards (at least once).

Several relays may run side by side: rows are claimed with ``FOR UPDATE SKIP LOCKED``.
"""

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from prometheus_client import Counter
from sqlalchemy import JSON, Column, Index, Integer, MetaData, String, Table, Uuid, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from shared.db import UTCDateTime, utcnow
from shared.events import Event, EventBus

logger = logging.getLogger("shared.outbox")
PENDING_FLAG = "outbox_pending"
PUBLISHED = Counter("pyairtable_outbox_published_total", "Events the outbox relay published", ["event_type"])
RELAY_FAILURES = Counter("pyairtable_outbox_relay_failures_total", "Outbox relay passes that failed (retried)")


def outbox_table(metadata: MetaData) -> Table:
    """The ``outbox`` table in a service's own metadata (so its migrations create it)."""
    return Table(
        "outbox",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("event_type", String(100), nullable=False),
        Column("source", String(50), nullable=False),
        Column("payload", JSON, nullable=False),
        Column("occurred_at", UTCDateTime, nullable=False),
        Column("published_at", UTCDateTime, nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
        Index("ix_outbox_unpublished", "published_at", "occurred_at"),
    )


async def add_event(session: AsyncSession, table: Table, event: Event) -> None:
    """Record ``event`` in the caller's transaction; the relay is woken when it commits."""
    await session.execute(
        table.insert().values(
            id=uuid.UUID(event.id),
            event_type=event.type,
            source=event.source,
            payload=event.data,
            occurred_at=event.occurred_at,
            attempts=0,
        )
    )
    session.info[PENDING_FLAG] = True


class OutboxRelay:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        table: Table,
        bus: EventBus,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.table = table
        self.bus = bus
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        session_class = sessionmaker.kw.get("sync_session_class", Session)
        sa_event.listen(session_class, "after_commit", self._after_commit)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(PENDING_FLAG, False):
            self._wakeup.set()

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished events; returns how many were sent."""
        table = self.table
        async with self.sessionmaker() as session, session.begin():
            rows = (
                await session.execute(
                    select(table)
                    .where(table.c.published_at.is_(None))
                    .order_by(table.c.occurred_at)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                await self.bus.publish(_event_from_row(row))
                PUBLISHED.labels(row.event_type).inc()
            if rows:
                await session.execute(
                    update(table)
                    .where(table.c.id.in_([row.id for row in rows]))
                    .values(published_at=utcnow(), attempts=table.c.attempts + 1)
                )
        return len(rows)

    async def run(self) -> None:
        while not self._stopping:
            try:
                while await self.publish_pending() == self.batch_size:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                RELAY_FAILURES.inc()
                # By type only: a database error's message may quote the event's data.
                logger.warning("outbox relay failed; will retry", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_seconds)
            self._wakeup.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Let the current batch finish (cancelling mid-query can wedge the connection)."""
        if self._task is not None:
            self._stopping = True
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        session_class = self.sessionmaker.kw.get("sync_session_class", Session)
        sa_event.remove(session_class, "after_commit", self._after_commit)


def _event_from_row(row: Any) -> Event:
    return Event(
        id=str(row.id),
        type=row.event_type,
        source=row.source,
        occurred_at=row.occurred_at,
        data=row.payload,
    )
