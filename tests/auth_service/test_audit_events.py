"""Audit events of the auth service's security actions: each action, done through the HTTP API,
leaves exactly one ``audit.recorded`` row in the real ``outbox`` table (who, what, from where), no
audit payload holds a secret or an address, and the outbox relay puts the events on the bus."""

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import psycopg
import pyotp
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared import migrations
from shared.events import new_event
from tests.auth_service.conftest import PASSWORD, Clock, admin_headers, bearer, mail_to, register
from tests.conftest import app_client, eventually
from tests.mail_server import Inbox, token_in

AUTH = "/api/v1/auth"
EMAIL = "ada@example.com"
NEW_PASSWORD = "a brand new passphrase"
CLIENT_IP = "203.0.113.9"  # the test client's address, as the service sees it
REQUEST_ID = "audit-test-request-0001"
ALLOWED_FAILURES = 5  # LOGIN_FAILURES_BEFORE_LOCKOUT's default


@pytest.fixture
def app(mail_settings: AuthSettings, clock: Clock) -> Litestar:
    return create_app(mail_settings, clock=clock)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(app, client_ip=CLIENT_IP) as test_client:
        yield test_client


@pytest.fixture
def database(clean_auth_database: str) -> str:
    return clean_auth_database


def audit_entries(database: str) -> list[dict[str, Any]]:
    """Every audit event's data in the outbox, oldest first."""
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT payload FROM outbox WHERE event_type = 'audit.recorded' ORDER BY occurred_at"
        ).fetchall()
    return [row[0] for row in rows]


def only(database: str, action: str) -> dict[str, Any]:
    """The one audit entry of ``action``."""
    found = [entry for entry in audit_entries(database) if entry["action"] == action]
    assert len(found) == 1, found
    return found[0]


def count(database: str, action: str) -> int:
    return sum(1 for entry in audit_entries(database) if entry["action"] == action)


def assert_no_secrets(database: str, *secrets: str) -> None:
    """No audit payload holds any of ``secrets`` (nor a password or an address of the test)."""
    payloads = json.dumps(audit_entries(database)).lower()
    for secret in (PASSWORD, NEW_PASSWORD, EMAIL, "@", *secrets):
        assert secret.lower() not in payloads, secret


def claims(tokens: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return decoded


def user_id(tokens: dict[str, Any]) -> str:
    return str(claims(tokens)["sub"])


def about(tokens: dict[str, Any]) -> dict[str, Any]:
    """What an entry about the account of ``tokens`` says of its target and organisation."""
    return {"organization_id": claims(tokens)["tid"], "target_type": "user", "target_id": user_id(tokens)}


def assert_entry(entry: dict[str, Any], actor_id: str | None, **expected: Any) -> None:
    assert entry["actor_id"] == actor_id
    assert entry["ip"] == CLIENT_IP
    for key, value in expected.items():
        assert entry[key] == value, key


async def login(client: httpx.AsyncClient, password: str = PASSWORD, email: str = EMAIL) -> httpx.Response:
    return await client.post(f"{AUTH}/login", json={"email": email, "password": password})


async def turn_on_two_factor(client: httpx.AsyncClient, tokens: dict[str, Any], clock: Clock) -> tuple[str, list[str]]:
    """Two-factor on; the clock then moves a step on so the next code is fresh."""
    enrolled = await client.post(f"{AUTH}/2fa/enroll", json={"password": PASSWORD}, headers=bearer(tokens))
    assert enrolled.status_code == 201, enrolled.text
    secret: str = enrolled.json()["secret"]
    code = pyotp.TOTP(secret).at(clock.now)
    confirmed = await client.post(f"{AUTH}/2fa/confirm", json={"code": code}, headers=bearer(tokens))
    assert confirmed.status_code == 200, confirmed.text
    clock.advance(seconds=30)
    return secret, confirmed.json()["recovery_codes"]


def wrong_code(secret: str, clock: Clock) -> str:
    right = pyotp.TOTP(secret).at(clock.now)
    return f"{(int(right) + 1) % 1_000_000:06d}"


# -- sign-in ------------------------------------------------------------------------------------


async def test_a_sign_in_is_recorded_with_the_user_the_address_and_the_request(
    client: httpx.AsyncClient, database: str
) -> None:
    await register(client)
    response = await client.post(
        f"{AUTH}/login", json={"email": EMAIL, "password": PASSWORD}, headers={"X-Request-ID": REQUEST_ID}
    )

    assert response.status_code == 200
    tokens = response.json()
    entry = only(database, "login.succeeded")
    assert_entry(entry, user_id(tokens), request_id=REQUEST_ID, details={}, **about(tokens))
    assert_no_secrets(database, tokens["access_token"], tokens["refresh_token"])


async def test_a_wrong_password_is_recorded_against_the_account_without_an_actor(
    client: httpx.AsyncClient, database: str
) -> None:
    tokens = await register(client)

    refused = await login(client, "not the password at all")

    assert refused.status_code == 401
    assert_entry(only(database, "login.failed"), None, **about(tokens))
    assert count(database, "login.succeeded") == 0
    assert_no_secrets(database, "not the password at all")


async def test_a_sign_in_with_an_unknown_address_is_recorded_without_the_address(
    client: httpx.AsyncClient, database: str
) -> None:
    refused = await login(client, PASSWORD, "nobody@example.net")

    assert refused.status_code == 401
    assert_entry(only(database, "login.failed"), None, organization_id=None, target_type=None, target_id=None)
    assert_no_secrets(database, "nobody")


async def test_the_failure_that_locks_an_account_is_recorded_once(client: httpx.AsyncClient, database: str) -> None:
    tokens = await register(client)

    answers = [(await login(client, f"wrong password {n}")).status_code for n in range(ALLOWED_FAILURES + 2)]

    assert answers == [401] * ALLOWED_FAILURES + [429, 429]
    assert_entry(only(database, "login.locked"), None, **about(tokens))
    # Refused attempts of a locked account record nothing: the throttle bounds what a client writes.
    assert count(database, "login.failed") == ALLOWED_FAILURES
    assert_no_secrets(database, "wrong password")


async def test_wrong_current_passwords_that_lock_an_account_are_recorded_too(
    client: httpx.AsyncClient, database: str
) -> None:
    tokens = await register(client)

    answers = [
        (
            await client.post(
                f"{AUTH}/password",
                json={"current_password": f"wrong password {n}", "new_password": NEW_PASSWORD},
                headers=bearer(tokens),
            )
        ).status_code
        for n in range(ALLOWED_FAILURES + 1)
    ]

    assert answers == [401] * ALLOWED_FAILURES + [429]
    assert_entry(only(database, "login.locked"), None, **about(tokens))
    assert count(database, "password.changed") == 0
    assert_no_secrets(database, "wrong password")


async def test_a_wrong_second_factor_is_recorded_and_a_right_one_signs_in(
    client: httpx.AsyncClient, database: str, clock: Clock
) -> None:
    tokens = await register(client)
    secret, recovery_codes = await turn_on_two_factor(client, tokens, clock)
    challenge = (await login(client)).json()["challenge"]

    refused = await client.post(f"{AUTH}/login/mfa", json={"challenge": challenge, "code": wrong_code(secret, clock)})
    code = pyotp.TOTP(secret).at(clock.now)
    signed_in = await client.post(f"{AUTH}/login/mfa", json={"challenge": challenge, "code": code})

    assert refused.status_code == 401
    assert signed_in.status_code == 200, signed_in.text
    assert_entry(only(database, "login.mfa_failed"), None, **about(tokens))
    assert_entry(only(database, "login.succeeded"), user_id(tokens), **about(tokens))
    assert count(database, "login.failed") == 0  # the password was right
    assert_no_secrets(database, secret, challenge, *recovery_codes, *(c.replace("-", "") for c in recovery_codes))


# -- two-factor ---------------------------------------------------------------------------------


async def test_two_factor_turned_on_and_off_by_the_user_is_recorded(
    client: httpx.AsyncClient, database: str, clock: Clock
) -> None:
    tokens = await register(client)
    secret, recovery_codes = await turn_on_two_factor(client, tokens, clock)
    code = pyotp.TOTP(secret).at(clock.now)

    disabled = await client.post(
        f"{AUTH}/2fa/disable", json={"password": PASSWORD, "code": code}, headers=bearer(tokens)
    )

    assert disabled.status_code == 204
    assert_entry(only(database, "two_factor.enabled"), user_id(tokens), **about(tokens))
    assert_entry(only(database, "two_factor.disabled"), user_id(tokens), **about(tokens))
    assert_no_secrets(database, secret, code, *recovery_codes)


async def test_an_administrators_reset_of_two_factor_is_recorded_with_the_administrator(
    client: httpx.AsyncClient, database: str, clock: Clock
) -> None:
    tokens = await register(client)
    await turn_on_two_factor(client, tokens, clock)
    admin = admin_headers()

    reset = await client.delete(f"{AUTH}/users/{user_id(tokens)}/2fa", headers=admin)
    again = await client.delete(f"{AUTH}/users/{user_id(tokens)}/2fa", headers=admin)

    assert (reset.status_code, again.status_code) == (204, 204)
    admin_id = claims({"access_token": admin["Authorization"].removeprefix("Bearer ")})["sub"]
    assert_entry(only(database, "two_factor.reset"), admin_id, **about(tokens))  # nothing removed the 2nd time


# -- passwords and addresses ----------------------------------------------------------------------


async def test_a_password_change_is_recorded_with_the_other_sessions_it_ends(
    client: httpx.AsyncClient, database: str
) -> None:
    tokens = await register(client)
    await login(client)

    changed = await client.post(
        f"{AUTH}/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}, headers=bearer(tokens)
    )

    assert changed.status_code == 204
    assert_entry(only(database, "password.changed"), user_id(tokens), **about(tokens))
    revoked = only(database, "sessions.revoked_all")
    assert_entry(revoked, user_id(tokens), details={"cause": "password_changed", "sessions": 1}, **about(tokens))
    assert_no_secrets(database)


async def test_a_password_reset_is_recorded_with_every_session_it_ends(
    client: httpx.AsyncClient, database: str, inbox: Inbox
) -> None:
    tokens = await register(client)
    await client.post(f"{AUTH}/password/forgot", json={"email": EMAIL})
    link_token = token_in(await mail_to(inbox, EMAIL, 2))  # the first is the verification

    reset = await client.post(f"{AUTH}/password/reset", json={"token": link_token, "new_password": NEW_PASSWORD})

    assert reset.status_code == 204
    assert_entry(only(database, "password.reset"), user_id(tokens), **about(tokens))
    revoked = only(database, "sessions.revoked_all")
    assert_entry(revoked, user_id(tokens), details={"cause": "password_reset", "sessions": 1}, **about(tokens))
    assert_no_secrets(database, link_token)


async def test_an_address_change_is_recorded_when_asked_and_when_done_without_the_addresses(
    client: httpx.AsyncClient, database: str, inbox: Inbox
) -> None:
    tokens = await register(client)
    asked = await client.put(
        f"{AUTH}/email", headers=bearer(tokens), json={"current_password": PASSWORD, "new_email": "ada@lovelace.org"}
    )
    assert count(database, "email.changed") == 0
    link_token = token_in(await mail_to(inbox, "ada@lovelace.org"))

    verified = await client.post(f"{AUTH}/email/verify", json={"token": link_token})

    assert (asked.status_code, verified.status_code) == (202, 200)
    assert_entry(only(database, "email.change_requested"), user_id(tokens), **about(tokens))
    assert_entry(only(database, "email.changed"), user_id(tokens), **about(tokens))
    assert_no_secrets(database, "lovelace", link_token)


# -- sessions -------------------------------------------------------------------------------------


async def test_a_sign_out_records_the_session_it_ends(client: httpx.AsyncClient, database: str) -> None:
    tokens = await register(client)

    signed_out = await client.post(
        f"{AUTH}/logout", json={"refresh_token": tokens["refresh_token"]}, headers=bearer(tokens)
    )

    assert signed_out.status_code == 204
    entry = only(database, "session.revoked")  # the refresh token's session is the bearer's: one entry
    assert_entry(entry, user_id(tokens), organization_id=claims(tokens)["tid"], target_type="session")
    assert entry["target_id"] == claims(tokens)["sid"]
    assert_no_secrets(database, tokens["access_token"], tokens["refresh_token"])


async def test_a_sign_out_with_the_refresh_token_alone_is_recorded(client: httpx.AsyncClient, database: str) -> None:
    tokens = await register(client)

    signed_out = await client.post(f"{AUTH}/logout", json={"refresh_token": tokens["refresh_token"]})

    assert signed_out.status_code == 204
    entry = only(database, "session.revoked")
    assert_entry(entry, user_id(tokens), target_type="session", target_id=claims(tokens)["sid"])
    assert_no_secrets(database, tokens["refresh_token"])


async def test_ending_another_session_is_recorded(client: httpx.AsyncClient, database: str) -> None:
    tokens = await register(client)
    other = (await login(client)).json()

    ended = await client.delete(f"{AUTH}/sessions/{claims(other)['sid']}", headers=bearer(tokens))

    assert ended.status_code == 204
    entry = only(database, "session.revoked")
    assert_entry(entry, user_id(tokens), target_type="session", target_id=claims(other)["sid"])


async def test_signing_out_everywhere_is_recorded_once_with_how_many_sessions(
    client: httpx.AsyncClient, database: str
) -> None:
    tokens = await register(client)
    await login(client)
    await login(client)

    signed_out = await client.post(f"{AUTH}/logout?scope=global", headers=bearer(tokens))

    assert signed_out.status_code == 204
    revoked = only(database, "sessions.revoked_all")
    assert_entry(revoked, user_id(tokens), details={"cause": "logout", "sessions": 3}, **about(tokens))
    assert count(database, "session.revoked") == 0


async def test_a_stolen_refresh_token_coming_back_records_the_session_it_ends_without_an_actor(
    client: httpx.AsyncClient, database: str, clock: Clock
) -> None:
    tokens = await register(client)
    rotated = await client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200
    clock.advance(seconds=11)  # past the grace window: a rotated token back is a theft

    reused = await client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})

    assert reused.status_code == 401
    entry = only(database, "session.revoked")
    assert_entry(entry, None, target_type="session", target_id=claims(tokens)["sid"])
    assert entry["details"] == {"cause": "refresh_token_reuse"}
    assert_no_secrets(database, tokens["refresh_token"], rotated.json()["refresh_token"])


async def test_a_deleted_profile_ends_every_session_and_that_is_recorded(
    app: Litestar, client: httpx.AsyncClient, database: str
) -> None:
    """``user.deleted`` from the users service: applied from the bus, so no client address."""
    tokens = await register(client)
    await login(client)

    await app.state.bus.publish(new_event("user.deleted", "users", {"user_id": user_id(tokens)}))

    await eventually(lambda: count(database, "sessions.revoked_all"), "the deletion applied")
    entry = only(database, "sessions.revoked_all")
    assert entry["actor_id"] is None and entry["ip"] is None
    assert entry["details"] == {"cause": "account_deleted", "sessions": 2}
    assert (entry["target_type"], entry["target_id"]) == ("user", user_id(tokens))


# -- administration -------------------------------------------------------------------------------


async def test_an_administrators_account_change_is_recorded_with_the_fields_and_new_roles(
    client: httpx.AsyncClient, database: str
) -> None:
    tokens = await register(client)
    admin = admin_headers()
    admin_id = claims({"access_token": admin["Authorization"].removeprefix("Bearer ")})["sub"]

    changed = await client.patch(f"{AUTH}/users/{user_id(tokens)}", json={"roles": ["user", "admin"]}, headers=admin)

    assert changed.status_code == 200, changed.text
    entry = only(database, "account.updated")
    assert_entry(entry, admin_id, details={"fields": ["roles"], "roles": ["admin", "user"]}, **about(tokens))
    revoked = only(database, "sessions.revoked_all")
    assert_entry(revoked, admin_id, details={"cause": "account_updated", "sessions": 1}, **about(tokens))


# -- API keys -------------------------------------------------------------------------------------


async def test_a_personal_key_made_and_revoked_is_recorded_without_its_secret_or_name(
    client: httpx.AsyncClient, database: str
) -> None:
    tokens = await register(client)
    made = await client.post(
        f"{AUTH}/api-keys/", json={"name": "my laptop script", "scopes": ["airtable:read"]}, headers=bearer(tokens)
    )
    assert made.status_code == 201, made.text
    key = made.json()

    revoked = await client.delete(f"{AUTH}/api-keys/{key['id']}", headers=bearer(tokens))

    assert revoked.status_code == 204
    expected = {
        "organization_id": claims(tokens)["tid"],
        "target_type": "api_key",
        "target_id": key["id"],
        "details": {"kind": "personal", "scopes": ["airtable:read"]},
    }
    assert_entry(only(database, "api_key.created"), user_id(tokens), **expected)
    assert_entry(only(database, "api_key.revoked"), user_id(tokens), **expected)
    assert_no_secrets(database, key["key"], key["key"].split("_", 2)[2], key["prefix"], "my laptop script")


async def test_a_service_key_is_recorded_with_its_administrator_in_no_organisation(
    client: httpx.AsyncClient, database: str
) -> None:
    admin = admin_headers()
    admin_id = claims({"access_token": admin["Authorization"].removeprefix("Bearer ")})["sub"]
    made = await client.post(
        f"{AUTH}/service-keys/", json={"name": "billing", "scopes": ["analytics:write"]}, headers=admin
    )
    assert made.status_code == 201, made.text
    key = made.json()

    revoked = await client.delete(f"{AUTH}/service-keys/{key['id']}", headers=admin)

    assert revoked.status_code == 204
    expected = {
        "organization_id": None,
        "target_type": "api_key",
        "target_id": key["id"],
        "details": {"kind": "service", "scopes": ["analytics:write"]},
    }
    assert_entry(only(database, "api_key.created"), admin_id, **expected)
    assert_entry(only(database, "api_key.revoked"), admin_id, **expected)
    assert_no_secrets(database, key["key"], key["prefix"], "billing")


# -- the bus ------------------------------------------------------------------------------------


async def test_audit_events_reach_the_event_bus(
    client: httpx.AsyncClient, database: str, redis_url: str, redis_namespace: str
) -> None:
    """The outbox relay publishes the entries to ``{namespace}:events:audit.recorded``, where
    analytics reads them, and marks them published."""
    tokens = await register(client)
    await login(client, "not the password at all")
    stream = f"{redis_namespace}:events:audit.recorded"
    redis = Redis.from_url(redis_url)
    try:

        async def published() -> list[dict[str, Any]]:
            messages: Any = await redis.xrange(stream)
            return [json.loads(fields[b"event"]) for _, fields in messages]

        events = await eventually(published, "the audit event on the bus")
    finally:
        await redis.aclose()

    assert [event["type"] for event in events] == ["audit.recorded"]
    assert events[0]["source"] == "auth"
    assert events[0]["data"] == only(database, "login.failed")
    assert events[0]["data"]["target_id"] == user_id(tokens)

    def marked_published() -> bool:
        with psycopg.connect(database) as conn:
            row = conn.execute("SELECT published_at FROM outbox WHERE event_type = 'audit.recorded'").fetchone()
        return row is not None and row[0] is not None

    await eventually(marked_published, "the outbox row marked published")


# -- SQLite -------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_settings(auth_settings: AuthSettings, tmp_path: Path) -> AuthSettings:
    """The auth service on a migrated SQLite file and the in-process store."""
    url = f"sqlite:///{tmp_path}/auth.sqlite3"
    settings = msgspec.structs.replace(auth_settings, database_url=url, redis_url="")
    migrations.upgrade(settings, "auth_service")
    return settings


async def test_sign_ins_are_recorded_on_sqlite_as_the_embedded_mode_runs_it(
    sqlite_settings: AuthSettings, clock: Clock, tmp_path: Path
) -> None:
    database = tmp_path / "auth.sqlite3"
    async with app_client(create_app(sqlite_settings, clock=clock), client_ip=CLIENT_IP) as client:
        tokens = await register(client)
        refused = await login(client, "not the password at all")
        signed_in = await login(client)

    assert (refused.status_code, signed_in.status_code) == (401, 200)
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT payload FROM outbox WHERE event_type = 'audit.recorded' ORDER BY occurred_at")
        entries = [json.loads(payload) for (payload,) in rows]
    assert [(entry["action"], entry["actor_id"], entry["ip"]) for entry in entries] == [
        ("login.failed", None, CLIENT_IP),
        ("login.succeeded", user_id(tokens), CLIENT_IP),
    ]
    assert all(entry["target_id"] == user_id(tokens) for entry in entries)
