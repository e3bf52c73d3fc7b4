"""The transactional outbox: an event is written in the same transaction as the change it
announces, and a relay publishes it afterwards (at least once).

Several relays may run side by side: rows are claimed with ``FOR UPDATE SKIP LOCKED``.
"""

import logging
import uuid
from typing import Any, ClassVar

from prometheus_client import Counter
from sqlalchemy import JSON, Column, Index, Integer, MetaData, String, Table, Uuid, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import UTCDateTime, utcnow, wake_after_commit
from shared.events import Event, EventBus
from shared.periodic import PeriodicTask
from shared.tracing import outbox_payload, publishing, split_outbox_payload

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


async def add_event(session: AsyncSession, table: Table, *events: Event) -> None:
    """Record ``events`` in the caller's transaction, in one INSERT; the relay is woken when it commits."""
    rows = [
        {
            "id": uuid.UUID(event.id),
            "event_type": event.type,
            "source": event.source,
            "payload": outbox_payload(event),
            "occurred_at": event.occurred_at,
            "attempts": 0,
        }
        for event in events
    ]
    await session.execute(table.insert().values(rows))
    session.info[PENDING_FLAG] = True


class TableRelay:
    """Passes on what transactions recorded in ``table`` (an outbox): at once when started, then
    whenever a transaction that set ``pending_flag`` commits, and every ``poll_seconds``."""

    name: ClassVar[str]
    pending_flag: ClassVar[str]

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], table: Table, poll_seconds: float) -> None:
        self.sessionmaker = sessionmaker
        self.engine: AsyncEngine = sessionmaker.kw["bind"]
        self.table = table
        self._loop = PeriodicTask(self.name, self._relay_all, poll_seconds, first_run_delay_seconds=0)
        self._stop_listening = wake_after_commit(sessionmaker, self.pending_flag, self._loop.wake)

    async def _relay_all(self) -> None:
        """Everything due, unit after unit (a subclass's)."""
        raise NotImplementedError

    def start(self) -> None:
        self._loop.start()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Let the current unit finish: cancelling mid-query can wedge the connection, and mid-send
        can send twice."""
        await self._loop.stop(grace_seconds)
        self._stop_listening()


class OutboxRelay(TableRelay):
    name = "outbox relay"
    pending_flag = PENDING_FLAG

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        table: Table,
        bus: EventBus,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        super().__init__(sessionmaker, table, poll_seconds)
        self.bus = bus
        self.batch_size = batch_size

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished events, oldest first; returns how many were sent.

        The batch is marked published and read back in one statement, then sent: a failed send
        rolls the mark back, so every event is sent at least once."""
        table = self.table
        due = (
            select(table.c.id)
            .where(table.c.published_at.is_(None))
            .order_by(table.c.occurred_at)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        )
        async with self.engine.begin() as connection:  # Core: no ORM session needed to move rows
            rows = (
                await connection.execute(
                    update(table)
                    .where(table.c.id.in_(due.scalar_subquery()))
                    .values(published_at=utcnow(), attempts=table.c.attempts + 1)
                    .returning(*table.c)
                )
            ).all()
            for row in sorted(rows, key=lambda row: row.occurred_at):  # RETURNING keeps no order
                event = _event_from_row(row)
                with publishing(event):
                    await self.bus.publish(event)
                PUBLISHED.labels(row.event_type).inc()
        return len(rows)

    async def _relay_all(self) -> None:
        """Batch after batch until the outbox is empty. A failure is logged by its type only (a
        database error's message may quote the event's data) and retried at the next wake-up."""
        try:
            while await self.publish_pending() == self.batch_size:
                pass
        except Exception:
            RELAY_FAILURES.inc()
            raise


def _event_from_row(row: Any) -> Event:
    data, trace = split_outbox_payload(row.payload)
    return Event(
        id=str(row.id),
        type=row.event_type,
        source=row.source,
        occurred_at=row.occurred_at,
        data=data,
        trace=trace,
    )
