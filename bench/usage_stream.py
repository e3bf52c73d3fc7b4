"""The usage stream's memory in Redis: a day of 100 req/s, and the most an analytics outage can make
it hold.

    python -m bench.usage_stream [--hours 6] [--requests-per-second 100] [--json PATH]

Runs on a private ``redis-server`` (tests/private_servers.py; the machine's Redis is never touched).

1. Steady state: the gateway's flushes (one message every 0.1 s, ``rps / 10`` records each, as
   gateway/usage.py sends them) for ``--hours`` of traffic, compressed in time (as fast as Redis
   takes them), while the analytics consumer reads and acknowledges what it read (as the service does
   after each commit). The stream's length and ``MEMORY USAGE`` are sampled every simulated
   ``SAMPLE_MINUTES`` (the most is reported) and at the end. ~10 s per simulated hour on one core:
   the default 6 h stays within a minute; ``--hours 24`` is the full day.
2. Outage: no consumer at all; flushes published until the stream refuses them
   (``STREAM_MAX_BYTES`` of messages not acknowledged): the most the usage stream can hold.
   Before the change the stream was capped by ``XADD MAXLEN ~100000`` only, so it held that much in
   steady state too, acknowledged or not.
"""

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared.streams import StreamFull, trim_acknowledged
from shared.usage import STREAM_MAX_BYTES, RedisUsageConsumer, RedisUsagePublisher, UsageRecord, usage_stream
from tests.private_servers import private_redis

NAMESPACE = "bench"
FLUSHES_PER_SECOND = 10  # gateway/usage.py FLUSH_SECONDS = 0.1
PUBLISHERS = 8  # concurrent publishing connections: compresses time, not what is stored
SAMPLE_MINUTES = 10


def flush(records_per_flush: int, at: float) -> list[UsageRecord]:
    user = str(uuid.uuid4())
    return [
        UsageRecord(user, "GET", "/api/v1/airtable", 200, 12.345, 0, 0, uuid.uuid4().hex, at)
        for _ in range(records_per_flush)
    ]


async def memory(redis: Redis) -> int:
    used: Any = await redis.memory_usage(usage_stream(NAMESPACE), samples=0)
    return int(used or 0)


async def steady_state(redis: Redis, hours: float, rps: int) -> dict[str, Any]:
    publisher = RedisUsagePublisher(redis, NAMESPACE)
    consumer = RedisUsageConsumer(redis, NAMESPACE, consumer="bench")
    await consumer.read(1, 0.01)  # the group exists before the first flush, as in the service
    flushes_per_sample = 60 * SAMPLE_MINUTES * FLUSHES_PER_SECOND
    total = int(hours * 3600 * FLUSHES_PER_SECOND)
    records_per_flush = max(1, rps // FLUSHES_PER_SECOND)
    records = flush(records_per_flush, time.time())  # the same content each time: Redis copies it anyway
    published = consumed = 0
    samples: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def publish(worker: int) -> None:
        nonlocal published
        for _ in range(worker, total, PUBLISHERS):
            await publisher.publish(records)
            published += 1

    async def consume() -> None:
        nonlocal consumed
        while not done.is_set() or consumed < published:
            messages = await consumer.read(500, 0.05)
            await consumer.ack([m.id for m in messages])
            consumed += len(messages)

    async def sample() -> None:
        taken = 0
        while not done.is_set():
            if published >= (taken + 1) * flushes_per_sample:
                taken += 1
                length = int(await redis.xlen(usage_stream(NAMESPACE)))
                samples.append({"minute": taken * SAMPLE_MINUTES, "length": length, "bytes": await memory(redis)})
            await asyncio.sleep(0.005)

    started = time.monotonic()
    reader, sampler = asyncio.create_task(consume()), asyncio.create_task(sample())
    await asyncio.gather(*(publish(worker) for worker in range(PUBLISHERS)))
    done.set()
    await asyncio.gather(reader, sampler)
    await trim_acknowledged(redis, usage_stream(NAMESPACE), "usage")  # once everything is acknowledged
    return {
        "hours": hours,
        "requests_per_second": rps,
        "messages": published,
        "records": published * records_per_flush,
        "seconds": round(time.monotonic() - started, 1),
        "max_length": max((s["length"] for s in samples), default=0),
        "max_bytes": max((s["bytes"] for s in samples), default=0),
        "final_length": int(await redis.xlen(usage_stream(NAMESPACE))),
        "final_bytes": await memory(redis),
        "samples": samples,
    }


async def outage(redis: Redis, rps: int) -> dict[str, Any]:
    await redis.delete(usage_stream(NAMESPACE))
    publisher = RedisUsagePublisher(redis, NAMESPACE)
    records = flush(max(1, rps // FLUSHES_PER_SECOND), time.time())
    refused = published = 0
    started = time.monotonic()

    async def publish() -> None:
        nonlocal refused, published
        while not refused:
            try:
                await publisher.publish(records)
                published += 1
            except StreamFull:
                refused += 1

    await asyncio.gather(*(publish() for _ in range(PUBLISHERS)))
    length = int(await redis.xlen(usage_stream(NAMESPACE)))
    used = await memory(redis)
    return {
        "max_bytes": STREAM_MAX_BYTES,
        "messages_held": length,
        "bytes": used,
        "bytes_per_message": round(used / length),
        "hours_of_outage_held": round(length / (3600 * FLUSHES_PER_SECOND), 2),
        "seconds": round(time.monotonic() - started, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--requests-per-second", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with private_redis() as server:
        redis = Redis.from_url(server.url, socket_timeout=10)
        try:
            result = {
                "steady_state": await steady_state(redis, args.hours, args.requests_per_second),
                "outage": await outage(redis, args.requests_per_second),
            }
        finally:
            await redis.aclose()
    steady, full = result["steady_state"], result["outage"]
    print(
        f"steady state: {steady['records']:,} records in {steady['messages']:,} messages "
        f"({steady['hours']:g} h at {steady['requests_per_second']} req/s, run in {steady['seconds']} s): "
        f"stream at most {steady['max_length']:,} messages / {steady['max_bytes']:,} bytes "
        f"(sampled every {SAMPLE_MINUTES} min), {steady['final_length']} message / {steady['final_bytes']:,} bytes "
        "at the end"
    )
    print(
        f"outage: refused at {full['messages_held']:,} messages = {full['bytes']:,} bytes "
        f"({full['bytes_per_message']:,} bytes/message, {full['hours_of_outage_held']} h of usage held)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
