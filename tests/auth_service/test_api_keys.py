"""API keys at the auth service: personal keys of a user, service keys of the platform (admins
only), the secret shown once and stored only as a keyed hash, expiry, revocation, and the
introspection the gateway exchanges a key at."""

import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from auth_service.config import AuthSettings
from shared.settings import SettingsError
from tests.auth_service.conftest import JWT_SECRET, Clock, admin_headers, bearer, register

KEYS = "/api/v1/auth/api-keys"
SERVICE_KEYS = "/api/v1/auth/service-keys"
INTROSPECT = "/api/v1/auth/internal/api-keys/introspect"


async def create_key(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post(KEYS, json={"name": "ci", "scopes": ["analytics:write"], **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def introspect(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(INTROSPECT, json={"key": key})


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="pyairtable-api")
    return decoded


async def test_a_personal_key_is_shown_once_and_listed_by_its_prefix(client: httpx.AsyncClient) -> None:
    headers = bearer(await register(client))
    created = await create_key(client, headers, scopes=["users:read", "analytics:write"])
    key = created["key"]
    kind, key_id, secret = key.split("_", 2)
    assert (kind, key_id) == ("pat", uuid.UUID(created["id"]).hex)
    assert len(secret) >= 43  # 256 bits in base64url
    assert key.startswith(created["prefix"] + "_") and secret not in created["prefix"]

    listed = (await client.get(KEYS, headers=headers)).json()["keys"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert "key" not in listed[0] and secret not in str(listed)
    assert listed[0]["scopes"] == ["analytics:write", "users:read"]
    assert listed[0]["last_used_at"] is None


async def test_the_secret_is_stored_only_as_a_keyed_hash(client: httpx.AsyncClient, clean_auth_database: str) -> None:
    headers = bearer(await register(client))
    secret = (await create_key(client, headers))["key"].split("_", 2)[2]
    with psycopg.connect(clean_auth_database) as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            dump = " ".join(row[0] for row in conn.execute(f'SELECT t::text FROM "{table}" t'))  # noqa: S608
            assert secret not in dump, table
        stored = conn.execute("SELECT secret_hash FROM api_keys").fetchone()
    assert stored is not None and len(stored[0]) == 64


async def test_a_valid_key_is_exchanged_for_a_short_lived_token_of_its_owner(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    created = await create_key(client, bearer(tokens), scopes=["analytics:read"])
    answer = await introspect(client, created["key"])
    assert answer.status_code == 200, answer.text
    claims = claims_of(answer.json()["access_token"])
    assert claims["sub"] == tokens["user"]["id"]
    assert claims["key_id"] == claims["sid"] == created["id"]
    assert claims["scopes"] == ["analytics:read"]
    assert claims["exp"] - claims["iat"] == answer.json()["expires_in"] <= 900
    listed = (await client.get(KEYS, headers=bearer(tokens))).json()["keys"]
    assert listed[0]["last_used_at"] is not None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda key: key[:-2] + ("AA" if not key.endswith("AA") else "BB"),  # a wrong secret
        lambda key: "psk_" + key[4:],  # a personal key presented as a service key
        lambda key: key.rsplit("_", 1)[0],  # the prefix alone
        lambda key: "pat_" + uuid.uuid4().hex + "_" + key.split("_", 2)[2],  # an unknown id
        lambda key: "pat_nothex_secret",
    ],
    ids=["wrong-secret", "wrong-kind", "prefix-only", "unknown-id", "malformed"],
)
async def test_anything_but_the_exact_key_is_refused(client: httpx.AsyncClient, tamper: Any) -> None:
    created = await create_key(client, bearer(await register(client)))
    refused = await introspect(client, tamper(created["key"]))
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid-api-key"


async def test_an_expired_key_is_refused(client: httpx.AsyncClient, clock: Clock) -> None:
    headers = bearer(await register(client))
    created = await create_key(client, headers, expires_at=(clock.now + timedelta(hours=1)).isoformat())
    assert (await introspect(client, created["key"])).status_code == 200
    clock.advance(hours=1, seconds=1)
    assert (await introspect(client, created["key"])).status_code == 401


async def test_an_expiry_in_the_past_is_a_422(client: httpx.AsyncClient, clock: Clock) -> None:
    headers = bearer(await register(client))
    past = (clock.now - timedelta(seconds=1)).isoformat()
    response = await client.post(
        KEYS, json={"name": "ci", "scopes": ["users:read"], "expires_at": past}, headers=headers
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [{"name": "ci", "scopes": ["admin"]}, {"name": "ci", "scopes": []}, {"name": "", "scopes": ["users:read"]}],
    ids=["unknown-scope", "no-scope", "no-name"],
)
async def test_a_malformed_key_request_is_a_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    headers = bearer(await register(client))
    response = await client.post(KEYS, json=body, headers=headers)
    assert response.status_code == 422


async def test_a_revoked_key_is_refused_and_no_longer_listed(client: httpx.AsyncClient) -> None:
    headers = bearer(await register(client))
    created = await create_key(client, headers)
    assert (await client.delete(f"{KEYS}/{created['id']}", headers=headers)).status_code == 204
    assert (await introspect(client, created["key"])).status_code == 401
    assert (await client.get(KEYS, headers=headers)).json()["keys"] == []
    assert (await client.delete(f"{KEYS}/{created['id']}", headers=headers)).status_code == 404


async def test_nobody_revokes_or_sees_another_users_key(client: httpx.AsyncClient) -> None:
    owner = bearer(await register(client, "ada@example.com"))
    other = bearer(await register(client, "bob@example.com"))
    created = await create_key(client, owner)
    assert (await client.get(KEYS, headers=other)).json()["keys"] == []
    assert (await client.delete(f"{KEYS}/{created['id']}", headers=other)).status_code == 404
    assert (await introspect(client, created["key"])).status_code == 200


async def test_a_deactivated_owners_key_is_refused(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    created = await create_key(client, bearer(tokens))
    path = f"/api/v1/auth/users/{tokens['user']['id']}"
    assert (await client.patch(path, json={"is_active": False}, headers=admin_headers())).status_code == 200
    assert (await introspect(client, created["key"])).status_code == 401


async def test_service_keys_are_the_platforms_and_managed_by_admins_only(client: httpx.AsyncClient) -> None:
    user = bearer(await register(client))
    body = {"name": "billing backend", "scopes": ["analytics:write"]}
    assert (await client.post(SERVICE_KEYS, json=body, headers=user)).status_code == 403
    assert (await client.get(SERVICE_KEYS, headers=user)).status_code == 403

    created = (await client.post(SERVICE_KEYS, json=body, headers=admin_headers())).json()
    assert created["key"].startswith("psk_") and created["kind"] == "service"
    claims = claims_of((await introspect(client, created["key"])).json()["access_token"])
    assert claims["sub"] == created["id"] and claims["roles"] == ["service"]
    assert [key["id"] for key in (await client.get(SERVICE_KEYS, headers=admin_headers())).json()["keys"]] == [
        created["id"]
    ]
    assert (await client.get(KEYS, headers=user)).json()["keys"] == []  # not anybody's personal key
    assert (await client.delete(f"{SERVICE_KEYS}/{created['id']}", headers=user)).status_code == 403
    assert (await client.delete(f"{SERVICE_KEYS}/{created['id']}", headers=admin_headers())).status_code == 204
    assert (await introspect(client, created["key"])).status_code == 401


async def test_a_keys_token_cannot_manage_keys(client: httpx.AsyncClient) -> None:
    created = await create_key(client, bearer(await register(client)), scopes=["users:write"])
    key_token = {"Authorization": f"Bearer {(await introspect(client, created['key'])).json()['access_token']}"}
    refused = await client.post(KEYS, json={"name": "more", "scopes": ["users:write"]}, headers=key_token)
    assert refused.status_code == 403 and refused.json()["code"] == "key-token"
    assert (await client.get(KEYS, headers=key_token)).status_code == 403
    assert (await client.delete(f"{KEYS}/{created['id']}", headers=key_token)).status_code == 403


@pytest.mark.parametrize(
    "settings",
    [{"api_key_token_ttl": 5}, {"api_key_token_ttl": 901}, {"api_key_pepper": "short"}, {"api_key": "short"}],
)
def test_key_settings_out_of_bounds_are_refused_at_start(settings: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        AuthSettings(**settings).validate()
