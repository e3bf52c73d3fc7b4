"""A usage batch whose roll-up fails (the database refuses it) is not acknowledged: it is claimed
again and rolled up once, never lost and never counted twice."""

import time
from collections.abc import Iterator

import psycopg
import pytest
from redis.asyncio import Redis

from analytics_service.workers import UsagePipeline
from shared.db import create_engine, create_sessionmaker
from shared.usage import RedisUsageConsumer, RedisUsagePublisher, UsageRecord, usage_stream
from tests.analytics_service.conftest import Clock, SettingsFactory
from tests.conftest import eventually

REFUSE = """
CREATE FUNCTION refuse_usage() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'the database refuses this batch'; END $$;
CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_daily FOR EACH ROW EXECUTE FUNCTION refuse_usage();
"""
ACCEPT = "DROP TRIGGER refuse_usage ON usage_daily; DROP FUNCTION refuse_usage();"


@pytest.fixture
def refusing_database(clean_analytics_database: str) -> Iterator[str]:
    """The analytics database, refusing usage roll-ups until the test calls ``accept``."""
    with psycopg.connect(clean_analytics_database, autocommit=True) as conn:
        conn.execute(REFUSE)
    yield clean_analytics_database
    with psycopg.connect(clean_analytics_database, autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS refuse_usage ON usage_daily; DROP FUNCTION IF EXISTS refuse_usage();")


def accept(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(ACCEPT)


def record(user_id: str, n: int) -> UsageRecord:
    return UsageRecord(user_id, "GET", "/api/v1/airtable", 200, 5.0, 10, 100, f"request-{n}", time.time())


async def test_a_batch_that_fails_is_claimed_again_and_counted_once(
    refusing_database: str, make_settings: SettingsFactory, clock: Clock, redis_url: str, redis_namespace: str
) -> None:
    settings = make_settings()
    redis = Redis.from_url(redis_url)
    engine = create_engine(settings)
    consumer = RedisUsageConsumer(redis, redis_namespace, reclaim_after_seconds=0.05)
    pipeline = UsagePipeline(consumer, create_sessionmaker(engine), clock, block_seconds=0.05)
    try:
        await RedisUsagePublisher(redis, redis_namespace).publish([record("ada", n) for n in range(3)])

        with pytest.raises(Exception, match="refuses this batch"):
            await pipeline.run_once()
        pending = await redis.xpending(usage_stream(redis_namespace), "analytics")
        assert pending["pending"] == 1, "the failed batch stays unacknowledged"

        accept(refusing_database)
        await eventually(lambda: applied(pipeline), "the batch claimed again and rolled up")
        assert await pipeline.run_once() == 0, "nothing left, nothing applied twice"
        pending = await redis.xpending(usage_stream(redis_namespace), "analytics")
    finally:
        await engine.dispose()
        await redis.aclose()
    assert pending["pending"] == 0
    with psycopg.connect(refusing_database) as conn:
        rows = conn.execute("SELECT user_id, api_calls, airtable_calls FROM usage_daily").fetchall()
    assert rows == [("ada", 3, 3)]


async def applied(pipeline: UsagePipeline) -> bool:
    await pipeline.run_once()
    return pipeline.applied == 3
