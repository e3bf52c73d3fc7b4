"""Events between services: a publish/subscribe interface with Redis Streams and in-memory buses.

Delivery is at least once. A handler that changes a database applies the event through
:func:`idempotent`, which records the event ``id`` in the service's ``processed_events`` table in
the same transaction as the change, so a redelivered event is applied once. A handler that keeps
failing is retried ``max_attempts`` times, then its message moves to the dead-letter stream
``{namespace}:events:{type}:dead`` (in memory: ``InMemoryBus.dead_letters``; the Redis ones are
listed, replayed and dropped with ``shared.dead_letters``). A service declares what it consumes in
an :class:`EventConsumer`; its processed ids are forgotten after ``EVENT_DEDUP_RETENTION_DAYS``.

A Redis stream keeps only what some group has not acknowledged: consumers trim the rest, and a
publish that would take a stream past ``STREAM_MAX_BYTES`` of unacknowledged events is refused
(``shared.streams.StreamFull``; the outbox keeps the event and publishes it later) rather than
trimming events a group has not read. When Redis comes back without a stream's consumer group
(restarted empty), the consumer creates the group again and goes on (shared/streams.py).
"""

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Column, Index, MetaData, String, Table, Uuid, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import UTCDateTime, insert_or_ignore, utcnow
from shared.periodic import PeriodicTask
from shared.streams import GroupReader, append
from shared.tracing import consuming, event_trace_context

logger = logging.getLogger("shared.events")

HANDLED = Counter(
    "pyairtable_events_handled_total",
    "Event deliveries by outcome: handled (the handler returned; duplicate ones included), duplicate"
    " (already processed, skipped), failed (the handler raised), dead_lettered",
    ["event_type", "group", "outcome"],
)
LAG = Gauge(
    "pyairtable_events_consumer_lag",
    "Messages of the stream not yet delivered to the consumer group",
    ["event_type", "group"],
)
PENDING = Gauge(
    "pyairtable_events_consumer_pending",
    "Messages delivered to the consumer group but not yet acknowledged",
    ["event_type", "group"],
)
DEFAULT_MAX_ATTEMPTS = 5
# The memory a type's stream may take with events not yet acknowledged (~150,000 events of ~400 bytes).
STREAM_MAX_BYTES = 64 * 1024 * 1024
DEAD_LETTER_MAXLEN = 100_000
LAG_REFRESH_SECONDS = 5.0
PRUNE_BATCH_SIZE = 1000
MAX_REMEMBERED_ERRORS = 10_000


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    type: str
    source: str
    occurred_at: datetime
    data: dict[str, Any]
    trace: dict[str, str] | None = None  # W3C trace context (shared/tracing.py); absent when tracing is off


def new_event(event_type: str, source: str, data: dict[str, Any]) -> Event:
    return Event(str(uuid.uuid4()), event_type, source, datetime.now(UTC), data, event_trace_context())


Handler = Callable[[Event], Awaitable[None]]


def event_stream(namespace: str, event_type: str) -> str:
    return f"{namespace}:events:{event_type}"


def dead_letter_stream(namespace: str, event_type: str) -> str:
    return f"{event_stream(namespace, event_type)}:dead"


class EventBus(Protocol):
    async def publish(self, event: Event) -> None: ...
    def subscribe(self, event_type: str, group: str, handler: Handler) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


# -- idempotent handlers ---------------------------------------------------------------------------


def processed_events_table(metadata: MetaData) -> Table:
    """The ``processed_events`` table in a consuming service's own metadata."""
    return Table(
        "processed_events",
        metadata,
        Column("event_id", Uuid, primary_key=True),
        Column("event_type", String(100), nullable=False),
        Column("processed_at", UTCDateTime, nullable=False),
        Index("ix_processed_events_processed_at", "processed_at"),  # pruning finds the old ids by it
    )


async def claim_event(session: AsyncSession, table: Table, event: Event) -> bool:
    """Record ``event`` as processed in the caller's transaction; False if it already was.

    On PostgreSQL a concurrent claim of the same id waits for the first transaction: if that
    one commits, this one sees the conflict and skips; if it rolls back, this one proceeds.
    """
    return await insert_or_ignore(
        session, table, {"event_id": uuid.UUID(event.id), "event_type": event.type, "processed_at": utcnow()}
    )


async def forget_processed_events(
    session: AsyncSession, table: Table, before: datetime, limit: int | None = None
) -> int:
    """Drop the ids of events processed before ``before`` (long past any redelivery), at most
    ``limit`` of them; how many."""
    old = select(table.c.event_id).where(table.c.processed_at < before).limit(limit)
    result = await session.execute(delete(table).where(table.c.event_id.in_(old)).returning(table.c.event_id))
    return len(result.all())


async def prune_processed_events(
    sessionmaker: async_sessionmaker[AsyncSession], table: Table, before: datetime, batch_size: int = PRUNE_BATCH_SIZE
) -> int:
    """Forget the ids processed before ``before`` in batches, each a short transaction of its own
    (no long lock on a big table); how many in all."""
    total = 0
    while True:
        async with sessionmaker() as session, session.begin():
            deleted = await forget_processed_events(session, table, before, batch_size)
        total += deleted
        if deleted < batch_size:
            return total


Apply = Callable[[AsyncSession, Event], Awaitable[None]]


def idempotent(sessionmaker: async_sessionmaker[AsyncSession], table: Table, group: str, apply: Apply) -> Handler:
    """A handler that applies each event once: its effect and its id commit together."""

    async def handle(event: Event) -> None:
        async with sessionmaker() as session, session.begin():
            if not await claim_event(session, table, event):
                HANDLED.labels(event.type, group, "duplicate").inc()
                return
            await apply(session, event)

    return handle


@dataclass(frozen=True)
class EventConsumer:
    """What a service consumes: its consumer group, the event types, and its ``processed_events``
    table. Given to ``create_service_app`` (the table is pruned while the service runs) and to
    ``run_service_cli`` (the ``dead-letters`` and ``prune-processed-events`` commands)."""

    group: str
    event_types: tuple[str, ...]
    processed_events: Table

    def subscribe(self, bus: "EventBus", sessionmaker: async_sessionmaker[AsyncSession], apply: Apply) -> None:
        """Apply every event of ``event_types`` once, through :func:`idempotent`."""
        handler = consuming(self.group, idempotent(sessionmaker, self.processed_events, self.group, apply))
        for event_type in self.event_types:
            bus.subscribe(event_type, self.group, handler)


def processed_events_pruner(
    sessionmaker: async_sessionmaker[AsyncSession], table: Table, retention: timedelta, interval_seconds: float
) -> PeriodicTask:
    """Forgets processed event ids older than ``retention``, every ``interval_seconds``."""

    async def prune() -> None:
        forgotten = await prune_processed_events(sessionmaker, table, utcnow() - retention)
        if forgotten:
            logger.info("processed event ids pruned", extra={"forgotten": forgotten})

    return PeriodicTask("pruning processed event ids", prune, interval_seconds)


# -- in memory -------------------------------------------------------------------------------------


class DeadLetter(msgspec.Struct, frozen=True):
    group: str
    event: Event
    attempts: int
    error: str


class InMemoryBus:
    """One process, same outcomes: every group subscribed to a type gets each event once; a
    failing handler is retried ``max_attempts`` times, then the event is dead-lettered."""

    def __init__(self, max_attempts: int = DEFAULT_MAX_ATTEMPTS, retry_delay_seconds: float = 0.2) -> None:
        self.max_attempts = max(1, max_attempts)
        self.retry_delay_seconds = retry_delay_seconds
        self._handlers: dict[str, list[tuple[str, Handler]]] = defaultdict(list)
        self._pending: set[asyncio.Task[None]] = set()
        self.published: list[Event] = []
        self.dead_letters: list[DeadLetter] = []

    async def publish(self, event: Event) -> None:
        self.published.append(event)
        for group, handler in self._handlers.get(event.type, []):
            task = asyncio.create_task(self._deliver(group, handler, event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _deliver(self, group: str, handler: Handler, event: Event) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await handler(event)
            except Exception as exc:
                HANDLED.labels(event.type, group, "failed").inc()
                logger.warning(
                    "event handler failed",
                    extra={"event_type": event.type, "event_id": event.id, "group": group, "attempt": attempt},
                    exc_info=True,
                )
                if attempt == self.max_attempts:
                    self.dead_letters.append(DeadLetter(group, event, attempt, f"{type(exc).__name__}: {exc}"))
                    HANDLED.labels(event.type, group, "dead_lettered").inc()
                    logger.error("event dead-lettered", extra={"event_type": event.type, "event_id": event.id})
                    return
                await asyncio.sleep(self.retry_delay_seconds * attempt)
            else:
                HANDLED.labels(event.type, group, "handled").inc()
                return

    def subscribe(self, event_type: str, group: str, handler: Handler) -> None:
        self._handlers[event_type].append((group, handler))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


# -- Redis Streams ---------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


class RedisStreamBus:
    """One stream per event type; one consumer group per subscribing service.

    A message whose handler failed, or whose consumer died before acknowledging it, is claimed
    again (by any consumer of the group) once it has been pending ``reclaim_after_seconds``.
    A message delivered more than ``max_attempts`` times, or one that cannot be decoded, is moved
    to ``{namespace}:events:{type}:dead`` and acknowledged. Every ``LAG_REFRESH_SECONDS`` a consumer
    measures its group's lag and trims what every group of the stream has acknowledged.
    """

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        consumer: str | None = None,
        max_bytes: int = STREAM_MAX_BYTES,
        reclaim_after_seconds: float = 30.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.consumer = consumer or f"consumer-{uuid.uuid4().hex[:8]}"
        self.max_bytes = max_bytes
        self.reclaim_after_seconds = reclaim_after_seconds
        self.max_attempts = max(1, max_attempts)
        self._subscriptions: list[tuple[str, str, Handler]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # The last error of each message whose handler failed here, for its dead letter's reason.
        self._last_errors: dict[bytes, str] = {}

    def stream(self, event_type: str) -> str:
        return event_stream(self.namespace, event_type)

    def dead_letter_stream(self, event_type: str) -> str:
        return dead_letter_stream(self.namespace, event_type)

    async def publish(self, event: Event) -> None:
        """Raises ``StreamFull`` (a RedisError) when the type's consumers are far behind."""
        payload = _encoder.encode(event)
        await append(self.redis, self.stream(event.type), "event", [payload], self.max_bytes, event.type)

    def subscribe(self, event_type: str, group: str, handler: Handler) -> None:
        self._subscriptions.append((event_type, group, handler))

    async def start(self) -> None:
        self._closing = False
        for event_type, group, handler in self._subscriptions:
            self._tasks.append(asyncio.create_task(self._consume(event_type, group, handler)))

    async def close(self) -> None:
        # The loops also stop on the flag: on Python 3.11 a cancellation that lands while redis-py
        # is inside asyncio.wait_for can be lost, and awaiting the task would then never end.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _consume(self, event_type: str, group: str, handler: Handler) -> None:
        """Read until closed. The reader creates the group when it is missing, so a group Redis
        lost (NOGROUP: restarted empty) is back at once, and after an outage at the next try."""
        reader = GroupReader(
            self.redis,
            self.stream(event_type),
            group,
            self.consumer,
            event_type,
            self.reclaim_after_seconds,
            trim_interval_seconds=LAG_REFRESH_SECONDS,
        )
        while not self._closing:
            try:
                await self._read_batches(reader, handler)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("event stream unavailable", extra={"stream": reader.stream, "error": str(exc)})
                await asyncio.sleep(1.0)

    async def _read_batches(self, reader: GroupReader, handler: Handler) -> None:
        lag_measured = 0.0
        while not self._closing:
            await self._reclaim(reader, handler)
            for message_id, fields in await reader.read_new(100, 1.0):
                await self._handle(reader, handler, message_id, fields)
            if time.monotonic() - lag_measured >= LAG_REFRESH_SECONDS:
                lag_measured = time.monotonic()
                await self._measure_lag(reader)
                await reader.trim_when_due()

    async def _reclaim(self, reader: GroupReader, handler: Handler) -> None:
        """Take over messages left unacknowledged too long: a failed handler, a dead consumer."""
        claimed = await reader.reclaim(100)
        if not claimed:
            return
        deliveries = await reader.delivery_counts(claimed[0][0], claimed[-1][0])
        for message_id, fields in claimed:
            attempts = deliveries.get(message_id, 1)
            if attempts > self.max_attempts:
                last_error = self._last_errors.pop(message_id, None)
                reason = f"too many attempts; last error: {last_error}" if last_error else "too many attempts"
                await self._dead_letter(reader, message_id, fields, attempts - 1, reason)
                continue
            await self._handle(reader, handler, message_id, fields)

    async def _handle(
        self, reader: GroupReader, handler: Handler, message_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        event_type, group, stream = reader.label, reader.group, reader.stream
        try:
            event = _decoder.decode(fields[b"event"])
        except (KeyError, msgspec.DecodeError) as exc:
            # Retrying cannot fix a message that does not decode.
            await self._dead_letter(reader, message_id, fields, 1, f"undecodable: {exc}")
            return
        try:
            await handler(event)
        except Exception as exc:
            if len(self._last_errors) >= MAX_REMEMBERED_ERRORS:
                self._last_errors.clear()  # those left by messages another consumer finished
            self._last_errors[message_id] = f"{type(exc).__name__}: {exc}"[:500]
            HANDLED.labels(event_type, group, "failed").inc()
            logger.exception(
                "event handler failed", extra={"stream": stream, "message_id": message_id, "event_id": event.id}
            )
            return  # left pending: reclaimed and retried after reclaim_after_seconds
        HANDLED.labels(event_type, group, "handled").inc()
        self._last_errors.pop(message_id, None)
        await reader.ack(message_id)

    async def _dead_letter(
        self, reader: GroupReader, message_id: bytes, fields: dict[bytes, bytes], attempts: int, reason: str
    ) -> None:
        """Move the message to the dead-letter stream and acknowledge it, in one transaction."""
        event_type, group = reader.label, reader.group
        entry: dict[Any, Any] = {
            **fields,
            b"group": group.encode(),
            b"message_id": message_id,
            b"attempts": str(attempts).encode(),
            b"reason": reason.encode(),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter_stream(event_type), entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            pipe.xack(reader.stream, group, message_id)
            await pipe.execute()
        HANDLED.labels(event_type, group, "dead_lettered").inc()
        logger.error(
            "event dead-lettered",
            extra={"stream": reader.stream, "group": group, "message_id": message_id, "reason": reason},
        )

    async def _measure_lag(self, reader: GroupReader) -> None:
        event_type, group = reader.label, reader.group
        groups: Any = await self.redis.xinfo_groups(reader.stream)
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == group:
                LAG.labels(event_type, group).set(float(info.get("lag") or 0))
                PENDING.labels(event_type, group).set(float(info.get("pending") or 0))


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)
