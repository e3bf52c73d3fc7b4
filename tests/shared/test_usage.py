"""Usage records over a Redis stream (consumer group, ack, reclaim) and the in-memory channel."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared.usage import (
    MESSAGE_RECORDS,
    InMemoryUsageChannel,
    RedisUsageConsumer,
    RedisUsagePublisher,
    UsageChannelFull,
    UsageRecord,
    usage_stream,
)


def records(count: int, user_id: str | None = "u-1") -> list[UsageRecord]:
    return [
        UsageRecord(user_id, "GET", "/api/v1/airtable", 200, 1.5, 10, 0, uuid.uuid4().hex, time.time())
        for _ in range(count)
    ]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


async def test_a_flush_is_one_message_per_500_records_and_reads_back_intact(redis: Redis, redis_namespace: str) -> None:
    publisher = RedisUsagePublisher(redis, redis_namespace)
    consumer = RedisUsageConsumer(redis, redis_namespace, consumer="c1")
    sent = records(MESSAGE_RECORDS + 1)

    await consumer.read(10, 0.01)  # creates the group at the stream's start
    await publisher.publish(sent)
    await publisher.publish([])

    assert await redis.xlen(usage_stream(redis_namespace)) == 2
    messages = await consumer.read(10, 1.0)
    assert [len(m.records) for m in messages] == [MESSAGE_RECORDS, 1]
    assert [r for m in messages for r in m.records] == sent


async def test_unacknowledged_messages_are_claimed_again_and_acknowledged_ones_are_not(
    redis: Redis, redis_namespace: str
) -> None:
    publisher = RedisUsagePublisher(redis, redis_namespace)
    dying = RedisUsageConsumer(redis, redis_namespace, consumer="dying", reclaim_after_seconds=0.2)
    survivor = RedisUsageConsumer(redis, redis_namespace, consumer="survivor", reclaim_after_seconds=0.2)
    await dying.read(10, 0.01)
    await publisher.publish(records(3))
    taken = await dying.read(10, 1.0)  # ... and never acknowledged
    assert len(taken) == 1

    assert await survivor.read(10, 0.05) == []  # not idle long enough yet
    await asyncio.sleep(0.3)
    reclaimed = await survivor.read(10, 0.05)
    assert [m.id for m in reclaimed] == [taken[0].id]
    await survivor.ack([m.id for m in reclaimed])
    await asyncio.sleep(0.3)
    assert await survivor.read(10, 0.05) == []


async def test_an_unreadable_message_is_acknowledged_and_skipped(redis: Redis, redis_namespace: str) -> None:
    consumer = RedisUsageConsumer(redis, redis_namespace, consumer="c1")
    await consumer.read(10, 0.01)
    await redis.xadd(usage_stream(redis_namespace), {"r": b"not msgpack records"})
    await RedisUsagePublisher(redis, redis_namespace).publish(records(1))

    messages = await consumer.read(10, 1.0)

    assert len(messages) == 1
    pending = await redis.xpending(usage_stream(redis_namespace), "analytics")
    assert pending["pending"] == 1  # the good one, until the caller acknowledges it


async def test_the_in_memory_channel_delivers_in_order_again_until_acknowledged_and_refuses_beyond_capacity() -> None:
    channel = InMemoryUsageChannel(capacity=2)
    assert await channel.read(10, 0.01) == []
    for _ in range(2):
        await channel.publish(records(1))
    with pytest.raises(UsageChannelFull):
        await channel.publish(records(1))

    first = await channel.read(1, 0.01)
    again = await channel.read(10, 0.01)  # not acknowledged: its batch failed
    assert [m.id for m in again] == [m.id for m in first]
    await channel.ack([m.id for m in first])
    rest = await channel.read(10, 0.01)
    assert len(rest) == 1
    assert rest[0].id != first[0].id
    await channel.ack([rest[0].id])

    waiter = asyncio.create_task(channel.read(10, 5.0))
    await asyncio.sleep(0.01)
    await channel.publish(records(2))
    assert [len(m.records) for m in await waiter] == [2]
