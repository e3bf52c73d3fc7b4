"""Refresh-token rotation, reuse detection, lifetimes, logout, password change and sessions."""

import asyncio
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar
from sqlalchemy import func, select

from auth_service.app import create_app
from auth_service.config import AuthSettings
from auth_service.models import AuthSession
from shared.settings import SettingsError, load_settings
from tests.auth_service.conftest import PASSWORD, Clock, bearer, register
from tests.conftest import app_client

REFRESH = "/api/v1/auth/refresh"
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(REFRESH, json={"refresh_token": token})


async def login(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, Any]:
    response = await client.post(LOGIN, json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_refresh_rotates_the_pair(client: httpx.AsyncClient) -> None:
    first = await register(client)

    response = await refresh(client, first["refresh_token"])

    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await client.get(ME, headers=bearer(second))).status_code == 200
    assert (await refresh(client, second["refresh_token"])).status_code == 200


async def test_reusing_a_rotated_token_revokes_the_whole_family(client: httpx.AsyncClient, clock: Clock) -> None:
    rt1 = (await register(client))["refresh_token"]
    pair2 = (await refresh(client, rt1)).json()
    clock.advance(seconds=11)  # past the 10 s grace window

    reuse = await refresh(client, rt1)

    assert reuse.status_code == 401
    assert reuse.json()["code"] == "invalid_grant"
    assert (await refresh(client, pair2["refresh_token"])).status_code == 401
    # The family's access tokens die with it.
    assert (await client.get(ME, headers=bearer(pair2))).status_code == 401


async def test_reuse_within_the_grace_window_returns_the_same_pair(client: httpx.AsyncClient, clock: Clock) -> None:
    rt1 = (await register(client))["refresh_token"]
    pair2 = (await refresh(client, rt1)).json()
    clock.advance(seconds=5)

    again = await refresh(client, rt1)

    assert again.status_code == 200
    assert again.json() == pair2
    assert (await refresh(client, pair2["refresh_token"])).status_code == 200


async def test_concurrent_refreshes_all_get_the_same_new_pair(client: httpx.AsyncClient, auth_app: Litestar) -> None:
    rt1 = (await register(client))["refresh_token"]

    responses = await asyncio.gather(*(refresh(client, rt1) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.json()["refresh_token"] for r in responses}) == 1
    async with auth_app.state.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(AuthSession)) == 1


async def test_unknown_refresh_token_is_invalid_grant(client: httpx.AsyncClient) -> None:
    response = await refresh(client, "not-a-real-refresh-token")

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_grant"


async def test_an_idle_session_expires(client: httpx.AsyncClient, clock: Clock) -> None:
    rt = (await register(client))["refresh_token"]
    clock.advance(days=13)
    rt = (await refresh(client, rt)).json()["refresh_token"]  # used: idle timer restarts
    clock.advance(days=13)
    rt = (await refresh(client, rt)).json()["refresh_token"]

    clock.advance(days=14, seconds=1)

    assert (await refresh(client, rt)).status_code == 401


async def test_the_absolute_lifetime_ends_a_session_used_daily(client: httpx.AsyncClient, clock: Clock) -> None:
    rt = (await register(client))["refresh_token"]
    for _ in range(29):
        clock.advance(days=1)
        response = await refresh(client, rt)
        assert response.status_code == 200
        rt = response.json()["refresh_token"]

    clock.advance(days=1, seconds=1)

    assert (await refresh(client, rt)).status_code == 401


async def test_logout_revokes_the_session_and_its_access_token(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    other = await login(client)

    response = await client.post("/api/v1/auth/logout", headers=bearer(tokens))

    assert response.status_code == 204
    assert (await client.get(ME, headers=bearer(tokens))).status_code == 401
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401
    # Another device stays signed in.
    assert (await client.get(ME, headers=bearer(other))).status_code == 200
    assert (await refresh(client, other["refresh_token"])).status_code == 200


async def test_global_logout_signs_out_every_session(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    other = await login(client)

    response = await client.post("/api/v1/auth/logout?scope=global", headers=bearer(tokens))

    assert response.status_code == 204
    for pair in (tokens, other):
        assert (await client.get(ME, headers=bearer(pair))).status_code == 401
        assert (await refresh(client, pair["refresh_token"])).status_code == 401
    again = await login(client)  # signing in again, even within the same second, works
    assert (await client.get(ME, headers=bearer(again))).status_code == 200


async def test_logout_with_an_invalid_scope_is_422(client: httpx.AsyncClient) -> None:
    tokens = await register(client)

    response = await client.post("/api/v1/auth/logout?scope=everything", headers=bearer(tokens))

    assert response.status_code == 422


async def test_logout_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/logout")

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_password_change_signs_out_the_other_sessions(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    other = await login(client)

    response = await client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "an entirely new passphrase"},
        headers=bearer(tokens),
    )

    assert response.status_code == 204
    assert (await client.get(ME, headers=bearer(tokens))).status_code == 200
    assert (await client.get(ME, headers=bearer(other))).status_code == 401
    assert (await refresh(client, other["refresh_token"])).status_code == 401
    old = await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})
    assert old.status_code == 401
    new = await client.post(LOGIN, json={"email": "ada@example.com", "password": "an entirely new passphrase"})
    assert new.status_code == 200


async def test_password_change_checks_the_current_password_and_the_policy(client: httpx.AsyncClient) -> None:
    tokens = await register(client)

    wrong = await client.post(
        "/api/v1/auth/password",
        json={"current_password": "not my password", "new_password": "an entirely new passphrase"},
        headers=bearer(tokens),
    )
    weak = await client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": "short"}, headers=bearer(tokens)
    )

    assert wrong.status_code == 401
    assert weak.status_code == 422
    assert (await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})).status_code == 200


async def test_sessions_are_listed_and_can_be_revoked(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    other = await login(client)

    listed = (await client.get("/api/v1/auth/sessions", headers=bearer(tokens))).json()["sessions"]

    assert len(listed) == 2
    current = [s for s in listed if s["current"]]
    assert len(current) == 1
    other_id = next(s["id"] for s in listed if not s["current"])
    response = await client.delete(f"/api/v1/auth/sessions/{other_id}", headers=bearer(tokens))
    assert response.status_code == 204
    assert (await client.get(ME, headers=bearer(other))).status_code == 401
    assert len((await client.get("/api/v1/auth/sessions", headers=bearer(tokens))).json()["sessions"]) == 1


async def test_a_user_cannot_revoke_someone_elses_session(client: httpx.AsyncClient) -> None:
    ada = await register(client, "ada@example.com")
    bob = await register(client, "bob@example.com")
    bobs_session = (await client.get("/api/v1/auth/sessions", headers=bearer(bob))).json()["sessions"][0]["id"]

    response = await client.delete(f"/api/v1/auth/sessions/{bobs_session}", headers=bearer(ada))

    assert response.status_code == 404
    assert (await client.get(ME, headers=bearer(bob))).status_code == 200


async def test_verify_returns_the_claims(client: httpx.AsyncClient) -> None:
    tokens = await register(client)

    response = await client.get("/api/v1/auth/verify", headers=bearer(tokens))

    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is True
    assert body["claims"]["sub"] == tokens["user"]["id"]
    assert body["claims"]["email"] == "ada@example.com"


async def test_verify_refuses_a_bad_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/auth/verify", headers={"Authorization": "Bearer abc.def.ghi"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_jwks_is_absent_with_a_shared_secret(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/auth/.well-known/jwks.json")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_logout_with_a_refresh_token_alone_ends_its_session(client: httpx.AsyncClient) -> None:
    """The Go services' clients sign out with ``{"refresh_token": ...}`` and no bearer (RFC 7009)."""
    tokens = await register(client)
    other = await login(client)

    response = await client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})

    assert response.status_code == 204
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401
    assert (await client.get(ME, headers=bearer(tokens))).status_code == 401
    assert (await client.get(ME, headers=bearer(other))).status_code == 200


async def test_logout_with_an_unknown_refresh_token_answers_alike(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/logout", json={"refresh_token": "not-a-token-we-issued"})

    assert response.status_code == 204


async def test_logout_with_a_bearer_still_checks_it(client: httpx.AsyncClient) -> None:
    tokens = await register(client)

    response = await client.post(
        "/api/v1/auth/logout",
        headers={"Authorization": "Bearer not.a.jwt"},
        json={"refresh_token": tokens["refresh_token"]},
    )

    assert response.status_code == 401
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


async def test_the_legacy_lifetime_follows_jwt_expires_in(auth_settings: AuthSettings, clock: Clock) -> None:
    settings = msgspec.structs.replace(auth_settings, jwt_expires_in="24h")
    async with app_client(create_app(settings, clock=clock)) as client:
        await register(client)
        legacy = await client.post(f"{LOGIN}?lifetime=legacy", json={"email": "ada@example.com", "password": PASSWORD})
        platform = await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})
        clock.advance(hours=2)
        refreshed = await refresh(client, legacy.json()["refresh_token"])
        still_valid = await client.get(ME, headers=bearer(legacy.json()))

    assert legacy.json()["expires_in"] == 86400
    access = jwt.decode(legacy.json()["access_token"], options={"verify_signature": False})
    assert access["exp"] - access["iat"] == 86400
    assert platform.json()["expires_in"] == 900
    assert refreshed.json()["expires_in"] == 86400  # the session keeps the lifetime it asked for
    assert still_valid.status_code == 200


@pytest.mark.parametrize(("value", "seconds"), [("24h", 86400), ("7d", 604800), ("30m", 1800), ("3600", 3600)])
def test_jwt_expires_in_reads_the_older_platforms_forms(value: str, seconds: int) -> None:
    assert load_settings(AuthSettings, {"JWT_EXPIRES_IN": value}).legacy_token_ttl == seconds


@pytest.mark.parametrize("value", ["24x", "h", "-1h", "31d", "0"])
def test_jwt_expires_in_refuses_what_it_cannot_read(value: str) -> None:
    with pytest.raises(SettingsError, match="JWT_EXPIRES_IN"):
        load_settings(AuthSettings, {"JWT_EXPIRES_IN": value})
