"""The Airtable gateway's own Redis use (read cache, upstream rate limits) kept working when Redis
is down or hung: every call has a short deadline, a breaker stops calling after a few failures
(then one probe at a time), and meanwhile the cache and the limits are per-process ones.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.exceptions import RedisError

from airtable_gateway.metrics import REDIS_DEGRADED
from shared.stores import KeyValueStore, MemoryStore

T = TypeVar("T")
logger = logging.getLogger("airtable_gateway")


class Breaker:
    """Closed → open after ``failures`` consecutive failures → one probe after ``reset_seconds``."""

    def __init__(self, failures: int = 2, reset_seconds: float = 2.0) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def degraded(self) -> bool:
        """Whether the last call failed (or the breaker is open): the fallback is in use."""
        return self.consecutive_failures > 0

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if time.monotonic() - self.opened_at >= self.reset_seconds and not self._probing:
            self._probing = True
            return True
        return False

    def release(self) -> None:
        self._probing = False

    def record_success(self) -> None:
        if self.opened_at is not None:
            logger.warning("redis answers again: shared cache and rate limits resumed")
            REDIS_DEGRADED.set(0)
        self.consecutive_failures = 0
        self.opened_at = None
        self._probing = False

    def record_failure(self, exc: BaseException) -> None:
        """A failed call (its own answer came from the fallback); the breaker opens after
        ``threshold`` in a row, so one slow answer on a busy event loop does not."""
        self.consecutive_failures += 1
        self._probing = False
        if self.opened_at is None and self.consecutive_failures >= self.threshold:
            logger.warning("redis unavailable: per-process cache and rate limits", extra={"error": type(exc).__name__})
            REDIS_DEGRADED.set(1)
        if self.opened_at is not None or self.consecutive_failures >= self.threshold:
            self.opened_at = time.monotonic()


class Guard:
    """Runs Redis calls under a deadline and the breaker; the fallback answers when they cannot."""

    def __init__(self, timeout: float, breaker: Breaker | None = None) -> None:
        self.timeout = timeout
        self.breaker = breaker or Breaker()

    async def call(self, primary: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        if self.breaker.allow():
            try:
                async with asyncio.timeout(self.timeout):
                    result = await primary()
            except (RedisError, OSError, TimeoutError) as exc:
                self.breaker.record_failure(exc)
            except BaseException:
                self.breaker.release()  # cancelled mid-call: the next call may probe instead
                raise
            else:
                self.breaker.record_success()
                return result
        return await fallback()


class ResilientStore:
    """A KeyValueStore on Redis while it answers, on a per-process MemoryStore while it does not."""

    def __init__(self, primary: KeyValueStore, guard: Guard) -> None:
        self.primary = primary
        self.local = MemoryStore()
        self.guard = guard

    @property
    def degraded(self) -> bool:
        return self.guard.breaker.degraded

    async def get(self, key: str) -> bytes | None:
        return await self.guard.call(lambda: self.primary.get(key), lambda: self.local.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self.guard.call(lambda: self.primary.get_many(keys), lambda: self.local.get_many(keys))

    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None:
        await self.guard.call(
            lambda: self.primary.set(key, value, ttl_seconds), lambda: self.local.set(key, value, ttl_seconds)
        )

    async def delete(self, key: str) -> None:
        await self.guard.call(lambda: self.primary.delete(key), lambda: self.local.delete(key))

    async def incr(self, key: str, ttl_seconds: float) -> int:
        return await self.guard.call(
            lambda: self.primary.incr(key, ttl_seconds), lambda: self.local.incr(key, ttl_seconds)
        )

    async def ttl(self, key: str) -> float | None:
        return await self.guard.call(lambda: self.primary.ttl(key), lambda: self.local.ttl(key))

    async def ping(self) -> None:
        await self.primary.ping()

    async def close(self) -> None:
        await self.local.close()
