"""Events between services: a publish/subscribe interface with Redis Streams and in-memory buses.

Delivery is at least once; handlers must be idempotent (the event ``id`` is the dedup key).
"""

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

logger = logging.getLogger("shared.events")


class Event(msgspec.Struct, frozen=True):
    id: str
    type: str
    source: str
    occurred_at: datetime
    data: dict[str, Any]


def new_event(event_type: str, source: str, data: dict[str, Any]) -> Event:
    return Event(str(uuid.uuid4()), event_type, source, datetime.now(UTC), data)


Handler = Callable[[Event], Awaitable[None]]


class EventBus(Protocol):
    async def publish(self, event: Event) -> None: ...
    def subscribe(self, event_type: str, group: str, handler: Handler) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class InMemoryBus:
    """One process, same outcomes: every group subscribed to a type gets each event once."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._pending: set[asyncio.Task[None]] = set()
        self.published: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.published.append(event)
        for handler in self._handlers.get(event.type, []):
            task = asyncio.create_task(self._deliver(handler, event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _deliver(self, handler: Handler, event: Event) -> None:
        try:
            await handler(event)
        except Exception:
            logger.exception("event handler failed", extra={"event_type": event.type, "event_id": event.id})

    def subscribe(self, event_type: str, group: str, handler: Handler) -> None:
        self._handlers[event_type].append(handler)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


class RedisStreamBus:
    """One stream per event type; one consumer group per subscribing service.

    A message whose handler failed, or whose consumer died before acknowledging it, is claimed
    again (by any consumer of the group) once it has been pending ``reclaim_after_seconds``.
    """

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        consumer: str | None = None,
        maxlen: int = 100_000,
        reclaim_after_seconds: float = 30.0,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.consumer = consumer or f"consumer-{uuid.uuid4().hex[:8]}"
        self.maxlen = maxlen
        self.reclaim_after_ms = max(1, int(reclaim_after_seconds * 1000))
        self._subscriptions: list[tuple[str, str, Handler]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def stream(self, event_type: str) -> str:
        return f"{self.namespace}:events:{event_type}"

    async def publish(self, event: Event) -> None:
        await self.redis.xadd(
            self.stream(event.type), {"event": _encoder.encode(event)}, maxlen=self.maxlen, approximate=True
        )

    def subscribe(self, event_type: str, group: str, handler: Handler) -> None:
        self._subscriptions.append((event_type, group, handler))

    async def start(self) -> None:
        self._closing = False
        for event_type, group, handler in self._subscriptions:
            self._tasks.append(asyncio.create_task(self._consume(self.stream(event_type), group, handler)))

    async def close(self) -> None:
        # The loops also stop on the flag: on Python 3.11 a cancellation that lands while redis-py
        # is inside asyncio.wait_for can be lost, and awaiting the task would then never end.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume(self, stream: str, group: str, handler: Handler) -> None:
        while not self._closing:
            try:
                await self._ensure_group(stream, group)
                await self._read_batches(stream, group, handler)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("event stream unavailable", extra={"stream": stream, "error": str(exc)})
                await asyncio.sleep(1.0)

    async def _read_batches(self, stream: str, group: str, handler: Handler) -> None:
        while not self._closing:
            await self._reclaim(stream, group, handler)
            replies: Any = await self.redis.xreadgroup(group, self.consumer, {stream: ">"}, count=100, block=1000)
            for _stream, messages in replies or []:
                for message_id, fields in messages:
                    await self._handle(stream, group, handler, message_id, fields)

    async def _reclaim(self, stream: str, group: str, handler: Handler) -> None:
        """Take over messages left unacknowledged too long: a failed handler, a dead consumer."""
        reply: Any = await self.redis.xautoclaim(
            stream, group, self.consumer, min_idle_time=self.reclaim_after_ms, start_id="0-0", count=100
        )
        claimed: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[1]
        for message_id, fields in claimed:
            if fields is None:  # trimmed from the stream meanwhile (Redis 6.2)
                await self.redis.xack(stream, group, message_id)
                continue
            await self._handle(stream, group, handler, message_id, fields)

    async def _handle(
        self, stream: str, group: str, handler: Handler, message_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        try:
            event = _decoder.decode(fields[b"event"])
            await handler(event)
        except Exception:
            logger.exception("event handler failed", extra={"stream": stream, "message_id": message_id})
            return  # left pending: reclaimed and retried after reclaim_after_seconds
        await self.redis.xack(stream, group, message_id)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)
