"""Bootstrapping an administrator from the command line."""

import os
import subprocess
import sys

import httpx
from litestar import Litestar

from auth_service.config import AuthSettings
from tests.auth_service.conftest import PASSWORD, bearer, register


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
    result = run_create_admin(auth_settings, "Root@Example.com", PASSWORD)

    assert result.returncode == 0, result.stderr
    assert "created admin root@example.com" in result.stdout
    response = await client.post("/api/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert sorted(response.json()["user"]["roles"]) == ["admin", "user"]


async def test_create_admin_promotes_an_existing_account(
    client: httpx.AsyncClient, auth_settings: AuthSettings, auth_app: Litestar
) -> None:
    await register(client, "ada@example.com")

    result = run_create_admin(auth_settings, "ada@example.com", "ignored for existing accounts")

    assert result.returncode == 0, result.stderr
    assert "promoted admin ada@example.com" in result.stdout
    tokens = (await client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})).json()
    assert "admin" in (await client.get("/api/v1/auth/me", headers=bearer(tokens))).json()["roles"]
