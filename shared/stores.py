"""Small key-value stores with expiry: Redis in production, a process-local dict when embedded.

Used for revocations, throttling counters and short-lived caches. Keys are namespaced so
several services (and test runs) can share one Redis.
"""

import time
from collections.abc import Sequence
from typing import Any, Protocol, cast

from litestar import Request, Response
from redis.asyncio import Redis

from shared.errors import Problem, problem_response
from shared.settings import ServiceSettings


class KeyValueStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def incr(self, key: str, ttl_seconds: float) -> int: ...
    async def ttl(self, key: str) -> float | None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def create_redis(settings: ServiceSettings, timeout: float | None = None) -> Redis:
    timeout = settings.redis_timeout_seconds if timeout is None else timeout
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class RedisStore:
    # INCR and (re)arm the expiry in one round trip, atomically.
    _INCR = "local n = redis.call('INCR', KEYS[1]); redis.call('PEXPIRE', KEYS[1], ARGV[1]); return n"

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace
        self._incr = redis.register_script(self._INCR)

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    async def get(self, key: str) -> bytes | None:
        value: Any = await self.redis.get(self._key(key))
        return cast(bytes | None, value)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: Any = await self.redis.mget([self._key(k) for k in keys])
        return cast(list[bytes | None], values)

    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None:
        await self.redis.set(self._key(key), value, px=max(1, int(ttl_seconds * 1000)))

    async def delete(self, key: str) -> None:
        await self.redis.delete(self._key(key))

    async def incr(self, key: str, ttl_seconds: float) -> int:
        return int(await self._incr(keys=[self._key(key)], args=[max(1, int(ttl_seconds * 1000))]))

    async def ttl(self, key: str) -> float | None:
        millis = int(await self.redis.pttl(self._key(key)))
        return millis / 1000 if millis >= 0 else None

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


class MemoryStore:
    """Process-local store for the embedded run mode; same semantics as RedisStore."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item[0]

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._live(k) for k in keys]

    async def set(self, key: str, value: bytes | str, ttl_seconds: float) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._data[key] = (data, time.monotonic() + ttl_seconds)
        if len(self._data) > 10_000:
            self._evict_expired()

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, ttl_seconds: float) -> int:
        count = int(self._live(key) or 0) + 1
        self._data[key] = (str(count).encode(), time.monotonic() + ttl_seconds)
        return count

    async def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        return self._data[key][1] - time.monotonic()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()

    def _evict_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires) in self._data.items() if expires <= now]:
            del self._data[key]


def create_store(settings: ServiceSettings, redis: Redis | None) -> KeyValueStore:
    if redis is None:
        return MemoryStore()
    return RedisStore(redis, settings.redis_namespace)


def dependency_unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Redis down or too slow: a 503 the client may retry, never a 500."""
    return problem_response(
        request,
        503,
        "A backing store is unavailable; try again shortly.",
        code="store-unavailable",
        headers={"Retry-After": "2"},
    )
