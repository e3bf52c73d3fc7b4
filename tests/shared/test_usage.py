"""Usage records over a Redis stream (consumer group, ack, reclaim, trimming, a bounded stream,
a group Redis lost) and the in-memory channel."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.streams import StreamFull
from shared.usage import (
    MESSAGE_RECORDS,
    InMemoryUsageChannel,
    RedisUsageConsumer,
    RedisUsagePublisher,
    UsageChannelFull,
    UsageMessage,
    UsageRecord,
    usage_stream,
)
from tests.conftest import eventually
from tests.private_servers import private_redis


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


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


async def read_all(consumer: RedisUsageConsumer) -> list[str]:
    """Read and acknowledge everything there is; the ids read."""
    ids: list[str] = []
    while messages := await consumer.read(100, 0.05):
        ids.extend(m.id for m in messages)
        await consumer.ack([m.id for m in messages])
    return ids


async def test_acknowledged_messages_are_trimmed_and_those_a_group_has_not_acknowledged_are_kept(
    redis: Redis, redis_namespace: str
) -> None:
    stream = usage_stream(redis_namespace)
    publisher = RedisUsagePublisher(redis, redis_namespace)
    analytics = RedisUsageConsumer(redis, redis_namespace, consumer="a")
    audit = RedisUsageConsumer(redis, redis_namespace, consumer="b", group="audit")
    await analytics.read(10, 0.01)
    await audit.read(10, 0.01)
    for _ in range(10):
        await publisher.publish(records(1))

    audit_has = await audit.read(4, 0.5)  # the second group is behind: 4 read, none acknowledged
    assert len(await read_all(analytics)) == 10
    assert await redis.xlen(stream) == 10  # nothing trimmed: "audit" still needs all ten

    await audit.ack([m.id for m in audit_has[:3]])
    analytics.reader._trimmed_at = 0.0  # the next acknowledgement trims (at most once a second otherwise)
    await publisher.publish(records(1))
    assert len(await read_all(analytics)) == 1
    assert await redis.xlen(stream) == 8  # the three both groups acknowledged went, the rest stay

    rest = await audit.read(100, 0.5)  # every message audit had not read is still there
    assert len(rest) == 7
    pending = await redis.xpending_range(stream, "audit", min="-", max="+", count=100)
    assert pending[0]["message_id"].decode() == audit_has[3].id
    audit.reader._trimmed_at = 0.0
    await audit.ack([audit_has[3].id, *(m.id for m in rest)])
    assert await redis.xlen(stream) == 1  # all acknowledged by all: only the last delivered stays


async def test_a_full_stream_refuses_a_flush_whole_counts_it_and_trims_nothing_unread(
    redis: Redis, redis_namespace: str
) -> None:
    stream = usage_stream(redis_namespace)
    publisher = RedisUsagePublisher(redis, redis_namespace)
    consumer = RedisUsageConsumer(redis, redis_namespace, consumer="c1")
    await consumer.read(10, 0.01)
    first, second = records(MESSAGE_RECORDS), records(MESSAGE_RECORDS)  # ~55 KB each
    await publisher.publish(first)
    await publisher.publish(second)
    publisher.max_bytes = int(await redis.memory_usage(stream) or 0) + 10_000  # no room for another such
    refused_before = counter("pyairtable_stream_refused", stream="usage")

    with pytest.raises(StreamFull):
        await publisher.publish(records(MESSAGE_RECORDS + 1))  # two messages: refused together

    assert counter("pyairtable_stream_refused", stream="usage") == refused_before + 2
    assert await redis.xlen(stream) == 2  # nothing appended, nothing the group has not read trimmed
    delivered = await consumer.read(10, 0.5)
    assert [m.records for m in delivered] == [first, second]
    await consumer.ack([m.id for m in delivered])  # acknowledged, so trimmed: room again
    third = records(MESSAGE_RECORDS)
    await publisher.publish(third)
    assert [m.records for m in await consumer.read(10, 0.5)] == [third]


async def test_a_message_deleted_while_pending_is_acknowledged_as_lost_not_silently(
    redis: Redis, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = usage_stream(redis_namespace)
    dying = RedisUsageConsumer(redis, redis_namespace, consumer="dying", reclaim_after_seconds=0.1)
    survivor = RedisUsageConsumer(redis, redis_namespace, consumer="survivor", reclaim_after_seconds=0.1)
    await dying.read(10, 0.01)
    await RedisUsagePublisher(redis, redis_namespace).publish(records(1))
    [taken] = await dying.read(10, 0.5)
    await redis.xdel(stream, taken.id)  # an operator's XDEL / XTRIM while it was pending
    lost_before = counter("pyairtable_stream_lost", stream="usage", group="analytics")
    await asyncio.sleep(0.2)

    assert await survivor.read(10, 0.05) == []

    assert counter("pyairtable_stream_lost", stream="usage", group="analytics") == lost_before + 1
    assert any(r.levelname == "ERROR" and "lost" in r.getMessage() for r in caplog.records)
    assert (await redis.xpending(stream, "analytics"))["pending"] == 0


async def test_the_consumer_creates_its_group_again_when_redis_restarts_empty() -> None:
    with private_redis() as server:
        client = Redis.from_url(server.url, socket_timeout=2)
        publisher = RedisUsagePublisher(client, "fault")
        consumer = RedisUsageConsumer(client, "fault", consumer="c1")
        await consumer.read(10, 0.01)
        await publisher.publish(records(1))
        assert len(await read_all(consumer)) == 1
        recreated_before = counter("pyairtable_stream_groups_recreated", stream="usage", group="analytics")

        server.kill()
        with pytest.raises(RedisError):
            await consumer.read(10, 0.01)
        server.start()  # empty: no stream, no group
        await publisher.publish(records(2))  # the gateway's next flush makes the stream, without a group

        [message] = await eventually(lambda: read_when_redis_answers(consumer), "usage read again after the restart")
        assert len(message.records) == 2  # what was published before the group was back is read too
        await consumer.ack([message.id])
        assert counter("pyairtable_stream_groups_recreated", stream="usage", group="analytics") == recreated_before + 1
        await client.aclose()


async def test_the_consumer_reads_on_after_redis_hangs_and_resumes() -> None:
    with private_redis() as server:
        client = Redis.from_url(server.url, socket_timeout=0.5)
        publisher = RedisUsagePublisher(client, "fault")
        consumer = RedisUsageConsumer(client, "fault", consumer="c1")
        await consumer.read(10, 0.01)

        server.hang()  # SIGSTOP: connections stay open, nothing answers
        with pytest.raises(RedisError):
            await consumer.read(10, 0.1)
        server.resume()
        await eventually(lambda: publish_when_redis_answers(publisher, records(3)), "a flush after the hang")

        [message] = await eventually(lambda: read_when_redis_answers(consumer), "usage read again after the hang")
        assert len(message.records) == 3
        await client.aclose()


async def publish_when_redis_answers(publisher: RedisUsagePublisher, batch: list[UsageRecord]) -> bool:
    with contextlib.suppress(RedisError):
        await publisher.publish(batch)
        return True
    return False


async def read_when_redis_answers(consumer: RedisUsageConsumer) -> list[UsageMessage]:
    with contextlib.suppress(RedisError):
        return await consumer.read(10, 0.1)
    return []
