"""The scheduler's reservations, in Redis (shared by replicas) and in memory (embedded mode, or
while Redis does not answer)."""

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from airtable_gateway.scheduler import (
    Limits,
    MemoryScheduler,
    Outcome,
    RedisScheduler,
    Reservation,
    ResilientScheduler,
    Scheduler,
)
from shared.stores import RedisBreaker
from tests.private_servers import PrivateRedis

# 223 ms apart per base; per token floor(22 * 0.9 / 11) = 1 slot per 100 ms bucket.
LIMITS = Limits(base_rate=5, token_rate=22, headroom=0.1)
TOKEN_RATE = 22
# One caller may hold 4 slots of a base not yet sent (4 * 223 ms fit in 1 s).
SHARED_LIMITS = Limits(base_rate=5, token_rate=22, headroom=0.1, share_seconds=1.0)


@pytest.fixture(params=["redis", "memory"])
async def make_scheduler(
    request: pytest.FixtureRequest, redis_url: str, redis_namespace: str
) -> AsyncIterator[Callable[[Limits], Scheduler]]:
    if request.param == "memory":
        yield MemoryScheduler
        return
    redis = Redis.from_url(redis_url)
    try:
        yield lambda limits: RedisScheduler(redis, redis_namespace, limits)
    finally:
        await redis.aclose()


@pytest.fixture
def scheduler(make_scheduler: Callable[[Limits], Scheduler]) -> Scheduler:
    return make_scheduler(LIMITS)


async def reserve(scheduler: Scheduler, base: str, token: str, max_wait: float, caller: str = "user1") -> Reservation:
    return await scheduler.reserve(base, token, caller, max_wait)


def test_limits_keep_headroom_below_airtables() -> None:
    assert LIMITS.base_interval_ms == 223
    assert Limits(5, 50, 0.1).bucket_capacity == 4  # 11 buckets touch a second: at most 44 < 50
    halves = Limits(5, 50, 0.1).divided(2)  # two replicas on their own while Redis is down
    assert (halves.base_interval_ms, halves.bucket_capacity) == (445, 2)


async def test_one_base_gets_evenly_spaced_slots(scheduler: Scheduler) -> None:
    slots = []
    for _ in range(6):
        granted, wait = await reserve(scheduler, "appA", "tok1", max_wait=10)
        assert granted == Outcome.GRANTED
        slots.append(time.time() + wait)
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert all(0.2 <= gap <= 0.25 for gap in gaps), gaps


async def test_a_slot_past_the_deadline_is_refused_and_not_taken(scheduler: Scheduler) -> None:
    for _ in range(3):
        await reserve(scheduler, "appA", "tok1", max_wait=10)
    refused, wait = await reserve(scheduler, "appA", "tok1", max_wait=0.3)
    assert refused == Outcome.DEADLINE
    assert 0.5 <= wait <= 0.8
    granted, again = await reserve(scheduler, "appA", "tok1", max_wait=10)
    assert granted == Outcome.GRANTED
    assert abs(again - wait) < 0.1  # the refused request left its slot free


async def test_bases_are_independent_but_share_the_tokens_limit(scheduler: Scheduler) -> None:
    started = time.time()
    slots = []
    for n in range(30):
        granted, wait = await reserve(scheduler, f"app{n}", "tok1", max_wait=10)
        assert granted == Outcome.GRANTED
        slots.append(time.time() + wait)
    # 30 bases at once on one token: 1 slot per 100 ms bucket, so about 3 s for all.
    slots.sort()
    most_in_a_second = max(sum(1 for s in slots[i:] if s < start + 1.0) for i, start in enumerate(slots))
    assert most_in_a_second <= TOKEN_RATE
    assert LIMITS.bucket_capacity == 1
    assert slots[-1] - started >= 2.8
    other_token = await reserve(scheduler, "app0", "tok2", max_wait=10)
    assert other_token.outcome == Outcome.GRANTED and other_token.wait < 0.5  # only app0's own spacing applies


async def test_a_pause_holds_every_slot_of_its_base(scheduler: Scheduler) -> None:
    await scheduler.pause("appA", 2.0)
    assert 1.8 <= await scheduler.paused_for("appA") <= 2.0
    assert await scheduler.paused_for("appB") == 0
    granted, wait = await reserve(scheduler, "appA", "tok1", max_wait=10)
    assert granted == Outcome.GRANTED and 1.8 <= wait <= 2.05
    refused, _ = await reserve(scheduler, "appA", "tok1", max_wait=1)
    assert refused == Outcome.DEADLINE
    granted, wait = await reserve(scheduler, "appB", "tok1", max_wait=10)
    assert granted == Outcome.GRANTED and wait < 0.2


async def test_a_read_asks_to_be_refused_for_the_whole_pause(scheduler: Scheduler) -> None:
    await scheduler.pause("appA", 2.0)
    refused = await scheduler.reserve("appA", "tok1", "user1", 10, refuse_if_paused=True)
    assert refused.outcome == Outcome.PAUSED
    assert 1.8 <= refused.wait <= 2.0  # the time left
    granted = await scheduler.reserve("appB", "tok1", "user1", 10, refuse_if_paused=True)
    assert granted.outcome == Outcome.GRANTED  # another base is not paused


async def test_one_caller_holds_at_most_their_share_of_a_base(make_scheduler: Callable[[Limits], Scheduler]) -> None:
    scheduler = make_scheduler(SHARED_LIMITS)
    assert SHARED_LIMITS.share == 4
    heavy = [await reserve(scheduler, "appA", "tok1", 30, caller="heavy") for _ in range(10)]
    # The first is sent at once; 4 more wait their turn; the rest are refused.
    assert [r.outcome for r in heavy] == [Outcome.GRANTED] * 5 + [Outcome.SHARE] * 5
    assert 0 < heavy[-1].wait <= 0.25  # until their next slot is sent
    other = await reserve(scheduler, "appA", "tok1", 30, caller="other")
    # Behind the heavy caller's 5 slots only, however many they asked for.
    assert other.outcome == Outcome.GRANTED and 5 * 0.2 <= other.wait <= 5 * 0.25
    elsewhere = await reserve(scheduler, "appB", "tok1", 30, caller="heavy")
    assert elsewhere.outcome == Outcome.GRANTED  # the share is per base


async def test_every_redis_key_expires(redis_url: str, redis_namespace: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        scheduler = RedisScheduler(redis, redis_namespace, LIMITS)
        for n in range(5):
            await reserve(scheduler, f"app{n}", "tok1", max_wait=10)
        await scheduler.pause("app0", 1)
        keys = [key async for key in redis.scan_iter(match=f"{redis_namespace}:*")]
        assert len(keys) >= 5 + 5 + 1 + 1  # slots and holders of 5 bases, the pause, the token's bucket(s)
        assert all([await redis.pttl(key) > 0 for key in keys])
    finally:
        await redis.aclose()


async def test_slots_stay_apart_when_redis_goes_and_comes_back_empty() -> None:
    """Redis granted slots, then fails: the process goes on after the last of them, not at once;
    Redis comes back empty: it goes on after the slots the process granted alone."""
    server = PrivateRedis().start()
    redis = Redis.from_url(server.url, socket_timeout=0.5)
    try:
        breaker = RedisBreaker(failures=1, reset_seconds=0.2)
        scheduler = ResilientScheduler(RedisScheduler(redis, "test", LIMITS), MemoryScheduler(LIMITS), breaker)
        slots = [time.time() + (await reserve(scheduler, "appA", "tok1", max_wait=30)).wait for _ in range(3)]
        server.kill()
        alone = [time.time() + (await reserve(scheduler, "appA", "tok1", max_wait=30)).wait for _ in range(3)]
        assert breaker.is_open
        server.start()
        await asyncio.sleep(0.25)  # the breaker lets a call probe Redis again
        again = [time.time() + (await reserve(scheduler, "appA", "tok1", max_wait=30)).wait for _ in range(3)]
        assert not breaker.is_open
        assert await redis.exists("test:airtable:slot:appA")  # granted by Redis again
    finally:
        await redis.aclose()
        server.stop()
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots + alone + again)]
    assert all(gap >= 0.2 for gap in gaps), gaps
