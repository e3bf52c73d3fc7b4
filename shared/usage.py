"""Request usage records: the gateway publishes them, the analytics service consumes them.

One record per proxied request. The gateway buffers records and publishes a whole flush as one
message (a list of records), so a busy gateway sends a few messages per second, not one per
request. Two transports: a Redis stream ``{namespace}:usage`` read by a consumer group (at least
once: a message is acknowledged after the consumer has committed it, and messages left pending
by a dead consumer are claimed again), and an in-memory channel for the embedded run mode.
"""

import asyncio
import collections
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

logger = logging.getLogger("shared.usage")

CONSUMER_GROUP = "analytics"
STREAM_MAXLEN = 100_000  # messages (each up to MESSAGE_RECORDS records), trimmed approximately
MESSAGE_RECORDS = 500


class UsageRecord(msgspec.Struct, frozen=True, array_like=True):
    """One proxied request as the gateway saw it."""

    user_id: str | None
    method: str
    route: str  # the gateway route (its prefix), e.g. "/api/v1/airtable"
    status: int
    latency_ms: float
    bytes_in: int
    bytes_out: int
    request_id: str
    at: float  # epoch seconds


class UsageMessage(msgspec.Struct, frozen=True):
    """A batch of records as delivered to the consumer; ``id`` is its dedup key."""

    id: str
    records: list[UsageRecord]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[UsageRecord])


def encode_records(records: Sequence[UsageRecord]) -> bytes:
    return _encoder.encode(records)


def decode_records(payload: bytes) -> list[UsageRecord]:
    return _decoder.decode(payload)


class UsagePublisher(Protocol):
    async def publish(self, records: Sequence[UsageRecord]) -> None: ...


class UsageConsumer(Protocol):
    async def read(self, count: int, block_seconds: float) -> list[UsageMessage]: ...
    async def ack(self, message_ids: Sequence[str]) -> None: ...


def usage_stream(namespace: str) -> str:
    return f"{namespace}:usage"


def _chunks(records: Sequence[UsageRecord]) -> list[Sequence[UsageRecord]]:
    return [records[i : i + MESSAGE_RECORDS] for i in range(0, len(records), MESSAGE_RECORDS)]


class RedisUsagePublisher:
    """Every message of one flush in one pipelined round trip."""

    def __init__(self, redis: Redis, namespace: str, maxlen: int = STREAM_MAXLEN) -> None:
        self.redis = redis
        self.stream = usage_stream(namespace)
        self.maxlen = maxlen

    async def publish(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in _chunks(records):
                pipe.xadd(self.stream, {"r": encode_records(chunk)}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()


class RedisUsageConsumer:
    """Reads the stream with a consumer group; messages pending longer than ``reclaim_after_seconds``
    (their consumer died before acknowledging) are claimed again first."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        consumer: str | None = None,
        group: str = CONSUMER_GROUP,
        reclaim_after_seconds: float = 30.0,
    ) -> None:
        self.redis = redis
        self.stream = usage_stream(namespace)
        self.group = group
        self.consumer = consumer or f"analytics-{uuid.uuid4().hex[:8]}"
        self.reclaim_after_ms = max(1, int(reclaim_after_seconds * 1000))
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(self, count: int, block_seconds: float) -> list[UsageMessage]:
        await self._ensure_group()
        reclaimed: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.reclaim_after_ms, start_id="0-0", count=count
        )
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = list(reclaimed[1])
        if not entries:
            replies: Any = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=max(1, int(block_seconds * 1000))
            )
            for _stream, messages in replies or []:
                entries.extend(messages)
        return await self._decode(entries)

    async def _decode(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> list[UsageMessage]:
        messages, unusable = [], []
        for raw_id, fields in entries:
            message_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                if fields is None:  # trimmed from the stream meanwhile
                    raise ValueError("trimmed")
                messages.append(UsageMessage(message_id, decode_records(fields[b"r"])))
            except (KeyError, ValueError, msgspec.DecodeError):
                logger.warning("unreadable usage message dropped", extra={"message_id": message_id})
                unusable.append(message_id)
        if unusable:
            await self.ack(unusable)
        return messages

    async def ack(self, message_ids: Sequence[str]) -> None:
        if message_ids:
            await self.redis.xack(self.stream, self.group, *message_ids)


class UsageChannelFull(Exception):
    """The in-memory channel holds as many messages as it may: the flush is dropped."""


class InMemoryUsageChannel:
    """Publisher and consumer in one process (embedded mode): a bounded queue of messages.

    At least once, as the stream: messages read but not acknowledged (their batch failed to
    commit) are delivered again by the next read."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._messages: collections.deque[UsageMessage] = collections.deque()
        self._unacknowledged: dict[str, UsageMessage] = {}
        self._capacity = capacity
        self._ready = asyncio.Event()

    async def publish(self, records: Sequence[UsageRecord]) -> None:
        chunks = _chunks(records)
        if len(self._messages) + len(chunks) > self._capacity:
            raise UsageChannelFull(f"{len(self._messages)} messages waiting")
        self._messages.extend(UsageMessage(uuid.uuid4().hex, list(chunk)) for chunk in chunks)
        self._ready.set()

    async def read(self, count: int, block_seconds: float) -> list[UsageMessage]:
        if self._unacknowledged:
            return list(self._unacknowledged.values())[:count]
        if not self._messages:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), block_seconds)
            except TimeoutError:
                return []
        batch: list[UsageMessage] = []
        while self._messages and len(batch) < count:
            batch.append(self._messages.popleft())
        self._unacknowledged.update((message.id, message) for message in batch)
        return batch

    async def ack(self, message_ids: Sequence[str]) -> None:
        for message_id in message_ids:
            self._unacknowledged.pop(message_id, None)
