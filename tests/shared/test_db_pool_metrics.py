"""The database pool gauges behind the DatabasePoolSaturated alert (deploy/prometheus/alerts.yml):
the connections a service holds and the most its pool can hand out, read at scrape time."""

from shared.db import create_engine
from shared.settings import ServiceSettings
from tests.conftest import DatabaseFactory
from tests.metrics import local_sample


async def test_the_pool_gauges_follow_the_connections_a_service_holds(databases: DatabaseFactory) -> None:
    settings = ServiceSettings(
        service_name="pool-metrics-test", database_url=databases.create("pyairtable_pool"), db_pool_size=3
    )
    engine = create_engine(settings)
    service = {"service": "pool-metrics-test"}
    try:
        assert local_sample("pyairtable_db_pool_capacity", **service) == 6  # DB_POOL_SIZE + as many overflow
        assert local_sample("pyairtable_db_pool_checked_out", **service) == 0
        async with engine.connect(), engine.connect():
            assert local_sample("pyairtable_db_pool_checked_out", **service) == 2
        assert local_sample("pyairtable_db_pool_checked_out", **service) == 0
    finally:
        await engine.dispose()
