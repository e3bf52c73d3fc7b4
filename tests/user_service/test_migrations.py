"""The user service's Alembic history: upgrade, downgrade, upgrade again, and no drift from the models."""

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from shared import migrations
from tests.conftest import DatabaseFactory
from user_service.config import UserSettings
from user_service.models import Base

VERSION_TABLE = "alembic_version_users"
TABLES = {"profiles", "outbox", "processed_events", VERSION_TABLE}


async def schema_state(url: str) -> tuple[set[str], list[object]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:

        def inspect_sync(sync_connection: object) -> tuple[set[str], list[object]]:
            tables = set(inspect(sync_connection).get_table_names())
            context = MigrationContext.configure(
                sync_connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            return tables, compare_metadata(context, Base.metadata)

        result = await connection.run_sync(inspect_sync)
    await engine.dispose()
    return result


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_settings(request: pytest.FixtureRequest, databases: DatabaseFactory, tmp_path: Path) -> UserSettings:
    if request.param == "postgresql":
        return UserSettings(database_url=databases.create("pyairtable_users_migrations"))
    return UserSettings(data_dir=str(tmp_path))


def test_upgrade_downgrade_upgrade_leaves_no_drift(fresh_settings: UserSettings) -> None:
    url = fresh_settings.sqlalchemy_url()

    migrations.upgrade(fresh_settings, "user_service")
    tables, diff = asyncio.run(schema_state(url))
    assert tables >= TABLES
    assert diff == []

    migrations.downgrade(fresh_settings, "user_service", "base")
    tables, _ = asyncio.run(schema_state(url))
    assert tables & TABLES <= {VERSION_TABLE}

    migrations.upgrade(fresh_settings, "user_service")
    tables, diff = asyncio.run(schema_state(url))
    assert tables >= TABLES
    assert diff == []
