"""The breaker in front of the Airtable gateway's Redis calls: a failed or hung call is answered by
the fallback; after 2 in a row Redis is left alone until one call probes it; every way a probe
ends resolves it."""

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError

from airtable_gateway.resilience import Breaker, Guard

RESET_SECONDS = 0.2


class Redis:
    """A stand-in for the Redis side of a call: answers, fails or hangs, and counts its calls."""

    def __init__(self) -> None:
        self.mode = "up"
        self.calls = 0

    async def call(self) -> str:
        self.calls += 1
        if self.mode == "down":
            raise RedisConnectionError("refused")
        if self.mode == "hung":
            await asyncio.sleep(3600)
        return "redis"


async def local() -> str:
    return "local"


def guard() -> Guard:
    return Guard(timeout=0.05, breaker=Breaker(failures=2, reset_seconds=RESET_SECONDS))


async def test_failures_open_the_breaker_and_a_probe_closes_it() -> None:
    redis, breaker_guard = Redis(), guard()
    redis.mode = "down"
    assert [await breaker_guard.call(redis.call, local) for _ in range(4)] == ["local"] * 4
    assert redis.calls == 2  # open after 2: the next calls do not reach Redis
    assert breaker_guard.breaker.degraded

    redis.mode = "up"
    await asyncio.sleep(RESET_SECONDS)
    assert await breaker_guard.call(redis.call, local) == "redis"  # the probe
    assert not breaker_guard.breaker.degraded
    assert await breaker_guard.call(redis.call, local) == "redis"


async def test_a_hung_call_is_answered_by_the_fallback() -> None:
    redis, breaker_guard = Redis(), guard()
    redis.mode = "hung"
    assert await asyncio.wait_for(breaker_guard.call(redis.call, local), timeout=5) == "local"
    assert breaker_guard.breaker.degraded


async def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    redis, breaker_guard = Redis(), guard()
    redis.mode = "down"
    for _ in range(2):
        await breaker_guard.call(redis.call, local)
    await asyncio.sleep(RESET_SECONDS)

    redis.mode = "hung"
    probe = asyncio.create_task(breaker_guard.call(redis.call, local))
    await asyncio.sleep(0.01)
    probe.cancel()  # e.g. the client went away mid-request
    await asyncio.gather(probe, return_exceptions=True)

    redis.mode, calls = "up", redis.calls
    assert await breaker_guard.call(redis.call, local) == "redis"
    assert redis.calls == calls + 1
