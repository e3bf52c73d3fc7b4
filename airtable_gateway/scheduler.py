"""Upstream rate limits shared by every replica: requests wait in line for a slot.

Each request to Airtable reserves a send time (a *slot*) before it is sent:

* per base, slots are spaced evenly (GCRA with no burst): one every ``1 / (rate * (1 - headroom))``
  seconds, so any one-second window holds at most ``rate`` requests even with some jitter;
* per token, slots fall into 100 ms buckets of ``floor(token_rate * (1 - headroom) / 11)``
  requests each (a one-second window touches at most 11 buckets: never more than ``token_rate``
  in any second, whatever the bases);
* while a base is paused after a 429, no slot falls before the end of the pause; a read asks to be
  refused instead (it gets 503 at once rather than waiting out the pause);
* fair share: one caller (a platform user) holds at most ``share`` slots of a base not yet sent,
  so whoever comes next waits behind at most that many of theirs, never behind a heavy user's
  whole backlog; the caller's surplus is refused.

The reservation is one atomic Lua script in Redis (its clock, so replicas agree), or the same
arithmetic in process when there is no Redis (embedded mode) or while Redis does not answer. A
reservation that would wait longer than the caller's deadline is refused without taking a slot.
"""

import enum
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol, TypeVar

from redis.asyncio import Redis

from shared.stores import RedisBreaker, StoreUnavailable

T = TypeVar("T")
BUCKET_MS = 100
MAX_BUCKET_STEPS = 200

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base_interval, bucket_cap, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bucket_ms, steps, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local share, refuse_paused, not_before = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local paused_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if refuse_paused == 1 and paused_until > now then return {-3, paused_until - now} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= share then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {-2, tonumber(first[2]) - now}
end
local slot = math.max(now + not_before, tonumber(redis.call('GET', KEYS[1]) or '0'), paused_until)
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
redis.call('ZADD', KEYS[3], slot, slot)
redis.call('PEXPIRE', KEYS[3], wait + 1000)
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


class Outcome(enum.IntEnum):
    GRANTED = 1
    DEADLINE = -1  # the slot would come after the caller's deadline
    SHARE = -2  # the caller already holds their share of the base's queue
    PAUSED = -3  # the base is paused and the caller asked not to wait for it


class Reservation(NamedTuple):
    """What a reservation gave: the wait before sending, or why none was taken and how long until
    asking again could succeed."""

    outcome: Outcome
    wait: float


class Limits:
    """The per-base interval, per-token bucket capacity and per-caller share, in the scheduler's units."""

    def __init__(self, base_rate: float, token_rate: float, headroom: float, share_seconds: float = 1e9) -> None:
        self.base_rate, self.token_rate = base_rate, token_rate
        self.headroom, self.share_seconds = headroom, share_seconds
        self.base_interval_ms = math.ceil(1000 / (base_rate * (1 - headroom)))
        buckets_per_second = 1000 // BUCKET_MS + 1
        self.bucket_capacity = max(1, math.floor(token_rate * (1 - headroom) / buckets_per_second))
        self.share = max(1, min(10**6, math.floor(share_seconds * 1000 / self.base_interval_ms)))

    def divided(self, replicas: int) -> "Limits":
        """Each of ``replicas`` processes' part of these limits, for when they cannot coordinate."""
        return Limits(self.base_rate / replicas, self.token_rate / replicas, self.headroom, self.share_seconds)


class Scheduler(Protocol):
    async def reserve(
        self, base: str, token_id: str, caller: str, max_wait: float, *, refuse_if_paused: bool = False
    ) -> Reservation:
        """A slot, or a refusal that takes none: past ``max_wait``, past the caller's share, or
        (with ``refuse_if_paused``) while the base is paused."""
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

    async def reserve(
        self,
        base: str,
        token_id: str,
        caller: str,
        max_wait: float,
        *,
        refuse_if_paused: bool = False,
        not_before: float = 0.0,
    ) -> Reservation:
        """As Scheduler.reserve; no slot earlier than ``not_before`` seconds from now."""
        slot_key, pause_key = self._keys(base)
        held_key = f"{self.namespace}:airtable:held:{base}:{caller}"
        args: list[str | int] = [
            self.limits.base_interval_ms,
            self.limits.bucket_capacity,
            int(max_wait * 1000),
            BUCKET_MS,
            MAX_BUCKET_STEPS,
            f"{self.namespace}:airtable:token:{token_id}:",
            self.limits.share,
            int(refuse_if_paused),
            int(not_before * 1000),
        ]
        result: Any = await self._reserve(keys=[slot_key, pause_key, held_key], args=args)
        return Reservation(Outcome(int(result[0])), int(result[1]) / 1000)

    async def pause(self, base: str, seconds: float) -> None:
        await self._pause(keys=[self._keys(base)[1]], args=[max(1, int(seconds * 1000))])

    async def paused_for(self, base: str) -> float:
        return int(await self._paused_for(keys=[self._keys(base)[1]])) / 1000


class MemoryScheduler:
    """The same reservations for one process (embedded mode, or while Redis does not answer)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._next_slot: dict[str, int] = {}
        self._paused_until: dict[str, int] = {}
        self._buckets: dict[tuple[str, int], int] = {}
        self._held: dict[tuple[str, str], deque[int]] = {}

    async def reserve(
        self, base: str, token_id: str, caller: str, max_wait: float, *, refuse_if_paused: bool = False
    ) -> Reservation:
        now = _now_ms()
        paused_until = self._paused_until.get(base, 0)
        if refuse_if_paused and paused_until > now:
            return Reservation(Outcome.PAUSED, (paused_until - now) / 1000)
        held = self._held.setdefault((base, caller), deque())
        while held and held[0] <= now:
            held.popleft()
        if len(held) >= self.limits.share:
            return Reservation(Outcome.SHARE, (held[0] - now) / 1000)
        slot = max(now, self._next_slot.get(base, 0), paused_until)
        bucket = slot // BUCKET_MS
        for _ in range(MAX_BUCKET_STEPS):
            if self._buckets.get((token_id, bucket), 0) < self.limits.bucket_capacity:
                break
            bucket += 1
            slot = max(slot, bucket * BUCKET_MS)
        else:
            return Reservation(Outcome.DEADLINE, (slot - now) / 1000)
        if slot - now > max_wait * 1000:
            return Reservation(Outcome.DEADLINE, (slot - now) / 1000)
        self._next_slot[base] = slot + self.limits.base_interval_ms
        self._buckets[(token_id, bucket)] = self._buckets.get((token_id, bucket), 0) + 1
        held.append(slot)
        self._forget_past(now)
        return Reservation(Outcome.GRANTED, (slot - now) / 1000)

    def observe(self, base: str, caller: str, wait: float) -> None:
        """A slot the shared scheduler granted ``wait`` seconds from now: were this process to
        schedule alone, it would not send at the same time."""
        slot = _now_ms() + int(wait * 1000)
        self._next_slot[base] = max(self._next_slot.get(base, 0), slot + self.limits.base_interval_ms)
        self._held.setdefault((base, caller), deque()).append(slot)

    def next_free(self, base: str) -> float:
        """Seconds from now until the base's next slot this process knows to be free."""
        return max(0, self._next_slot.get(base, 0) - _now_ms()) / 1000

    async def pause(self, base: str, seconds: float) -> None:
        until = _now_ms() + int(seconds * 1000)
        self._paused_until[base] = max(until, self._paused_until.get(base, 0))

    async def paused_for(self, base: str) -> float:
        return max(0, self._paused_until.get(base, 0) - _now_ms()) / 1000

    def _forget_past(self, now: int) -> None:
        if len(self._buckets) > 1000:
            current = now // BUCKET_MS
            self._buckets = {key: n for key, n in self._buckets.items() if key[1] >= current}
        if len(self._held) > 1000:
            self._held = {key: slots for key, slots in self._held.items() if slots and slots[-1] > now}


class ResilientScheduler:
    """The shared (Redis) scheduler while Redis answers; per-process limits while it does not
    (the kernel's Redis breaker decides: a failed call, or none while it is open).

    The process keeps its own account of the slots and pauses it learns of, in both directions:
    a slot granted alone is never granted again by Redis (which did not hear of it, or restarted
    empty), and one Redis granted is never granted alone, so a Redis call that merely times out
    (a busy event loop, a blip) does not double a base's rate."""

    def __init__(self, shared: RedisScheduler, local: MemoryScheduler, breaker: RedisBreaker) -> None:
        self.shared = shared
        self.local = local
        self.breaker = breaker

    async def _either(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self.breaker.call(shared)
        except StoreUnavailable:
            return await local()

    async def reserve(
        self, base: str, token_id: str, caller: str, max_wait: float, *, refuse_if_paused: bool = False
    ) -> Reservation:
        local_pause = await self.local.paused_for(base)
        if local_pause > 0:
            if refuse_if_paused:
                return Reservation(Outcome.PAUSED, local_pause)
            # Redis may have lost (or never had) a pause this process saw: tell it again first.
            await self._either(lambda: self.shared.pause(base, local_pause), _nothing)

        async def shared() -> Reservation:
            # Never before a slot this process granted alone (while Redis did not answer).
            reservation = await self.shared.reserve(
                base,
                token_id,
                caller,
                max_wait,
                refuse_if_paused=refuse_if_paused,
                not_before=self.local.next_free(base),
            )
            if reservation.outcome == Outcome.GRANTED:
                self.local.observe(base, caller, reservation.wait)
            return reservation

        async def local() -> Reservation:
            return await self.local.reserve(base, token_id, caller, max_wait, refuse_if_paused=refuse_if_paused)

        return await self._either(shared, local)

    async def pause(self, base: str, seconds: float) -> None:
        await self.local.pause(base, seconds)
        await self._either(lambda: self.shared.pause(base, seconds), _nothing)

    async def paused_for(self, base: str) -> float:
        local = await self.local.paused_for(base)
        shared = await self._either(lambda: self.shared.paused_for(base), _zero)
        return max(local, shared)


async def _nothing() -> None:
    return None


async def _zero() -> float:
    return 0.0


def _now_ms() -> int:
    return int(time.time() * 1000)
