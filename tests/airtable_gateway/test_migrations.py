"""The Airtable gateway's Alembic history: upgrade, downgrade, upgrade again, and no drift from the models."""

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from airtable_gateway.config import AirtableSettings
from airtable_gateway.models import Base
from shared import migrations
from tests.conftest import DatabaseFactory

TABLES = {"user_tokens", "alembic_version_airtable"}


async def schema_state(url: str) -> tuple[set[str], list[object]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:

        def inspect_sync(sync_connection: object) -> tuple[set[str], list[object]]:
            tables = set(inspect(sync_connection).get_table_names())
            context = MigrationContext.configure(
                sync_connection, opts={"compare_type": True, "version_table": "alembic_version_airtable"}
            )
            return tables, compare_metadata(context, Base.metadata)

        result = await connection.run_sync(inspect_sync)
    await engine.dispose()
    return result


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_settings(request: pytest.FixtureRequest, databases: DatabaseFactory, tmp_path: Path) -> AirtableSettings:
    if request.param == "postgresql":
        return AirtableSettings(database_url=databases.create("pyairtable_airtable_migrations"))
    return AirtableSettings(data_dir=str(tmp_path))


def test_upgrade_downgrade_upgrade_leaves_no_drift(fresh_settings: AirtableSettings) -> None:
    url = fresh_settings.sqlalchemy_url()

    migrations.upgrade(fresh_settings, "airtable_gateway")
    tables, diff = asyncio.run(schema_state(url))
    assert tables >= TABLES
    assert diff == []

    migrations.downgrade(fresh_settings, "airtable_gateway", "base")
    tables, _ = asyncio.run(schema_state(url))
    assert tables & TABLES <= {"alembic_version_airtable"}

    migrations.upgrade(fresh_settings, "airtable_gateway")
    tables, diff = asyncio.run(schema_state(url))
    assert tables >= TABLES
    assert diff == []
