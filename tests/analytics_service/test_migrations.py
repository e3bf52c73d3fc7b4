"""The analytics service's Alembic history: upgrade, downgrade, upgrade again, and no drift from the models."""

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from analytics_service.config import AnalyticsSettings
from analytics_service.models import Base
from shared import migrations
from tests.conftest import DatabaseFactory

TABLES = {
    "events",
    "metrics",
    "usage_daily",
    "cost_daily",
    "endpoint_hourly",
    "event_hourly",
    "usage_applied",
    "alembic_version_analytics",
}


async def schema_state(url: str) -> tuple[set[str], list[object]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:

        def inspect_sync(sync_connection: object) -> tuple[set[str], list[object]]:
            tables = set(inspect(sync_connection).get_table_names())
            context = MigrationContext.configure(
                sync_connection, opts={"compare_type": True, "version_table": "alembic_version_analytics"}
            )
            return tables, compare_metadata(context, Base.metadata)

        result = await connection.run_sync(inspect_sync)
    await engine.dispose()
    return result


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_settings(request: pytest.FixtureRequest, databases: DatabaseFactory, tmp_path: Path) -> AnalyticsSettings:
    if request.param == "postgresql":
        return AnalyticsSettings(database_url=databases.create("pyairtable_analytics_migrations"))
    return AnalyticsSettings(data_dir=str(tmp_path))


def test_upgrade_downgrade_upgrade_leaves_no_drift(fresh_settings: AnalyticsSettings) -> None:
    url = fresh_settings.sqlalchemy_url()

    migrations.upgrade(fresh_settings, "analytics_service")
    tables, diff = asyncio.run(schema_state(url))
    assert tables >= TABLES
    assert diff == []

    migrations.downgrade(fresh_settings, "analytics_service", "base")
    tables, _ = asyncio.run(schema_state(url))
    assert tables & TABLES <= {"alembic_version_analytics"}

    migrations.upgrade(fresh_settings, "analytics_service")
    tables, diff = asyncio.run(schema_state(url))
    assert tables >= TABLES
    assert diff == []
