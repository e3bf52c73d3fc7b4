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


class Slot:
    """When a granted slot is, on this process's clock: between ``earliest`` and ``latest``, since
    the scheduler's "now" lies somewhere within the call. A busy machine widens the window, never
    moves it, so comparisons of windows hold however long a call takes."""

    def __init__(self, reservation: Reservation, called: float, returned: float) -> None:
        self.reservation = reservation
        self.earliest = called + reservation.wait
        self.latest = returned + reservation.wait

    def could_be_apart(self, later: "Slot", low: float, high: float) -> bool:
        """Whether ``later`` may lie between ``low`` and ``high`` seconds after this one."""
        return later.latest - self.earliest >= low and later.earliest - self.latest <= high

    def at_least_apart(self, later: "Slot", low: float) -> bool:
        return later.latest - self.earliest >= low


async def slot(scheduler: Scheduler, base: str, token: str, max_wait: float, caller: str = "user1") -> Slot:
    called = time.time()
    reservation = await reserve(scheduler, base, token, max_wait, caller)
    return Slot(reservation, called, time.time())


def test_limits_keep_headroom_below_airtables() -> None:
    assert LIMITS.base_interval_ms == 223
    assert Limits(5, 50, 0.1).bucket_capacity == 4  # 11 buckets touch a second: at most 44 < 50
    halves = Limits(5, 50, 0.1).divided(2)  # two replicas on their own while Redis is down
    assert (halves.base_interval_ms, halves.bucket_capacity) == (445, 2)


async def test_one_base_gets_evenly_spaced_slots(scheduler: Scheduler) -> None:
    slots = [await slot(scheduler, "appA", "tok1", max_wait=10) for _ in range(6)]
    assert all(s.reservation.outcome == Outcome.GRANTED for s in slots)
    assert all(earlier.could_be_apart(later, 0.2, 0.25) for earlier, later in itertools.pairwise(slots))


async def test_a_slot_past_the_deadline_is_refused_and_not_taken(scheduler: Scheduler) -> None:
    taken = [await slot(scheduler, "appA", "tok1", max_wait=10) for _ in range(3)]
    refused = await slot(scheduler, "appA", "tok1", max_wait=0.3)
    granted = await slot(scheduler, "appA", "tok1", max_wait=10)
    assert refused.reservation.outcome == Outcome.DEADLINE
    assert taken[-1].could_be_apart(refused, 0.2, 0.25), "the slot it would have had: the next one"
    assert granted.reservation.outcome == Outcome.GRANTED
    assert taken[-1].could_be_apart(granted, 0.2, 0.25), "the refused request left its slot free"


async def test_bases_are_independent_but_share_the_tokens_limit(scheduler: Scheduler) -> None:
    slots = [await slot(scheduler, f"app{n}", "tok1", max_wait=10) for n in range(30)]
    assert all(s.reservation.outcome == Outcome.GRANTED for s in slots)
    # 30 bases at once on one token: 1 slot per 100 ms bucket (LIMITS.bucket_capacity), so the
    # last is at least 2.9 s after the first, and no second holds more than the token's rate.
    assert LIMITS.bucket_capacity == 1
    assert slots[0].at_least_apart(slots[-1], 2.8)
    by_time = sorted(slots, key=lambda s: s.latest)
    most_in_a_second = max(
        sum(1 for other in by_time[i:] if other.earliest < start.latest + 1.0) for i, start in enumerate(by_time)
    )
    assert most_in_a_second <= TOKEN_RATE + 2  # + the windows' blur at either end
    other_token = await reserve(scheduler, "app0", "tok2", max_wait=10)
    assert other_token.outcome == Outcome.GRANTED and other_token.wait <= LIMITS.base_interval_ms / 1000, (
        "only app0's own spacing applies"
    )


async def test_a_pause_holds_every_slot_of_its_base(scheduler: Scheduler) -> None:
    before = time.time()
    await scheduler.pause("appA", 2.0)
    paused_at = (before, time.time())  # the pause began somewhere in this window
    left = await scheduler.paused_for("appA")
    assert 0 < left <= 2.0 and time.time() + left >= paused_at[0] + 2.0 - 0.01
    assert await scheduler.paused_for("appB") == 0
    held = await slot(scheduler, "appA", "tok1", max_wait=10)
    assert held.reservation.outcome == Outcome.GRANTED
    # (a millisecond either side: the schedulers keep whole milliseconds)
    assert held.latest >= paused_at[0] + 2.0 - 0.01 and held.earliest <= paused_at[1] + 2.05, "the first slot after it"
    refused, _ = await reserve(scheduler, "appA", "tok1", max_wait=1)
    assert refused == Outcome.DEADLINE
    elsewhere = await reserve(scheduler, "appB", "tok1", max_wait=10)
    assert elsewhere.outcome == Outcome.GRANTED and elsewhere.wait < 1.0, "another base is not paused"


async def test_a_read_asks_to_be_refused_for_the_whole_pause(scheduler: Scheduler) -> None:
    before = time.time()
    await scheduler.pause("appA", 2.0)
    refused = await scheduler.reserve("appA", "tok1", "user1", 10, refuse_if_paused=True)
    assert refused.outcome == Outcome.PAUSED
    assert 0 < refused.wait <= 2.0 and time.time() + refused.wait >= before + 2.0 - 0.01  # the time left
    granted = await scheduler.reserve("appB", "tok1", "user1", 10, refuse_if_paused=True)
    assert granted.outcome == Outcome.GRANTED  # another base is not paused


async def test_one_caller_holds_at_most_their_share_of_a_base(make_scheduler: Callable[[Limits], Scheduler]) -> None:
    scheduler = make_scheduler(SHARED_LIMITS)
    assert SHARED_LIMITS.share == 4
    heavy = [await slot(scheduler, "appA", "tok1", 30, caller="heavy") for _ in range(10)]
    # The first is sent at once; 4 more wait their turn; the rest are refused.
    assert [s.reservation.outcome for s in heavy] == [Outcome.GRANTED] * 5 + [Outcome.SHARE] * 5
    assert heavy[-1].reservation.wait <= 0.25  # until their next slot is sent
    other = await slot(scheduler, "appA", "tok1", 30, caller="other")
    # Behind the heavy caller's 5 slots only, however many they asked for.
    assert other.reservation.outcome == Outcome.GRANTED
    assert heavy[0].could_be_apart(other, 5 * 0.2, 5 * 0.25)
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
        slots = [await slot(scheduler, "appA", "tok1", max_wait=30) for _ in range(3)]
        server.kill()
        alone = [await slot(scheduler, "appA", "tok1", max_wait=30) for _ in range(3)]
        assert breaker.is_open
        server.start()
        await asyncio.sleep(0.25)  # the breaker lets a call probe Redis again
        again = [await slot(scheduler, "appA", "tok1", max_wait=30) for _ in range(3)]
        assert not breaker.is_open
        assert await redis.exists("test:airtable:slot:appA")  # granted by Redis again
    finally:
        await redis.aclose()
        server.stop()
    assert all(earlier.at_least_apart(later, 0.2) for earlier, later in itertools.pairwise(slots + alone + again))
