"""Small key-value stores with expiry: Redis in production, a process-local dict when embedded.

Used for revocations, throttling counters and short-lived caches. Keys are namespaced so
several services (and test runs) can share one Redis.

Redis is an accelerator, not a single point of failure. Every call has a short timeout
(``REDIS_TIMEOUT_SECONDS``) and goes through a breaker: after ``REDIS_BREAKER_FAILURES`` failures
in a row Redis is not called for ``REDIS_BREAKER_RESET_SECONDS``, then the next call probes it.
The store a service gets (:class:`FallbackStore`) answers from a per-process :class:`MemoryStore`
meanwhile, so throttles and caches keep working per process; what must be shared or nothing
(revocations, idempotency keys) uses ``store.shared``, which raises :class:`StoreUnavailable`.
"""

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from litestar import Request, Response
from prometheus_client import Gauge
from purgatory import AsyncCircuitBreakerFactory, ContextChanged, Event
from purgatory.domain.model import OpenedState
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared.errors import Problem, problem_response
from shared.settings import ServiceSettings

logger = logging.getLogger("shared.stores")

STORE_DEGRADED = Gauge(
    "pyairtable_store_degraded",
    "1 while Redis is unavailable and per-process stores stand in for it",
    multiprocess_mode="livemax",  # a gateway's several workers: 1 while any of them is without Redis
)
STAND_IN_MAX_KEYS = 100_000
SWEEP_EXPIRED_AT_KEYS = 10_000
T = TypeVar("T")


class StoreUnavailable(RedisError):
    """Redis failed, timed out or is skipped by its open breaker: the shared store cannot answer."""


class KeyValueStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None: ...
    async def delete(self, *keys: str) -> None: ...
    async def incr(self, key: str, ttl_seconds: float) -> int: ...
    async def ttl(self, key: str) -> float | None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...

    @property
    def shared(self) -> "KeyValueStore":
        """The store every replica sees, without a per-process stand-in: it raises
        :class:`StoreUnavailable` rather than answer for this process alone."""
        ...


def create_redis(settings: ServiceSettings, timeout: float | None = None) -> Redis:
    timeout = settings.redis_timeout_seconds if timeout is None else timeout
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class RedisBreaker:
    """Consecutive Redis failures open it (purgatory's circuit breaker); a ``ResponseError`` is an
    answer from a live Redis and a cancelled call says nothing about Redis: neither counts."""

    CIRCUIT = "redis"

    def __init__(self, failures: int, reset_seconds: float) -> None:
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=failures,
            default_ttl=reset_seconds,
            exclude=[ResponseError, asyncio.CancelledError],
        )
        self._factory.add_listener(self._state_changed)
        self.is_open = False

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``operation()``'s result; StoreUnavailable when it fails or the breaker is open."""
        try:
            async with await self._factory.get_breaker(self.CIRCUIT):
                return await operation()
        except OpenedState:
            raise StoreUnavailable("Redis is skipped while its breaker is open") from None
        except ResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis failed: {type(exc).__name__}") from exc

    def _state_changed(self, _name: str, event_type: str, event: Event) -> None:
        if not isinstance(event, ContextChanged):
            return
        if event.state == "opened" and not self.is_open:
            self.is_open = True
            STORE_DEGRADED.set(1)
            logger.warning("redis unavailable: per-process throttles and caches in force, revocations unknowable")
        elif event.state == "closed" and self.is_open:
            self.is_open = False
            STORE_DEGRADED.set(0)
            logger.info("redis back: shared throttles, caches and revocations resumed")


class RedisStore:
    """Redis through its breaker: every failure is a :class:`StoreUnavailable`."""

    # INCR and (re)arm the expiry in one round trip, atomically.
    _INCR = "local n = redis.call('INCR', KEYS[1]); redis.call('PEXPIRE', KEYS[1], ARGV[1]); return n"

    def __init__(self, redis: Redis, namespace: str, breaker: RedisBreaker) -> None:
        self.redis = redis
        self.namespace = namespace
        self.breaker = breaker
        self._incr = redis.register_script(self._INCR)

    @property
    def shared(self) -> "RedisStore":
        return self

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    async def get(self, key: str) -> bytes | None:
        value: Any = await self.breaker.call(lambda: self.redis.get(self._key(key)))
        return cast(bytes | None, value)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: Any = await self.breaker.call(lambda: self.redis.mget([self._key(k) for k in keys]))
        return cast(list[bytes | None], values)

    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None:
        await self.breaker.call(lambda: self.redis.set(self._key(key), value, px=_millis(ttl_seconds)))

    async def delete(self, *keys: str) -> None:
        await self.breaker.call(lambda: self.redis.delete(*[self._key(k) for k in keys]))

    async def incr(self, key: str, ttl_seconds: float) -> int:
        count = await self.breaker.call(lambda: self._incr(keys=[self._key(key)], args=[_millis(ttl_seconds)]))
        return int(count)

    async def ttl(self, key: str) -> float | None:
        millis = int(await self.breaker.call(lambda: self.redis.pttl(self._key(key))))
        return millis / 1000 if millis >= 0 else None

    async def ping(self) -> None:
        await self.breaker.call(self.redis.ping)

    async def close(self) -> None:
        await self.redis.aclose()


def _millis(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class MemoryStore:
    """Process-local store for the embedded run mode, and Redis's stand-in while it is down; same
    semantics as RedisStore. Expired keys are swept once it holds many; a stand-in also has a
    ``max_keys`` cap (the oldest go first). The embedded store has none: it holds the revocations,
    which a flood of other keys must never push out."""

    def __init__(self, max_keys: int | None = None) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self.max_keys = max_keys
        self._sweep_at = SWEEP_EXPIRED_AT_KEYS

    @property
    def shared(self) -> "MemoryStore":
        return self  # one process is all there is

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item[0]

    def _put(self, key: str, data: bytes, ttl_seconds: float) -> None:
        self._data.pop(key, None)  # re-inserted last: the oldest keys stay first in line
        self._data[key] = (data, time.monotonic() + ttl_seconds)
        if len(self._data) > min(self._sweep_at, self.max_keys or self._sweep_at):
            self._make_room()

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._live(k) for k in keys]

    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None:
        self._put(key, value.encode() if isinstance(value, str) else value, ttl_seconds)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)

    async def incr(self, key: str, ttl_seconds: float) -> int:
        count = int(self._live(key) or 0) + 1
        self._put(key, str(count).encode(), ttl_seconds)
        return count

    async def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        return self._data[key][1] - time.monotonic()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()

    @property
    def size(self) -> int:
        """Keys held, expired ones included until they are next looked at."""
        return len(self._data)

    def _make_room(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires) in self._data.items() if expires <= now]:
            del self._data[key]
        if self.max_keys is not None and len(self._data) > self.max_keys:
            # Down to 90 %: the next tenth of the cap is set without another pass.
            for key in list(itertools.islice(self._data, len(self._data) - self.max_keys * 9 // 10)):
                del self._data[key]
        # Many live keys: the next sweep waits until there are twice as many (amortised O(1) a set).
        self._sweep_at = max(SWEEP_EXPIRED_AT_KEYS, 2 * len(self._data))


class FallbackStore:
    """Redis, shared by every replica; while it is unavailable a per-process MemoryStore answers
    instead, so throttles still limit (per process) and caches still cache. What the stand-in held
    is dropped once Redis answers again: shared state resumes as Redis kept it."""

    def __init__(self, shared: RedisStore, local: MemoryStore | None = None) -> None:
        self._shared = shared
        self.local = local or MemoryStore(max_keys=STAND_IN_MAX_KEYS)
        self._standing_in = False

    @property
    def shared(self) -> RedisStore:
        return self._shared

    async def _either(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await shared()
        except StoreUnavailable:
            self._standing_in = True
            return await local()
        if self._standing_in:
            self._standing_in = False
            await self.local.close()
        return result

    async def get(self, key: str) -> bytes | None:
        return await self._either(lambda: self._shared.get(key), lambda: self.local.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._either(lambda: self._shared.get_many(keys), lambda: self.local.get_many(keys))

    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None:
        await self._either(
            lambda: self._shared.set(key, value, ttl_seconds), lambda: self.local.set(key, value, ttl_seconds)
        )

    async def delete(self, *keys: str) -> None:
        await self._either(lambda: self._shared.delete(*keys), lambda: self.local.delete(*keys))

    async def incr(self, key: str, ttl_seconds: float) -> int:
        return await self._either(
            lambda: self._shared.incr(key, ttl_seconds), lambda: self.local.incr(key, ttl_seconds)
        )

    async def ttl(self, key: str) -> float | None:
        return await self._either(lambda: self._shared.ttl(key), lambda: self.local.ttl(key))

    async def ping(self) -> None:
        await self._shared.ping()

    async def close(self) -> None:
        await self._shared.close()


def create_store(settings: ServiceSettings, redis: Redis | None) -> KeyValueStore:
    if redis is None:
        return MemoryStore()
    breaker = RedisBreaker(settings.redis_breaker_failures, settings.redis_breaker_reset_seconds)
    return FallbackStore(RedisStore(redis, settings.redis_namespace, breaker))


def dependency_unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Redis down or too slow where nothing can stand in for it: a 503 the client may retry."""
    return problem_response(
        request,
        503,
        "A backing store is unavailable; try again shortly.",
        code="store-unavailable",
        headers={"Retry-After": "2"},
    )
