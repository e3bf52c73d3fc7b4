"""Upstream rate limits shared by every replica: requests wait in line for a slot.

Each request to Airtable reserves a send time (a *slot*) before it is sent:

* per base, slots are spaced evenly (GCRA with no burst): one every ``1 / (rate * (1 - headroom))``
  seconds, so any one-second window holds at most ``rate`` requests even with some jitter;
* per token, slots fall into 100 ms buckets of ``floor(token_rate * (1 - headroom) / 11)``
  requests each (a one-second window touches at most 11 buckets: never more than ``token_rate``
  in any second, whatever the bases);
* while a base is paused after a 429, no slot falls before the end of the pause.

The reservation is one atomic Lua script in Redis (its clock, so replicas agree), or the same
arithmetic in process when there is no Redis (embedded mode). A reservation that would wait
longer than the caller's deadline is refused without taking a slot.
"""

import math
import random
import time
from typing import Any, Protocol

from redis.asyncio import Redis

BUCKET_MS = 100
MAX_BUCKET_STEPS = 200

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base_interval, bucket_cap, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bucket_ms, steps, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0'))
local bucket = math.floor(slot / bucket_ms)
local count = tonumber(redis.call('GET', prefix .. bucket) or '0')
local step = 0
while count >= bucket_cap do
  step = step + 1
  if step > steps then return {-1, slot - now + bucket_ms} end
  bucket = bucket + 1
  slot = math.max(slot, bucket * bucket_ms)
  count = tonumber(redis.call('GET', prefix .. bucket) or '0')
end
local wait = slot - now
if wait > max_wait then return {-1, wait} end
redis.call('SET', KEYS[1], slot + base_interval, 'PX', wait + base_interval + 1000)
redis.call('INCR', prefix .. bucket)
redis.call('PEXPIRE', prefix .. bucket, wait + 2 * bucket_ms + 1000)
return {1, wait}
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
local untl = now + ms
if untl > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], untl, 'PX', ms + 1000)
end
return ms
"""

_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') - now)
"""


class Limits:
    """The per-base interval and per-token bucket capacity, in the scheduler's units."""

    def __init__(self, base_rate: float, token_rate: float, headroom: float) -> None:
        self.base_interval_ms = math.ceil(1000 / (base_rate * (1 - headroom)))
        buckets_per_second = 1000 // BUCKET_MS + 1
        self.bucket_capacity = max(1, math.floor(token_rate * (1 - headroom) / buckets_per_second))


class Scheduler(Protocol):
    async def reserve(self, base: str, token_id: str, max_wait: float) -> tuple[bool, float]:
        """(True, seconds to wait before sending), or (False, the wait) when that would exceed
        ``max_wait``: then no slot is taken."""
        ...

    async def pause(self, base: str, seconds: float) -> None:
        """No request to ``base`` before ``seconds`` from now (an upstream 429)."""
        ...

    async def paused_for(self, base: str) -> float:
        """Seconds left of the base's pause (0 when it is not paused)."""
        ...


def jittered(seconds: float) -> float:
    """A pause a little longer than asked, so replicas and retries do not resume in step."""
    return seconds * (1 + random.uniform(0, 0.1))  # noqa: S311 (not a secret)


class RedisScheduler:
    def __init__(self, redis: Redis, namespace: str, limits: Limits) -> None:
        self.namespace = namespace
        self.limits = limits
        self._reserve = redis.register_script(_RESERVE)
        self._pause = redis.register_script(_PAUSE)
        self._paused_for = redis.register_script(_PAUSED_FOR)

    def _keys(self, base: str) -> tuple[str, str]:
        return f"{self.namespace}:airtable:slot:{base}", f"{self.namespace}:airtable:pause:{base}"

    async def reserve(self, base: str, token_id: str, max_wait: float) -> tuple[bool, float]:
        slot_key, pause_key = self._keys(base)
        args: list[str | int] = [
            self.limits.base_interval_ms,
            self.limits.bucket_capacity,
            int(max_wait * 1000),
            BUCKET_MS,
            MAX_BUCKET_STEPS,
            f"{self.namespace}:airtable:token:{token_id}:",
        ]
        result: Any = await self._reserve(keys=[slot_key, pause_key], args=args)
        ok, wait_ms = int(result[0]), int(result[1])
        return ok == 1, wait_ms / 1000

    async def pause(self, base: str, seconds: float) -> None:
        await self._pause(keys=[self._keys(base)[1]], args=[max(1, int(seconds * 1000))])

    async def paused_for(self, base: str) -> float:
        return int(await self._paused_for(keys=[self._keys(base)[1]])) / 1000


class MemoryScheduler:
    """The same reservations for one process (embedded mode)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._next_slot: dict[str, int] = {}
        self._paused_until: dict[str, int] = {}
        self._buckets: dict[tuple[str, int], int] = {}

    async def reserve(self, base: str, token_id: str, max_wait: float) -> tuple[bool, float]:
        now = _now_ms()
        slot = max(now, self._next_slot.get(base, 0), self._paused_until.get(base, 0))
        bucket = slot // BUCKET_MS
        for _ in range(MAX_BUCKET_STEPS):
            if self._buckets.get((token_id, bucket), 0) < self.limits.bucket_capacity:
                break
            bucket += 1
            slot = max(slot, bucket * BUCKET_MS)
        else:
            return False, (slot - now) / 1000
        if slot - now > max_wait * 1000:
            return False, (slot - now) / 1000
        self._next_slot[base] = slot + self.limits.base_interval_ms
        self._buckets[(token_id, bucket)] = self._buckets.get((token_id, bucket), 0) + 1
        self._forget_past(now)
        return True, (slot - now) / 1000

    async def pause(self, base: str, seconds: float) -> None:
        until = _now_ms() + int(seconds * 1000)
        self._paused_until[base] = max(until, self._paused_until.get(base, 0))

    async def paused_for(self, base: str) -> float:
        return max(0, self._paused_until.get(base, 0) - _now_ms()) / 1000

    def _forget_past(self, now: int) -> None:
        if len(self._buckets) > 1000:
            current = now // BUCKET_MS
            self._buckets = {key: n for key, n in self._buckets.items() if key[1] >= current}


def _now_ms() -> int:
    return int(time.time() * 1000)
