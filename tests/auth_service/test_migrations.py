"""The auth service's migrations and its stored accounts: each user's tenant becomes an organisation
and back (the round trip of every service's history: tests/test_migrations.py)."""

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from auth_service.config import AuthSettings
from shared import migrations
from tests.conftest import DatabaseFactory
from tests.migration_checks import DATABASES, fresh_settings


async def _run(url: str, *statements: tuple[str, dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
    """Each statement's rows (none for writes), in one transaction."""
    engine = create_async_engine(url)
    results: list[list[tuple[Any, ...]]] = []
    async with engine.begin() as connection:
        for sql, params in statements:
            result = await connection.execute(text(sql), params)
            results.append([tuple(row) for row in result] if result.returns_rows else [])
    await engine.dispose()
    return results


def _id(database: str, value: uuid.UUID) -> str:
    return value.hex if database == "sqlite" else str(value)  # how each stores a Uuid


@pytest.mark.parametrize("database", DATABASES)
def test_each_users_tenant_becomes_an_organisation_they_own_and_back(
    database: str, databases: DatabaseFactory, tmp_path: Path
) -> None:
    settings = fresh_settings(AuthSettings, database, databases, tmp_path)
    url = settings.sqlalchemy_url()
    migrations.upgrade(settings, "auth_service", "0006")
    ada, bob = uuid.uuid4(), uuid.uuid4()
    ada_tenant, bob_tenant = uuid.uuid4(), uuid.uuid4()
    insert = (
        "INSERT INTO users (id, email, password_hash, first_name, last_name, roles, tenant_id, is_active,"
        " email_verified, created_at, updated_at) VALUES (:id, :email, 'x', :first, NULL, '[\"user\"]', :tenant,"
        " true, true, :at, :at)"
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    asyncio.run(
        _run(
            url,
            (
                insert,
                {
                    "id": _id(database, ada),
                    "email": "ada@example.com",
                    "first": "Ada",
                    "tenant": _id(database, ada_tenant),
                    "at": at,
                },
            ),
            (
                insert,
                {
                    "id": _id(database, bob),
                    "email": "bob@example.com",
                    "first": None,
                    "tenant": _id(database, bob_tenant),
                    "at": at,
                },
            ),
        )
    )

    migrations.upgrade(settings, "auth_service")

    orgs, members, events = asyncio.run(
        _run(
            url,
            ("SELECT id, name, slug FROM organizations ORDER BY name", {}),
            ("SELECT organization_id, user_id, role FROM memberships ORDER BY role, user_id", {}),
            ("SELECT event_type, payload FROM outbox", {}),
        )
    )
    assert [(str(uuid.UUID(str(i))), name, slug) for i, name, slug in orgs] == [
        (str(ada_tenant), "Ada", "ada"),
        (str(bob_tenant), "bob", "bob"),
    ]
    assert sorted((str(uuid.UUID(str(o))), str(uuid.UUID(str(u))), r) for o, u, r in members) == sorted(
        [(str(ada_tenant), str(ada), "owner"), (str(bob_tenant), str(bob), "owner")]
    )
    payloads = [p if isinstance(p, dict) else json.loads(p) for _, p in events]
    assert {e for e, _ in events} == {"organization.member_added"}
    assert {(p["organization_id"], p["user_id"], p["role"]) for p in payloads} == {
        (str(ada_tenant), str(ada), "owner"),
        (str(bob_tenant), str(bob), "owner"),
    }

    migrations.downgrade(settings, "auth_service", "0006")
    (tenants,) = asyncio.run(_run(url, ("SELECT id, tenant_id FROM users", {})))
    assert {str(uuid.UUID(str(u))): str(uuid.UUID(str(t))) for u, t in tenants} == {
        str(ada): str(ada_tenant),
        str(bob): str(bob_tenant),
    }

    migrations.upgrade(settings, "auth_service")
    (again,) = asyncio.run(_run(url, ("SELECT count(*) FROM memberships WHERE role = 'owner'", {})))
    assert again == [(2,)]
