"""Administrators: bootstrapped from the command line, changing accounts over HTTP."""

import asyncio
import os
import subprocess
import sys

import httpx
import jwt
from litestar import Litestar

from auth_service.config import AuthSettings
from tests.auth_service.conftest import PASSWORD, admin_headers, bearer, register


async def create_admin_aside(settings: AuthSettings, email: str, password: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, waited for in a thread: the app under test keeps its
    event loop (blocked for the command's second or so, its database connects would time out)."""
    return await asyncio.to_thread(run_create_admin, settings, email, password)


def run_create_admin(settings: AuthSettings, email: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AUTH_DATABASE_URL": settings.database_url,
        "JWT_SECRET": settings.jwt_secret,
        "DATA_DIR": settings.data_dir,
        "ARGON2_TIME_COST": "2",
        "ARGON2_MEMORY_KIB": "19456",
        "ARGON2_PARALLELISM": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "auth_service", "create-admin", "--email", email, "--password-stdin"],
        input=password + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_create_admin_makes_an_account_that_can_sign_in_with_the_admin_role(
    client: httpx.AsyncClient, auth_settings: AuthSettings
) -> None:
    result = await create_admin_aside(auth_settings, "Root@Example.com", PASSWORD)

    assert result.returncode == 0, result.stderr
    assert "created admin root@example.com" in result.stdout
    response = await client.post("/api/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert sorted(response.json()["user"]["roles"]) == ["admin", "user"]
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["org_role"] == "owner" and claims["tid"] == response.json()["user"]["tenant_id"]


async def test_create_admin_promotes_an_existing_account(
    client: httpx.AsyncClient, auth_settings: AuthSettings, auth_app: Litestar
) -> None:
    await register(client, "ada@example.com")

    result = await create_admin_aside(auth_settings, "ada@example.com", "ignored for existing accounts")

    assert result.returncode == 0, result.stderr
    assert "promoted admin ada@example.com" in result.stdout
    tokens = (await client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})).json()
    assert "admin" in (await client.get("/api/v1/auth/me", headers=bearer(tokens))).json()["roles"]


async def test_a_string_for_a_boolean_is_a_422_and_leaves_the_account_as_it_was(client: httpx.AsyncClient) -> None:
    account = (await register(client, "ada@example.com"))["user"]["id"]
    path = f"/api/v1/auth/users/{account}"

    refused = await client.patch(path, json={"is_active": "false"}, headers=admin_headers())
    assert refused.status_code == 422, refused.text
    assert [error["key"] for error in refused.json()["errors"]] == ["is_active"]
    login = {"email": "ada@example.com", "password": PASSWORD}
    assert (await client.post("/api/v1/auth/login", json=login)).status_code == 200

    deactivated = await client.patch(path, json={"is_active": False}, headers=admin_headers())
    assert deactivated.status_code == 200, deactivated.text
    assert (await client.post("/api/v1/auth/login", json=login)).status_code == 401
