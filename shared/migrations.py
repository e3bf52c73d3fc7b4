"""Alembic helpers: each service keeps its own ``migrations/`` folder and version table."""

import asyncio
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import ServiceSettings


def alembic_config(settings: ServiceSettings, package: str) -> Config:
    config = Config()
    config.set_main_option("script_location", f"{package}:migrations")
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url().replace("%", "%%"))
    config.attributes["settings"] = settings
    return config


def upgrade(settings: ServiceSettings, package: str, revision: str = "head") -> None:
    if settings.sqlalchemy_url().startswith("sqlite"):
        settings.data_path.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings, package), revision)


def downgrade(settings: ServiceSettings, package: str, revision: str) -> None:
    command.downgrade(alembic_config(settings, package), revision)


def revision(settings: ServiceSettings, package: str, message: str) -> None:
    command.revision(alembic_config(settings, package), message=message, autogenerate=True)


def run_env(metadata: MetaData, version_table: str) -> None:
    """The body of every service's ``migrations/env.py``."""
    url = context.config.get_main_option("sqlalchemy.url") or ""
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "version_table": version_table,
        "render_as_batch": url.startswith("sqlite"),
        "compare_type": True,
    }
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection, options)
    else:
        asyncio.run(_run_async(url, options))


def _run_sync(connection: Connection, options: dict[str, Any]) -> None:
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str, options: dict[str, Any]) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync, options)
        await connection.commit()
    await engine.dispose()
