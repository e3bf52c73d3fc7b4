"""One usage record per proxied request, sent to the analytics service without waiting on it.

``record()`` only appends to a bounded in-process buffer; a background task publishes the buffer
every ``FLUSH_SECONDS`` (sooner once ``FLUSH_RECORDS`` are waiting) in one pipelined round trip,
with a short timeout. A full buffer or a failed flush (Redis down, hung or slow, or the stream full
because analytics is far behind: ``shared.streams.StreamFull``) drops records and counts them in
``pyairtable_gateway_usage_dropped_total``: a request is never slowed or failed.

Bytes: ``bytes_in`` is the request's ``Content-Length`` (0 for a chunked body); ``bytes_out`` is not
measured (0): the proxy streams the response and counting it would cost on every chunk.
"""

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from litestar.types import Scope
from prometheus_client import Counter

from gateway.config import GatewaySettings
from shared.periodic import BackgroundWorker
from shared.stores import create_redis
from shared.usage import RedisUsagePublisher, UsagePublisher, UsageRecord

logger = logging.getLogger("gateway.usage")

FLUSH_SECONDS = 0.1
FLUSH_RECORDS = 500
BUFFER_CAPACITY = 20_000
FLUSH_TIMEOUT_SECONDS = 0.5

DROPPED = Counter("pyairtable_gateway_usage_dropped", "Usage records dropped: buffer full or the flush failed")
SENT = Counter("pyairtable_gateway_usage_sent", "Usage records published to the analytics pipeline")


class UsageEmitter(BackgroundWorker):
    def __init__(
        self,
        publisher: UsagePublisher | None,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        flush_records: int = FLUSH_RECORDS,
        capacity: int = BUFFER_CAPACITY,
        timeout: float = FLUSH_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__("usage flusher")
        self.publisher = publisher
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.capacity = capacity
        self.timeout = timeout
        self.buffer: collections.deque[UsageRecord] = collections.deque()

    def record(
        self,
        user_id: str | None,
        method: str,
        route: str,
        status: int,
        elapsed: float,
        request_id: str,
        scope: Scope,
        organization_id: str | None = None,
        key_id: str | None = None,
    ) -> None:
        """Buffer one request's usage (``organization_id``: the caller's active organisation;
        ``key_id``: the API key it came with). Never raises, never waits."""
        if self.publisher is None:
            return
        if len(self.buffer) >= self.capacity:
            DROPPED.inc()
            return
        self.buffer.append(
            UsageRecord(
                user_id,
                method,
                route,
                status,
                round(elapsed * 1000, 3),
                _content_length(scope),
                0,
                request_id,
                time.time(),
                organization_id,
                key_id,
            )
        )
        if len(self.buffer) >= self.flush_records:
            self.wake()

    async def flush(self) -> None:
        if not self.buffer or self.publisher is None:
            return
        batch = list(self.buffer)
        self.buffer.clear()
        try:
            async with asyncio.timeout(self.timeout):
                await self.publisher.publish(batch)
        except asyncio.CancelledError:
            DROPPED.inc(len(batch))
            raise
        except Exception as exc:
            DROPPED.inc(len(batch))
            logger.warning("usage records dropped", extra={"count": len(batch), "error": type(exc).__name__})
        else:
            SENT.inc(len(batch))

    async def run(self) -> None:
        while not await self._stopped_within(self.flush_seconds):
            await self.flush()

    def start(self) -> None:
        if self.publisher is not None:
            super().start()

    async def close(self) -> None:
        """Stop the flusher and flush what is left."""
        await self.stop(grace_seconds=self.timeout * 4)
        await self.flush()


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


@contextlib.asynccontextmanager
async def usage_emitter(settings: GatewaySettings, publisher: UsagePublisher | None) -> AsyncIterator[UsageEmitter]:
    """The gateway's emitter: to ``publisher`` (embedded mode), else to the Redis stream when
    REDIS_URL is set, else nowhere."""
    redis = None
    if publisher is None and settings.redis_url:
        redis = create_redis(settings, timeout=FLUSH_TIMEOUT_SECONDS)
        publisher = RedisUsagePublisher(redis, settings.redis_namespace)
    emitter = UsageEmitter(publisher)
    emitter.start()
    try:
        yield emitter
    finally:
        await emitter.close()
        if redis is not None:
            await redis.aclose()
