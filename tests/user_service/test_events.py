"""Profiles follow the accounts through events, and a deleted profile closes the account.

The auth service and the user service run in-process on one Redis namespace (streams, consumer
groups, revocations), each with its own PostgreSQL database.
"""

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from shared.events import Event, new_event
from shared.keys import hs256_kid
from tests.auth_service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    JWT_SECRET,
    PASSWORD,
    auth_app,
    auth_database,
    auth_settings,
    clean_auth_database,
    inbox,
    mail_server,
    mail_settings,
    mail_to,
)
from tests.conftest import access_claims, app_client, eventually
from tests.mail_server import Inbox, token_in
from tests.user_service.conftest import USERS, Caller, profile_url
from user_service.app import create_app
from user_service.config import UserSettings
from user_service.services import ProfileService

AUTH = "/api/v1/auth"


@pytest.fixture
async def both(
    mail_settings: AuthSettings,  # noqa: F811
    users_app: Litestar,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with app_client(create_auth_app(mail_settings)) as auth, app_client(users_app) as users:
        yield auth, users


ADMIN = Caller(roles=["admin", "user"])


async def profile_of(users: httpx.AsyncClient, user_id: str) -> dict[str, Any] | None:
    response = await users.get(profile_url(uuid.UUID(user_id)), headers=ADMIN.headers)
    return response.json() if response.status_code == 200 else None


async def register(auth: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, Any]:
    body = {"email": email, "password": PASSWORD, "first_name": "Ada", "last_name": "Lovelace"}
    response = await auth.post(f"{AUTH}/register", json=body)
    assert response.status_code == 201, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def same_instant(one: str, other: str) -> bool:
    return datetime.fromisoformat(one) == datetime.fromisoformat(other)


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_a_registered_user_has_a_profile_soon(both: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    auth, users = both
    tokens = await register(auth)
    user = tokens["user"]
    profile = await eventually(lambda: profile_of(users, user["id"]), "the profile")
    assert (profile["email"], profile["first_name"], profile["last_name"]) == ("ada@example.com", "Ada", "Lovelace")
    assert profile["tenant_id"] == user["tenant_id"]
    assert profile["role"] == "user" and profile["is_active"] is True
    assert same_instant(profile["created_at"], user["created_at"])
    mine = await users.get(f"{USERS}/me", headers=bearer(tokens))
    assert mine.json() == profile


async def test_me_before_the_event_then_the_event_completes_the_profile(
    both: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    auth, users = both
    tokens = await register(auth)
    mine = await users.get(f"{USERS}/me", headers=bearer(tokens))  # may well beat the event
    assert mine.status_code == 200
    profile = await eventually(
        lambda: _named(profile_of(users, tokens["user"]["id"])), "the names from user.registered"
    )
    assert profile["email"] == "ada@example.com"


async def _named(pending: Any) -> Any:
    profile = await pending
    return profile if profile and profile["first_name"] == "Ada" else None


async def test_email_change_login_and_role_change_follow_to_the_profile(
    both: tuple[httpx.AsyncClient, httpx.AsyncClient],
    inbox: Inbox,  # noqa: F811
) -> None:
    auth, users = both
    tokens = await register(auth)
    user_id = tokens["user"]["id"]
    profile = await eventually(lambda: profile_of(users, user_id), "the profile")
    assert profile["email_verified"] is False
    verification = token_in(await mail_to(inbox, "ada@example.com"))
    assert (await auth.post(f"{AUTH}/email/verify", json={"token": verification})).status_code == 200
    await eventually(lambda: _where(profile_of(users, user_id), lambda p: p["email_verified"]), "the verification")

    changed = await auth.put(
        f"{AUTH}/email", headers=bearer(tokens), json={"current_password": PASSWORD, "new_email": "Ada@Lovelace.org"}
    )
    assert changed.status_code == 202, changed.text
    assert changed.json()["email"] == "ada@example.com"  # until the new address is confirmed
    confirmation = token_in(await mail_to(inbox, "ada@lovelace.org"))
    assert (await auth.post(f"{AUTH}/email/verify", json={"token": confirmation})).status_code == 200
    await eventually(
        lambda: _where(profile_of(users, user_id), lambda p: p["email"] == "ada@lovelace.org"), "the new email"
    )

    logged_in = await auth.post(f"{AUTH}/login", json={"email": "ada@lovelace.org", "password": PASSWORD})
    assert logged_in.status_code == 200
    profile = await eventually(lambda: _where(profile_of(users, user_id), lambda p: p["last_login_at"]), "the login")
    assert same_instant(profile["last_login_at"], logged_in.json()["user"]["last_login_at"])

    promoted = await auth.patch(f"{AUTH}/users/{user_id}", headers=ADMIN.headers, json={"roles": ["admin", "user"]})
    assert promoted.status_code == 200, promoted.text
    await eventually(lambda: _where(profile_of(users, user_id), lambda p: p["role"] == "admin"), "the role")
    admins = await users.get(f"{USERS}/", headers=ADMIN.headers, params={"role": "admin"})
    assert [u["id"] for u in admins.json()["users"]] == [user_id]

    # The old tokens carried the old roles: the role change ended the sessions.
    assert (await auth.get(f"{AUTH}/me", headers=bearer(logged_in.json()))).status_code == 401
    relogged = await auth.post(f"{AUTH}/login", json={"email": "ada@lovelace.org", "password": PASSWORD})
    assert relogged.json()["user"]["roles"] == ["admin", "user"]

    deactivated = await auth.patch(f"{AUTH}/users/{user_id}", headers=ADMIN.headers, json={"is_active": False})
    assert deactivated.status_code == 200 and deactivated.json()["is_active"] is False
    await eventually(lambda: _where(profile_of(users, user_id), lambda p: p["is_active"] is False), "the deactivation")
    inactive = await users.get(f"{USERS}/", headers=ADMIN.headers, params={"is_active": "false"})
    assert [u["id"] for u in inactive.json()["users"]] == [user_id]
    refused = await auth.post(f"{AUTH}/login", json={"email": "ada@lovelace.org", "password": PASSWORD})
    assert refused.status_code == 401


async def _where(pending: Any, predicate: Callable[[dict[str, Any]], Any]) -> Any:
    profile = await pending
    return profile if profile and predicate(profile) else None


async def test_email_change_needs_the_password_and_a_free_address(
    both: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    auth, _ = both
    ada = await register(auth)
    await register(auth, "bob@example.com")
    wrong = await auth.put(
        f"{AUTH}/email", headers=bearer(ada), json={"current_password": "not it at all", "new_email": "x@example.com"}
    )
    assert wrong.status_code == 401
    taken = await auth.put(
        f"{AUTH}/email", headers=bearer(ada), json={"current_password": PASSWORD, "new_email": "BOB@example.com"}
    )
    assert taken.status_code == 409
    invalid = await auth.put(
        f"{AUTH}/email", headers=bearer(ada), json={"current_password": PASSWORD, "new_email": "nope"}
    )
    assert invalid.status_code == 422


async def test_account_admin_route_is_for_admins_only(both: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    auth, _ = both
    ada = await register(auth)
    url = f"{AUTH}/users/{ada['user']['id']}"
    assert (await auth.patch(url, headers=bearer(ada), json={"roles": ["admin"]})).status_code == 403
    assert (await auth.patch(url, headers=ADMIN.headers, json={"roles": ["root"]})).status_code == 422
    assert (await auth.patch(url, headers=ADMIN.headers, json={"tenant_id": str(uuid.uuid4())})).status_code == 422
    assert (await auth.patch(f"{AUTH}/users/{uuid.uuid4()}", headers=ADMIN.headers, json={})).status_code == 404
    me = await auth.get(f"{AUTH}/me", headers=bearer(ada))
    assert me.json()["roles"] == ["user"]


async def test_deleting_the_profile_closes_the_account(both: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    auth, users = both
    tokens = await register(auth)
    user_id = tokens["user"]["id"]
    await eventually(lambda: profile_of(users, user_id), "the profile")
    assert (await auth.get(f"{AUTH}/me", headers=bearer(tokens))).status_code == 200

    deleted = await users.delete(f"{USERS}/{user_id}", headers=bearer(tokens))
    assert deleted.status_code == 204

    async def login_refused() -> bool:
        response = await auth.post(f"{AUTH}/login", json={"email": "ada@example.com", "password": PASSWORD})
        return response.status_code == 401

    await eventually(login_refused, "the account to be deactivated")
    assert (await auth.get(f"{AUTH}/me", headers=bearer(tokens))).status_code == 401
    refreshed = await auth.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401
    assert (await users.get(f"{USERS}/me", headers=bearer(tokens))).status_code == 401


async def test_late_duplicate_and_stale_events_change_nothing(users_app: Litestar, client: httpx.AsyncClient) -> None:
    """The profile keeps the newest account state it saw; a deleted profile stays deleted."""
    user_id = str(uuid.uuid4())
    account = {"user_id": user_id, "email": "new@example.com", "roles": ["user"], "tenant_id": str(uuid.uuid4())}
    newer = new_event("user.email_changed", "auth", account)
    older = new_event("user.registered", "auth", {**account, "email": "old@example.com", "first_name": "Ada"})
    older = older.__class__(older.id, older.type, older.source, newer.occurred_at - timedelta(seconds=5), older.data)

    async def apply(event: Any) -> None:
        async with users_app.state.sessionmaker() as session, session.begin():
            await ProfileService(session, users_app.state.clock).apply_account_event(event)

    await apply(newer)
    await apply(older)
    profile = await profile_of(client, user_id)
    assert profile is not None
    assert profile["email"] == "new@example.com"

    assert (await client.delete(profile_url(uuid.UUID(user_id)), headers=ADMIN.headers)).status_code == 204
    await apply(new_event("user.logged_in", "auth", {**account, "last_login_at": "2026-12-01T00:00:00+00:00"}))
    assert await profile_of(client, user_id) is None


async def test_the_registration_event_completes_a_profile_made_from_the_token(
    users_app: Litestar, client: httpx.AsyncClient
) -> None:
    ada = Caller(email="ada@example.com")
    made_from_token = (await client.get(f"{USERS}/me", headers=ada.headers)).json()
    assert made_from_token["first_name"] is None
    account = {
        "user_id": str(ada.id),
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "roles": ["user"],
        "tenant_id": str(ada.tenant_id),
        "created_at": "2026-11-30T12:00:00+00:00",
    }
    async with users_app.state.sessionmaker() as session, session.begin():
        service = ProfileService(session, users_app.state.clock)
        await service.apply_account_event(new_event("user.registered", "auth", account))
    profile = (await client.get(f"{USERS}/me", headers=ada.headers)).json()
    assert (profile["first_name"], profile["last_name"]) == ("Ada", "Lovelace")
    assert same_instant(profile["created_at"], account["created_at"])


async def test_a_poisoned_account_event_lands_in_the_dead_letter_stream(
    user_settings: UserSettings, clock: Any, redis_url: str
) -> None:
    """An event the profile handler cannot apply (no email) is tried EVENT_MAX_ATTEMPTS times,
    then moved aside; the events after it are still applied."""
    settings = msgspec.structs.replace(user_settings, event_max_attempts=2, event_reclaim_seconds=0.2)
    app = create_app(settings, clock=clock)
    poisoned = new_event("user.registered", "auth", {"user_id": str(uuid.uuid4()), "roles": ["user"]})
    healthy_id = str(uuid.uuid4())
    healthy = new_event("user.registered", "auth", {"user_id": healthy_id, "email": "ok@example.com"})
    redis = Redis.from_url(redis_url)
    dead_stream = f"{settings.redis_namespace}:events:user.registered:dead"
    try:
        async with app_client(app) as client:
            await app.state.bus.publish(poisoned)
            await app.state.bus.publish(healthy)
            entries = await eventually(lambda: redis.xrange(dead_stream), "the dead letter")
            assert await eventually(lambda: profile_of(client, healthy_id), "the healthy event")
    finally:
        await redis.aclose()
    [(_, fields)] = entries
    assert msgspec.json.decode(fields[b"event"], type=Event) == poisoned
    assert (fields[b"group"], fields[b"attempts"]) == (b"users", b"2")


async def test_a_token_with_a_malformed_tenant_is_refused(client: httpx.AsyncClient) -> None:
    token = jwt.encode(
        access_claims(tid="not-a-tenant"),
        JWT_SECRET,
        algorithm="HS256",
        headers={"typ": "at+jwt", "kid": hs256_kid(JWT_SECRET)},
    )
    response = await client.get(f"{USERS}/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
