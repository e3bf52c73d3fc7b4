"""The analytics service's migrations and its stored events: they survive the change to event ids
unique per user, both ways (the round trip of every service's history: tests/test_migrations.py)."""

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from analytics_service.config import AnalyticsSettings
from shared import migrations
from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, fresh_settings

INSERT_EVENT = text(
    "INSERT INTO events (user_id, event_id, event_type, properties, occurred_at, received_at) VALUES "
    "(:user_id, :event_id, 'x', '{}', '2026-12-01 00:00:00+00', '2026-12-01 00:00:00+00')"
)


async def _events(url: str, *inserts: dict[str, str]) -> list[tuple[str, str]]:
    """Insert the events given; the (user_id, event_id) of every event afterwards."""
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        for values in inserts:
            await connection.execute(INSERT_EVENT, values)
        rows = await connection.execute(text("SELECT user_id, event_id FROM events ORDER BY user_id"))
        result = [(str(user_id), str(event_id)) for user_id, event_id in rows]
    await engine.dispose()
    return result


@pytest.mark.parametrize("database", DATABASES)
def test_event_ids_become_unique_per_user_and_stored_events_survive_both_ways(
    database: str, databases: DatabaseFactory, tmp_path: Path
) -> None:
    settings = fresh_settings(AnalyticsSettings, database, databases, tmp_path)
    url = settings.sqlalchemy_url()
    # SQLite stores a Uuid as 32 hex digits, PostgreSQL as a uuid.
    shared_id = uuid.uuid4().hex if database == "sqlite" else str(uuid.uuid4())
    migrations.upgrade(settings, "analytics_service", "0001")
    alice, bob = {"user_id": "alice", "event_id": shared_id}, {"user_id": "bob", "event_id": shared_id}
    assert asyncio.run(_events(url, alice)) == [("alice", shared_id)]

    migrations.upgrade(settings, "analytics_service")
    after = asyncio.run(_events(url, bob))  # refused by the old global key
    assert after == [("alice", shared_id), ("bob", shared_id)]

    migrations.downgrade(settings, "analytics_service", "0001")  # one event per id again: the first user's
    assert asyncio.run(_events(url)) == [("alice", shared_id)]
