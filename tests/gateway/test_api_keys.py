"""API keys at the gateway, in front of the real auth service and echo upstreams: a key (as a bearer
or in ``X-API-Key``) is exchanged for a short-lived access token that is forwarded in its place,
its scopes decide what it reaches (deny by default), it has a rate limit of its own, a revoked
key is refused, and its requests are the owner's usage."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from litestar import Litestar

from gateway.app import create_app
from shared.usage import InMemoryUsageChannel
from tests.auth_service.conftest import JWT_SECRET
from tests.conftest import app_client, eventually
from tests.gateway.conftest import AUTH, USERS, SettingsFactory, assert_problem, bearer, register
from tests.gateway.echo import Echo

ANALYTICS = "/api/v1/analytics"
AIRTABLE = "/api/v1/airtable"
SCOPED = {USERS: "users", ANALYTICS: "analytics", AIRTABLE: "airtable"}
SCOPES = [f"{name}:{access}" for name in SCOPED.values() for access in ("read", "write")]
LEGACY_API_KEY = "deployment-legacy-key-0123456789"


@pytest.fixture
def echoes() -> dict[str, Echo]:
    return {prefix: Echo(prefix) for prefix in SCOPED}


@pytest.fixture
def usage() -> InMemoryUsageChannel:
    return InMemoryUsageChannel()


@pytest.fixture
def keyed_gateway(
    make_settings: SettingsFactory, auth_app: Litestar, echoes: dict[str, Echo], usage: InMemoryUsageChannel
) -> Litestar:
    settings = make_settings(request_timeout=10.0, api_key=LEGACY_API_KEY, rate_limit_per_minute=1000)
    return create_app(settings, services={AUTH: auth_app, **echoes}, usage=usage)


@pytest.fixture
async def client(keyed_gateway: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(keyed_gateway) as test_client:
        yield test_client


async def new_key(client: httpx.AsyncClient, tokens: dict[str, Any], *scopes: str) -> dict[str, Any]:
    response = await client.post(
        f"{AUTH}/api-keys", json={"name": "ci", "scopes": list(scopes)}, headers=bearer(tokens["access_token"])
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def as_bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def as_api_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.mark.parametrize("present", [as_bearer, as_api_key], ids=["bearer", "x-api-key"])
async def test_scopes_matrix(client: httpx.AsyncClient, present: Any) -> None:
    """Each scope opens exactly its own service and access (GET reads; POST, PUT, PATCH, DELETE write)."""
    tokens = await register(client)
    for scope in SCOPES:
        key = (await new_key(client, tokens, scope))["key"]
        for prefix, service in SCOPED.items():
            for method in ("GET", "POST", "PATCH", "DELETE"):
                needed = f"{service}:{'read' if method == 'GET' else 'write'}"
                response = await client.request(method, f"{prefix}/things", headers=present(key))
                if needed == scope:
                    assert response.status_code == 200, (scope, method, prefix, response.text)
                else:
                    body = assert_problem(response, 403, "insufficient-scope")
                    assert needed in body["detail"], (scope, method, prefix)


async def test_a_key_with_every_scope_reaches_no_route_outside_them(client: httpx.AsyncClient) -> None:
    key = (await new_key(client, await register(client), *SCOPES))["key"]
    for path in (f"{AUTH}/me", f"{AUTH}/api-keys", f"{AUTH}/sessions"):
        assert_problem(await client.get(path, headers=as_bearer(key)), 403, "insufficient-scope")
    assert_problem(await client.post(f"{AUTH}/api-keys", json={}, headers=as_bearer(key)), 403, "insufficient-scope")


async def test_the_upstream_gets_a_short_lived_token_never_the_key(
    client: httpx.AsyncClient, echoes: dict[str, Echo]
) -> None:
    tokens = await register(client)
    created = await new_key(client, tokens, "users:read")
    assert (await client.get(f"{USERS}/me", headers=as_api_key(created["key"]))).status_code == 200

    seen = echoes[USERS].seen[-1]
    assert seen.header_values("x-api-key") == []
    assert created["key"] not in str(seen.headers)
    (authorization,) = seen.header_values("authorization")
    claims = jwt.decode(
        authorization.removeprefix("Bearer "), JWT_SECRET, algorithms=["HS256"], audience="pyairtable-api"
    )
    assert claims["sub"] == tokens["user"]["id"]
    assert (claims["key_id"], claims["scopes"]) == (created["id"], ["users:read"])


async def test_the_keys_token_keeps_the_keys_scopes_when_used_directly(
    client: httpx.AsyncClient, echoes: dict[str, Echo]
) -> None:
    key = (await new_key(client, await register(client), "users:read"))["key"]
    await client.get(f"{USERS}/me", headers=as_bearer(key))
    (authorization,) = echoes[USERS].seen[-1].header_values("authorization")
    token_headers = {"Authorization": authorization}
    assert (await client.get(f"{USERS}/me", headers=token_headers)).status_code == 200
    assert_problem(await client.get(f"{ANALYTICS}/costs", headers=token_headers), 403, "insufficient-scope")


@pytest.mark.parametrize(
    "key",
    ["pat_0123456789abcdef0123456789abcdef_guess", "psk_nothing", "pat_"],
    ids=["unknown", "malformed-service", "empty"],
)
async def test_an_unknown_key_is_a_401(client: httpx.AsyncClient, key: str) -> None:
    for headers in (as_bearer(key), as_api_key(key)):
        response = await client.get(f"{USERS}/me", headers=headers)
        assert_problem(response, 401)


async def test_a_revoked_key_is_refused_at_once_by_this_gateway(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    created = await new_key(client, tokens, "users:read")
    assert (await client.get(f"{USERS}/me", headers=as_bearer(created["key"]))).status_code == 200
    revoked = await client.delete(f"{AUTH}/api-keys/{created['id']}", headers=bearer(tokens["access_token"]))
    assert revoked.status_code == 204
    # The key's token is still in this gateway's cache: the revocation mark in Redis refuses it.
    assert_problem(await client.get(f"{USERS}/me", headers=as_bearer(created["key"])), 401)


async def test_the_introspection_route_is_not_reachable_through_the_gateway(client: httpx.AsyncClient) -> None:
    key = (await new_key(client, await register(client), "users:read"))["key"]
    response = await client.post(f"{AUTH}/internal/api-keys/introspect", json={"key": key})
    assert_problem(response, 404)


async def test_the_deployments_api_key_is_no_credential_on_platform_routes(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{USERS}/me", headers=as_api_key(LEGACY_API_KEY))
    assert_problem(response, 401)


async def test_each_key_has_its_own_rate_limit(
    make_settings: SettingsFactory, auth_app: Litestar, echoes: dict[str, Echo]
) -> None:
    settings = make_settings(request_timeout=10.0, rate_limit_per_minute=3, rate_limit_burst=3)
    gateway = create_app(settings, services={AUTH: auth_app, **echoes})
    async with app_client(gateway) as client:
        tokens = (await client.post(f"{AUTH}/register", json={"email": "ada@example.com", "password": "x" * 12})).json()
        first = (await new_key(client, tokens, "users:read"))["key"]
        second = (await new_key(client, tokens, "users:read"))["key"]
        answers = [(await client.get(f"{USERS}/me", headers=as_bearer(first))).status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        assert (await client.get(f"{USERS}/me", headers=as_bearer(second))).status_code == 200


async def test_a_keys_requests_are_its_owners_usage(client: httpx.AsyncClient, usage: InMemoryUsageChannel) -> None:
    tokens = await register(client)
    key = (await new_key(client, tokens, "airtable:read"))["key"]
    assert (await client.get(f"{AIRTABLE}/bases", headers=as_api_key(key))).status_code == 200

    async def keyed_record() -> Any:
        messages = await usage.read(100, 0.1)
        await usage.ack([message.id for message in messages])  # else the next read gives them again
        for message in messages:
            for record in message.records:
                if record.route == AIRTABLE:
                    return record
        return None

    record = await eventually(keyed_record, "the key's usage record")
    assert record.user_id == tokens["user"]["id"]
