"""The check every service's Alembic history must pass: upgrade, downgrade to nothing, upgrade
again, on PostgreSQL and on SQLite, with no drift between the models and the migrated schema."""

import asyncio
from pathlib import Path
from typing import TypeVar

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from shared import migrations
from shared.settings import ServiceSettings
from tests.conftest import DatabaseFactory

DATABASES = ["postgresql", "sqlite"]
S = TypeVar("S", bound=ServiceSettings)


def fresh_settings(settings_cls: type[S], database: str, databases: DatabaseFactory, tmp_path: Path) -> S:
    """Settings on an empty database of the kind named: a new PostgreSQL database or a SQLite file."""
    if database == "postgresql":
        return settings_cls(database_url=databases.create(f"pyairtable_{settings_cls().service_name}_migrations"))
    return settings_cls(data_dir=str(tmp_path))


def assert_round_trip(
    settings: ServiceSettings, package: str, metadata: MetaData, tables: set[str], version_table: str
) -> None:
    url = settings.sqlalchemy_url()

    migrations.upgrade(settings, package)
    assert_schema_matches(url, metadata, tables, version_table)

    migrations.downgrade(settings, package, "base")
    remaining, _ = asyncio.run(_schema_state(url, metadata, version_table))
    assert remaining & tables <= {version_table}

    migrations.upgrade(settings, package)
    assert_schema_matches(url, metadata, tables, version_table)


def assert_schema_matches(url: str, metadata: MetaData, tables: set[str], version_table: str) -> None:
    present, drift = asyncio.run(_schema_state(url, metadata, version_table))
    assert present >= tables | {version_table}
    assert drift == []


async def _schema_state(url: str, metadata: MetaData, version_table: str) -> tuple[set[str], list[object]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:

        def inspect_sync(sync_connection: object) -> tuple[set[str], list[object]]:
            tables = set(inspect(sync_connection).get_table_names())
            context = MigrationContext.configure(
                sync_connection, opts={"compare_type": True, "version_table": version_table}
            )
            return tables, compare_metadata(context, metadata)

        result = await connection.run_sync(inspect_sync)
    await engine.dispose()
    return result
