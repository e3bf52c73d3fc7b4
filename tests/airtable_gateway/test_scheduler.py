"""The scheduler's reservations, in Redis (shared by replicas) and in memory (embedded mode)."""

import itertools
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from airtable_gateway.scheduler import Limits, MemoryScheduler, RedisScheduler, Scheduler

# 223 ms apart per base; per token floor(22 * 0.9 / 11) = 1 slot per 100 ms bucket.
LIMITS = Limits(base_rate=5, token_rate=22, headroom=0.1)
TOKEN_RATE = 22


@pytest.fixture(params=["redis", "memory"])
async def scheduler(request: pytest.FixtureRequest, redis_url: str, redis_namespace: str) -> AsyncIterator[Scheduler]:
    if request.param == "memory":
        yield MemoryScheduler(LIMITS)
        return
    redis = Redis.from_url(redis_url)
    try:
        yield RedisScheduler(redis, redis_namespace, LIMITS)
    finally:
        await redis.aclose()


def test_limits_keep_headroom_below_airtables() -> None:
    assert LIMITS.base_interval_ms == 223
    assert Limits(5, 50, 0.1).bucket_capacity == 4  # 11 buckets touch a second: at most 44 < 50


async def test_one_base_gets_evenly_spaced_slots(scheduler: Scheduler) -> None:
    slots = []
    for _ in range(6):
        granted, wait = await scheduler.reserve("appA", "tok1", max_wait=10)
        assert granted
        slots.append(time.time() + wait)
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert all(0.2 <= gap <= 0.25 for gap in gaps), gaps


async def test_a_slot_past_the_deadline_is_refused_and_not_taken(scheduler: Scheduler) -> None:
    for _ in range(3):
        await scheduler.reserve("appA", "tok1", max_wait=10)
    granted, wait = await scheduler.reserve("appA", "tok1", max_wait=0.3)
    assert not granted
    assert 0.5 <= wait <= 0.8
    granted, again = await scheduler.reserve("appA", "tok1", max_wait=10)
    assert granted
    assert abs(again - wait) < 0.1  # the refused request left its slot free


async def test_bases_are_independent_but_share_the_tokens_limit(scheduler: Scheduler) -> None:
    started = time.time()
    slots = []
    for n in range(30):
        granted, wait = await scheduler.reserve(f"app{n}", "tok1", max_wait=10)
        assert granted
        slots.append(time.time() + wait)
    # 30 bases at once on one token: 1 slot per 100 ms bucket, so about 3 s for all.
    slots.sort()
    most_in_a_second = max(sum(1 for s in slots[i:] if s < start + 1.0) for i, start in enumerate(slots))
    assert most_in_a_second <= TOKEN_RATE
    assert LIMITS.bucket_capacity == 1
    assert slots[-1] - started >= 2.8
    other_token = await scheduler.reserve("app0", "tok2", max_wait=10)
    assert other_token[0] and other_token[1] < 0.5  # only app0's own spacing applies


async def test_a_pause_holds_every_slot_of_its_base(scheduler: Scheduler) -> None:
    await scheduler.pause("appA", 2.0)
    assert 1.8 <= await scheduler.paused_for("appA") <= 2.0
    assert await scheduler.paused_for("appB") == 0
    granted, wait = await scheduler.reserve("appA", "tok1", max_wait=10)
    assert granted and 1.8 <= wait <= 2.05
    refused, _ = await scheduler.reserve("appA", "tok1", max_wait=1)
    assert not refused
    granted, wait = await scheduler.reserve("appB", "tok1", max_wait=10)
    assert granted and wait < 0.2


async def test_every_redis_key_expires(redis_url: str, redis_namespace: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        scheduler = RedisScheduler(redis, redis_namespace, LIMITS)
        for n in range(5):
            await scheduler.reserve(f"app{n}", "tok1", max_wait=10)
        await scheduler.pause("app0", 1)
        keys = [key async for key in redis.scan_iter(match=f"{redis_namespace}:*")]
        assert len(keys) >= 5 + 1 + 1  # slots of 5 bases, the pause, the token's bucket(s)
        assert all([await redis.pttl(key) > 0 for key in keys])
    finally:
        await redis.aclose()
