"""The older platform service's auth routes, through the gateway in front of the real auth service:
the old request and response shapes, the API key, deprecation headers, and the platform's
admission (tokens, revocation, rate limits) applied to them."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from gateway.app import create_app
from gateway.config import GatewaySettings
from shared.settings import SettingsError
from tests.auth_service.conftest import Clock
from tests.conftest import app_client
from tests.gateway.conftest import AUTH, PASSWORD, USERS, SettingsFactory, assert_problem, bearer
from tests.user_service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    clean_users_database,
    user_settings,
    users_app,
    users_database,
)

API_KEY = "legacy-clients-key-0123456789"
KEY = {"X-API-Key": API_KEY}
LEGACY_AUTH_ROUTES = [
    ("POST", "/auth/register"),
    ("POST", "/register"),
    ("POST", "/auth/login"),
    ("POST", "/login"),
    ("GET", "/auth/verify"),
    ("GET", "/verify"),
    ("GET", "/auth/profile"),
    ("GET", "/profile"),
    ("PUT", "/auth/profile"),
    ("PUT", "/profile"),
    ("DELETE", "/auth/users/{id}"),
]
USER_FIELDS = {"id", "email", "first_name", "last_name", "is_active", "created_at"}


@pytest.fixture
def legacy_platform(make_settings: SettingsFactory, auth_app: Litestar, users_app: Litestar) -> Litestar:  # noqa: F811
    return create_app(make_settings(api_key=API_KEY, request_timeout=10.0), services={AUTH: auth_app, USERS: users_app})


@pytest.fixture
async def legacy(legacy_platform: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(legacy_platform) as test_client:
        yield test_client


async def legacy_register(client: httpx.AsyncClient, path: str = "/auth/register", **fields: Any) -> httpx.Response:
    body = {"email": "ada@example.com", "password": PASSWORD, "first_name": "Ada", "last_name": "Lovelace", **fields}
    return await client.post(path, json=body, headers=KEY)


def assert_deprecated(response: httpx.Response, successor: str) -> None:
    assert response.headers["deprecation"] == "@1796083200"
    assert response.headers["link"] == f'<{successor}>; rel="successor-version"'


@pytest.mark.parametrize("path", ["/auth/register", "/register"])
async def test_register_answers_the_old_token_shape(legacy: httpx.AsyncClient, path: str) -> None:
    response = await legacy_register(legacy, path)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "user", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert set(body["user"]) == USER_FIELDS
    assert body["user"]["email"] == "ada@example.com"
    assert (body["user"]["first_name"], body["user"]["last_name"]) == ("Ada", "Lovelace")
    assert body["user"]["is_active"] is True
    assert_deprecated(response, f"{AUTH}/register")
    assert "ratelimit-policy" in response.headers
    # The token is a platform access token: it opens the new routes too.
    me = await legacy.get(f"{AUTH}/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == body["user"]["id"]


async def test_register_refusals_are_400_with_a_detail(legacy: httpx.AsyncClient) -> None:
    assert (await legacy_register(legacy)).status_code == 200

    taken = await legacy_register(legacy)
    short = await legacy_register(legacy, email="grace@example.com", password="short")

    for response in (taken, short):
        body = assert_problem(response, 400)
        assert body["detail"]
        assert_deprecated(response, f"{AUTH}/register")
    assert "already" in taken.json()["detail"].lower()


@pytest.mark.parametrize("path", ["/auth/login", "/login"])
async def test_login_answers_the_old_token_shape(legacy: httpx.AsyncClient, path: str) -> None:
    registered = (await legacy_register(legacy)).json()

    response = await legacy.post(path, json={"email": "ada@example.com", "password": PASSWORD}, headers=KEY)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["user"]["id"] == registered["user"]["id"]
    assert body["access_token"] != registered["access_token"]
    assert_deprecated(response, f"{AUTH}/login")


async def test_wrong_password_and_unknown_email_are_the_same_401(legacy: httpx.AsyncClient) -> None:
    await legacy_register(legacy)

    wrong = await legacy.post("/login", json={"email": "ada@example.com", "password": "not it at all"}, headers=KEY)
    unknown = await legacy.post("/login", json={"email": "bob@example.com", "password": PASSWORD}, headers=KEY)

    for response in (wrong, unknown):
        assert assert_problem(response, 401)["detail"] == "Invalid credentials"
        assert_deprecated(response, f"{AUTH}/login")


async def test_login_with_a_malformed_body_is_422(legacy: httpx.AsyncClient) -> None:
    response = await legacy.post("/auth/login", json={"email": "ada@example.com"}, headers=KEY)

    assert_problem(response, 422)


@pytest.mark.parametrize("path", ["/auth/verify", "/verify"])
async def test_verify_answers_valid_with_the_user(legacy: httpx.AsyncClient, path: str) -> None:
    token = (await legacy_register(legacy)).json()["access_token"]

    response = await legacy.get(path, headers={**KEY, **bearer(token)})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is True
    assert set(body["user"]) == USER_FIELDS
    assert_deprecated(response, f"{AUTH}/verify")


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic YWRhOnB3"])
async def test_verify_without_a_valid_token_is_401_not_500(legacy: httpx.AsyncClient, authorization: str) -> None:
    headers = {**KEY, **({"Authorization": authorization} if authorization else {})}

    response = await legacy.get("/verify", headers=headers)

    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_verify_refuses_a_token_after_logout(legacy: httpx.AsyncClient) -> None:
    token = (await legacy_register(legacy)).json()["access_token"]
    logout = await legacy.post(f"{AUTH}/logout", headers=bearer(token))
    assert logout.status_code == 204, logout.text

    response = await legacy.get("/auth/verify", headers={**KEY, **bearer(token)})

    assert_problem(response, 401)


@pytest.mark.parametrize("path", ["/auth/profile", "/profile"])
async def test_profile_reads_and_updates_names_but_not_the_email(legacy: httpx.AsyncClient, path: str) -> None:
    registered = (await legacy_register(legacy)).json()
    caller = {**KEY, **bearer(registered["access_token"])}

    # The profile gets the names from the registration event, a moment after the account exists.
    for _ in range(200):
        read = await legacy.get(path, headers=caller)
        assert read.status_code == 200, read.text
        if read.json()["last_name"] == "Lovelace":
            break
        await asyncio.sleep(0.05)
    assert read.json()["id"] == registered["user"]["id"]
    assert set(read.json()) == USER_FIELDS
    assert_deprecated(read, f"{USERS}/me")

    update = {"email": "someone-else@example.com", "first_name": "Augusta"}
    updated = await legacy.put(path, json=update, headers=caller)
    assert updated.status_code == 200, updated.text
    assert updated.json()["first_name"] == "Augusta"
    assert updated.json()["last_name"] == "Lovelace"
    assert updated.json()["email"] == "ada@example.com"
    assert (await legacy.get(path, headers=caller)).json() == updated.json()

    missing_email = await legacy.put(path, json={"first_name": "Ada"}, headers=caller)
    assert_problem(missing_email, 422)
    assert_problem(await legacy.get(path, headers=KEY), 401)


async def test_deactivate_closes_only_your_own_account(legacy: httpx.AsyncClient) -> None:
    ada = (await legacy_register(legacy)).json()
    grace = (await legacy_register(legacy, email="grace@example.com")).json()
    ada_caller = {**KEY, **bearer(ada["access_token"])}

    someone_else = await legacy.delete(f"/auth/users/{grace['user']['id']}", headers=ada_caller)
    assert_problem(someone_else, 403)

    own = await legacy.delete(f"/auth/users/{ada['user']['id']}", headers=ada_caller)
    assert own.status_code == 200, own.text
    assert own.json() == {"message": "User account deactivated successfully"}
    assert_deprecated(own, f"{USERS}/{{id}}")
    # The account closes when auth has applied user.deleted: sign-in then fails, and so does the old token.
    login = {"email": "ada@example.com", "password": PASSWORD}
    for _ in range(200):
        if (await legacy.post(f"{AUTH}/login", json=login)).status_code == 401:
            break
        await asyncio.sleep(0.05)
    assert_problem(await legacy.post("/auth/login", json=login, headers=KEY), 401)
    assert_problem(await legacy.get("/verify", headers=ada_caller), 401)
    grace_profile = await legacy.get("/profile", headers={**KEY, **bearer(grace["access_token"])})
    assert grace_profile.status_code == 200, grace_profile.text


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": ""}, {"X-API-Key": API_KEY[:-1] + "x"}, {"X-API-Key": API_KEY + "x"}, {"X-Api-Key": "nope"}],
    ids=["missing", "empty", "last-char", "longer", "wrong"],
)
async def test_legacy_routes_refuse_a_missing_or_wrong_api_key(legacy: httpx.AsyncClient, headers: Any) -> None:
    body = {"email": "ada@example.com", "password": PASSWORD}
    registered = (await legacy.post(f"{AUTH}/register", json=body)).json()
    caller = {**headers, **bearer(registered["access_token"])}
    user_id = registered["user"]["id"]

    for method, path in LEGACY_AUTH_ROUTES:
        response = await legacy.request(method, path.format(id=user_id), json={**body, "new": 1}, headers=caller)
        assert assert_problem(response, 401, "invalid-api-key")["detail"], (method, path)
    # Nothing happened: the account is still open, with its name unchanged.
    assert (await legacy.post(f"{AUTH}/login", json=body)).status_code == 200
    assert (await legacy.get("/profile", headers={**KEY, **bearer(registered["access_token"])})).status_code == 200


async def test_api_key_not_needed_when_not_required(make_settings: SettingsFactory, auth_app: Litestar) -> None:
    app = create_app(make_settings(require_api_key=False, request_timeout=10.0), services={AUTH: auth_app})
    async with app_client(app) as client:
        body = {"email": "ada@example.com", "password": PASSWORD}
        response = await client.post("/register", json=body)

    assert response.status_code == 200, response.text


async def test_without_api_key_setting_development_makes_one_in_data_dir(
    make_settings: SettingsFactory, auth_app: Litestar, tmp_path: Path
) -> None:
    app = create_app(make_settings(request_timeout=10.0), services={AUTH: auth_app})
    key = (tmp_path / "api_key").read_text().strip()
    assert len(key) >= 32
    assert (tmp_path / "api_key").stat().st_mode & 0o077 == 0
    async with app_client(app) as client:
        body = {"email": "ada@example.com", "password": PASSWORD}
        refused = await client.post("/register", json=body)
        accepted = await client.post("/register", json=body, headers={"X-API-Key": key})

    assert refused.status_code == 401
    assert accepted.status_code == 200, accepted.text


async def test_legacy_login_shares_the_strict_auth_rate_limit(legacy: httpx.AsyncClient) -> None:
    body = {"email": "ada@example.com", "password": "wrong password"}
    statuses = [(await legacy.post("/login", json=body, headers=KEY)).status_code for _ in range(8)]

    assert 429 in statuses, statuses
    limited = await legacy.post("/login", json=body, headers=KEY)
    assert_problem(limited, 429, "quota-exceeded")
    assert int(limited.headers["retry-after"]) >= 1
    assert_deprecated(limited, f"{AUTH}/login")


def test_production_refuses_to_start_without_an_api_key_when_one_is_required() -> None:
    secret = "a-production-jwt-secret-of-48-bytes-0123456789ab"
    with pytest.raises(SettingsError, match=r"^API_KEY"):
        GatewaySettings(environment="production", jwt_secret=secret).validate()
    with pytest.raises(SettingsError, match=r"^API_KEY"):
        GatewaySettings(environment="production", jwt_secret=secret, api_key="short").validate()
    with pytest.raises(SettingsError, match=r"^API_KEY"):
        GatewaySettings(environment="production", jwt_secret=secret, api_key="your-secure-api-key").validate()
    GatewaySettings(environment="production", jwt_secret=secret, require_api_key=False).validate()
    GatewaySettings(environment="production", jwt_secret=secret, api_key=API_KEY).validate()


async def test_jwt_expires_in_sets_the_lifetime_of_the_legacy_tokens(
    make_settings: SettingsFactory,
    auth_settings: AuthSettings,
    clock: Clock,
    users_app: Litestar,  # noqa: F811
) -> None:
    """The older platform's deployments set JWT_EXPIRES_IN=24h: its routes issue day-long tokens,
    renewable with the refresh token they now carry, while the platform's own stay short."""
    auth_app = create_auth_app(msgspec.structs.replace(auth_settings, jwt_expires_in="24h"), clock=clock)
    gateway = create_app(
        make_settings(api_key=API_KEY, request_timeout=10.0), services={AUTH: auth_app, USERS: users_app}
    )
    async with app_client(gateway) as client:
        registered = await legacy_register(client)
        legacy = await client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD}, headers=KEY)
        platform = await client.post(f"{AUTH}/login", json={"email": "ada@example.com", "password": PASSWORD})
        renewed = await client.post(f"{AUTH}/refresh", json={"refresh_token": legacy.json()["refresh_token"]})

    for response in (registered, legacy):
        assert response.status_code == 200, response.text
        assert response.json()["expires_in"] == 86400
        claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 86400
    assert platform.json()["expires_in"] == 900
    assert renewed.json()["expires_in"] == 86400


async def test_a_refresh_token_alone_logs_out_through_the_gateway(legacy: httpx.AsyncClient) -> None:
    """The Go services' clients: ``POST /api/v1/auth/logout {"refresh_token": ...}``, no bearer."""
    registered = (await legacy_register(legacy)).json()

    logout = await legacy.post(f"{AUTH}/logout", json={"refresh_token": registered["refresh_token"]})
    renewed = await legacy.post(f"{AUTH}/refresh", json={"refresh_token": registered["refresh_token"]})
    verified = await legacy.get("/auth/verify", headers={**KEY, **bearer(registered["access_token"])})

    assert logout.status_code == 204, logout.text
    assert_problem(renewed, 401)
    assert_problem(verified, 401)


async def test_legacy_register_answers_202_while_addresses_must_be_verified(
    make_settings: SettingsFactory,
    auth_settings: AuthSettings,
    clock: Clock,
    users_app: Litestar,  # noqa: F811
) -> None:
    auth_app = create_auth_app(msgspec.structs.replace(auth_settings, require_verified_email=True), clock=clock)
    gateway = create_app(
        make_settings(api_key=API_KEY, request_timeout=10.0), services={AUTH: auth_app, USERS: users_app}
    )
    async with app_client(gateway) as client:
        first = await legacy_register(client)
        again = await legacy_register(client)
        login = await client.post("/login", json={"email": "ada@example.com", "password": PASSWORD}, headers=KEY)

    for response in (first, again):
        assert response.status_code == 202, response.text
        assert set(response.json()) == {"message"}
        assert_deprecated(response, f"{AUTH}/register")
    assert first.json() == again.json()
    assert login.status_code == 403
    assert login.json()["code"] == "email-unverified"


@pytest.mark.parametrize("path", ["/auth/register", "/register"])
async def test_legacy_register_obeys_the_signup_mode(
    make_settings: SettingsFactory,
    auth_settings: AuthSettings,
    clock: Clock,
    users_app: Litestar,  # noqa: F811
    path: str,
) -> None:
    auth_app = create_auth_app(msgspec.structs.replace(auth_settings, signup_mode="invite"), clock=clock)
    gateway = create_app(
        make_settings(api_key=API_KEY, request_timeout=10.0), services={AUTH: auth_app, USERS: users_app}
    )
    async with app_client(gateway) as client:
        refused = await legacy_register(client, path)
        login = await client.post("/login", json={"email": "ada@example.com", "password": PASSWORD}, headers=KEY)

    assert refused.status_code == 403, refused.text
    assert_deprecated(refused, f"{AUTH}/register")
    assert login.status_code == 401  # no account was made
