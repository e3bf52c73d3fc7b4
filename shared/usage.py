"""Request usage records: the gateway publishes them, the analytics service consumes them.

One record per proxied request. The gateway buffers records and publishes a whole flush as one
message (a list of records), so a busy gateway sends a few messages per second, not one per
request. Two transports: a Redis stream ``{namespace}:usage`` read by a consumer group (at least
once: a message is acknowledged after the consumer has committed it, and messages left pending
by a dead consumer are claimed again), and an in-memory channel for the embedded run mode.

The stream stays short: the consumer trims what every group has acknowledged, and a flush that
would take the stream past ``STREAM_MAX_BYTES`` (analytics down for hours) is refused whole and
counted by the gateway, so no message a group has not read is ever trimmed (shared/streams.py).
When Redis comes back without the consumer group (restarted empty), the consumer creates it again.
"""

import asyncio
import collections
import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

import msgspec
from redis.asyncio import Redis

from shared.streams import Entry, GroupReader, append

logger = logging.getLogger("shared.usage")

CONSUMER_GROUP = "analytics"
# The memory the stream may take in Redis with messages not yet acknowledged. At 100 req/s (a
# message of ~10 records every 0.1 s, ~1.3 KB) that holds ~2.7 h of analytics downtime.
STREAM_MAX_BYTES = 128 * 1024 * 1024
MESSAGE_RECORDS = 500
TRIM_INTERVAL_SECONDS = 1.0
STREAM_LABEL = "usage"


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
    # Added later: records of older gateways decode without them (trailing fields with defaults).
    organization_id: str | None = None  # the caller's active organisation (claim ``tid``)
    key_id: str | None = None  # the API key the request came with, if any


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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def usage_stream(namespace: str) -> str:
    return f"{namespace}:usage"


def _chunks(records: Sequence[UsageRecord]) -> list[Sequence[UsageRecord]]:
    return [records[i : i + MESSAGE_RECORDS] for i in range(0, len(records), MESSAGE_RECORDS)]


class RedisUsagePublisher:
    """Every message of one flush in one round trip; a full stream refuses the flush whole
    (``shared.streams.StreamFull``)."""

    def __init__(self, redis: Redis, namespace: str, max_bytes: int = STREAM_MAX_BYTES) -> None:
        self.redis = redis
        self.stream = usage_stream(namespace)
        self.max_bytes = max_bytes

    async def publish(self, records: Sequence[UsageRecord]) -> None:
        payloads = [encode_records(chunk) for chunk in _chunks(records)]
        await append(self.redis, self.stream, "r", payloads, self.max_bytes, STREAM_LABEL)


class RedisUsageConsumer:
    """Reads the stream with a consumer group (:class:`shared.streams.GroupReader`); messages
    pending longer than ``reclaim_after_seconds`` (their consumer died before acknowledging) are
    claimed again first. After acknowledging, it trims what every group has acknowledged (at most
    once a ``TRIM_INTERVAL_SECONDS``)."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        consumer: str | None = None,
        group: str = CONSUMER_GROUP,
        reclaim_after_seconds: float = 30.0,
    ) -> None:
        self.reader = GroupReader(
            redis,
            usage_stream(namespace),
            group,
            consumer or f"analytics-{uuid.uuid4().hex[:8]}",
            STREAM_LABEL,
            reclaim_after_seconds,
            TRIM_INTERVAL_SECONDS,
        )

    async def read(self, count: int, block_seconds: float) -> list[UsageMessage]:
        """The next messages: those reclaimed, else new ones; none while the group is being
        created again after Redis lost it."""
        entries = await self.reader.reclaim(count) or await self.reader.read_new(count, block_seconds)
        return await self._decode(entries)

    async def _decode(self, entries: list[Entry]) -> list[UsageMessage]:
        messages, unusable = [], []
        for raw_id, fields in entries:
            message_id = _text(raw_id)
            try:
                messages.append(UsageMessage(message_id, decode_records(fields[b"r"])))
            except (KeyError, ValueError, msgspec.DecodeError):
                logger.warning("unreadable usage message dropped", extra={"message_id": message_id})
                unusable.append(message_id)
        if unusable:
            await self.ack(unusable)
        return messages

    async def ack(self, message_ids: Sequence[str]) -> None:
        if message_ids:
            await self.reader.ack(*message_ids)
            await self.reader.trim_when_due()


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
