"""The user service's migrations and its stored profiles: the memberships are back-filled from the
profiles' tenants (the round trip of every service's history: tests/test_migrations.py)."""

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared import migrations
from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, fresh_settings
from user_service.config import UserSettings

INSERT_PROFILE = text(
    "INSERT INTO profiles (id, email, preferences, tenant_id, role, is_active, email_verified, created_at,"
    " updated_at, deleted_at) VALUES (:id, 'x@example.com', '{}', :tenant, 'user', TRUE, FALSE,"
    " '2026-12-01 00:00:00+00', '2026-12-01 00:00:00+00', :deleted)"
)


async def _run(url: str, statement: str, rows: list[dict[str, object]] | None = None) -> list[tuple[str, ...]]:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        if rows:
            await connection.execute(text(statement), rows)
            result = []
        else:
            result = [tuple(str(value) for value in row) for row in await connection.execute(text(statement))]
    await engine.dispose()
    return result


@pytest.mark.parametrize("database", DATABASES)
def test_memberships_are_back_filled_from_the_profiles_tenants(
    database: str, databases: DatabaseFactory, tmp_path: Path
) -> None:
    """A tenant of its own: its owner. A shared one: members (auth's events say who owns it). A
    deleted profile: none."""
    settings = fresh_settings(UserSettings, database, databases, tmp_path)
    url = settings.sqlalchemy_url()

    def new_id() -> str:  # SQLite stores a Uuid as 32 hex digits, PostgreSQL as a uuid
        return uuid.uuid4().hex if database == "sqlite" else str(uuid.uuid4())

    solo, shared, gone = new_id(), new_id(), new_id()
    rows = [
        {"id": (owner := new_id()), "tenant": solo, "deleted": None},
        {"id": (first := new_id()), "tenant": shared, "deleted": None},
        {"id": (second := new_id()), "tenant": shared, "deleted": None},
        {"id": new_id(), "tenant": gone, "deleted": "2026-12-02 00:00:00+00"},
        {"id": new_id(), "tenant": None, "deleted": None},
    ]
    migrations.upgrade(settings, "user_service", "0003")
    asyncio.run(_run(url, INSERT_PROFILE.text, rows))

    migrations.upgrade(settings, "user_service")

    stored = asyncio.run(_run(url, "SELECT organization_id, user_id, role FROM memberships"))
    assert sorted(stored) == sorted([(solo, owner, "owner"), (shared, first, "member"), (shared, second, "member")])
