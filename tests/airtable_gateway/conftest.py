"""Airtable gateway fixtures: the service in-process (real PostgreSQL and Redis) in front of the
Airtable emulator running as a real process (tests/airtable_gateway/emulator_fixture.py)."""

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from litestar import Litestar

from airtable_gateway.app import create_app
from airtable_gateway.config import AirtableSettings
from tests.airtable_gateway.emulator_fixture import (  # noqa: F401  (pytest finds fixtures by name)
    CRM_BASE,
    OPS_BASE,
    Emulator,
    emulator_per_session,
    emulator_per_test,
)
from tests.conftest import (
    app_client,
    database_fixtures,
    settings_factory,
    signed_access_token,
)

API = "/api/v1/airtable"
JWT_SECRET = secrets.token_urlsafe(48)
ENCRYPTION_KEY = secrets.token_urlsafe(48)
PROBLEM = "application/problem+json"
# The session emulator's penalty after a 429 (see emulator_fixture); the gateway pauses as long.
PENALTY_SECONDS = 1.0

# The organisation the tests' callers act in (their tokens' ``tid``) unless a test says otherwise;
# the ``org_grants`` fixture grants it write access to the emulator's two bases.
ORG = uuid.uuid4()

SettingsFactory = Callable[..., AirtableSettings]


airtable_database, clean_airtable_database = database_fixtures(
    "airtable", AirtableSettings, "airtable_gateway", "user_tokens, base_grants, outbox, processed_events"
)


def grant(database_url: str, organization_id: uuid.UUID, base_id: str, access: str = "write") -> None:
    """A grant as a platform administrator's PUT makes it (the routes are tested in test_grants.py)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO base_grants (id, organization_id, base_id, access, created_by, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, now(), now())",
            (uuid.uuid4(), organization_id, base_id, access, uuid.uuid4()),
        )


@pytest.fixture
def org_grants(clean_airtable_database: str) -> str:
    """The tests' organisation (ORG) may read and write both of the emulator's bases."""
    for base_id in (CRM_BASE, OPS_BASE):
        grant(clean_airtable_database, ORG, base_id)
    return clean_airtable_database


@pytest.fixture
def make_settings(org_grants: str, service_settings: dict[str, Any], emulator: Emulator) -> SettingsFactory:
    return settings_factory(
        AirtableSettings,
        **service_settings,
        database_url=org_grants,
        jwt_secret=JWT_SECRET,
        airtable_api_url=emulator.url,
        airtable_token=emulator.token,
        airtable_token_encryption_key=ENCRYPTION_KEY,
        airtable_penalty_seconds=PENALTY_SECONDS,
        airtable_queue_timeout=10.0,
        airtable_retry_base_seconds=0.05,
    )


@pytest.fixture
def settings(make_settings: SettingsFactory) -> AirtableSettings:
    return make_settings()


@pytest.fixture
def airtable_app(settings: AirtableSettings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(airtable_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(airtable_app) as test_client:
        test_client.headers.update(bearer())
        yield test_client


def access_token(
    user_id: uuid.UUID | None = None,
    *,
    org: uuid.UUID | None = ORG,
    org_role: str = "member",
    roles: tuple[str, ...] = ("user",),
) -> str:
    """An access token acting in ``org`` with ``org_role`` (``org=None``: no active organisation)."""
    return signed_access_token(
        JWT_SECRET,
        sub=str(user_id or uuid.uuid4()),
        tid=str(org) if org else None,
        org_role=org_role if org else None,
        roles=list(roles),
    )


def bearer(
    user_id: uuid.UUID | None = None,
    *,
    org: uuid.UUID | None = ORG,
    org_role: str = "member",
    roles: tuple[str, ...] = ("user",),
) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token(user_id, org=org, org_role=org_role, roles=roles)}"}


def upstream_log(emulator: Emulator, base: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
    """The requests that reached the emulator (optionally of one base and method), oldest first."""
    log: list[dict[str, Any]] = emulator.stats()["log"]
    return [
        entry
        for entry in log
        if (base is None or entry["base"] == base) and (method is None or entry["method"] == method)
    ]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.05)
