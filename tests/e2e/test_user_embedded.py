"""The user flows in embedded mode: the whole platform in one process behind the gateway, with the
in-memory store and event bus (no Redis), each service on its own PostgreSQL database or SQLite file.
Same outcomes as the distributed run (tests/e2e/test_user_processes.py)."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_service.config import AuthSettings
from embedded.app import create_app
from gateway.config import GatewaySettings
from shared import migrations
from shared.audit import AUDIT_EVENT
from shared.events import InMemoryBus
from shared.settings import load_settings
from tests.auth_service.conftest import FAST_ARGON2, JWT_SECRET, PASSWORD
from tests.conftest import LOADED_DATABASE_ENVIRON, DatabaseFactory, app_client, eventually
from user_service.config import UserSettings

CREDENTIALS = {"email": "ada@example.com", "password": PASSWORD}


@pytest.fixture(params=["postgresql", "sqlite"])
def service_databases(request: pytest.FixtureRequest, databases: DatabaseFactory, tmp_path: Path) -> dict[str, str]:
    """The services' database variables: PostgreSQL, or SQLite files in DATA_DIR (`make run`)."""
    environ = {"DATA_DIR": str(tmp_path), **LOADED_DATABASE_ENVIRON}
    if request.param == "postgresql":
        environ["AUTH_DATABASE_URL"] = databases.create("pyairtable_auth")
        environ["USERS_DATABASE_URL"] = databases.create("pyairtable_users")
    migrations.upgrade(load_settings(AuthSettings, environ), "auth_service")
    migrations.upgrade(load_settings(UserSettings, environ), "user_service")
    return environ


@pytest.fixture
async def platform(service_databases: dict[str, str], tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    environ = {
        **service_databases,
        "JWT_SECRET": JWT_SECRET,
        "OUTBOX_POLL_SECONDS": "0.2",
        **{name.upper(): str(value) for name, value in FAST_ARGON2.items()},
    }
    settings = GatewaySettings(
        jwt_secret=JWT_SECRET,
        redis_url="",
        data_dir=str(tmp_path),
        rate_limit_per_minute=10_000,
        rate_limit_burst=10_000,
    )
    app = create_app(settings, environ=environ)
    async with app_client(app) as client:
        yield client, app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_profile_delete_and_lockout_in_embedded_mode(platform: tuple[httpx.AsyncClient, Any]) -> None:
    client, app = platform
    registered = await client.post("/api/v1/auth/register", json={**CREDENTIALS, "first_name": "Ada"})
    assert registered.status_code == 201, registered.text
    token, user_id = registered.json()["access_token"], registered.json()["user"]["id"]

    async def profile_from_the_event() -> dict[str, Any] | None:
        response = await client.get("/api/v1/users/me", headers=bearer(token))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["first_name"] == "Ada" else None

    profile = await eventually(profile_from_the_event, "user.registered to reach the profile")
    assert (profile["id"], profile["email"]) == (user_id, "ada@example.com")

    assert (await client.delete(f"/api/v1/users/{user_id}", headers=bearer(token))).status_code == 204

    async def token_refused() -> bool:
        return (await client.get("/api/v1/users/me", headers=bearer(token))).status_code == 401

    await eventually(token_refused, "the gateway to refuse the token")
    assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 401
    assert (await client.post("/api/v1/auth/login", json=CREDENTIALS)).status_code == 401
    refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": registered.json()["refresh_token"]})
    assert refreshed.status_code == 401

    bus = app.state.bus  # the one in-memory bus every in-process service shares
    assert isinstance(bus, InMemoryBus)
    # Audit entries (the deletion's sessions, the refused sign-in) travel on it too: see
    # tests/auth_service/test_audit_events.py.
    published = [e.type for e in bus.published if e.type != AUDIT_EVENT]
    assert published == ["user.registered", "organization.member_added", "user.deleted"]
    assert bus.dead_letters == []


async def test_the_users_routes_are_in_the_merged_openapi_document(platform: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = platform
    paths = (await client.get("/api/v1/openapi.json")).json()["paths"]
    assert {"/api/v1/users", "/api/v1/users/me", "/api/v1/users/{user_id}", "/api/v1/auth/email"} <= set(paths)
    assert {"get", "put", "patch", "delete"} <= set(paths["/api/v1/users/{user_id}"])
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["upstream:users"]["status"] == "ok"
