"""Profiles over HTTP: /me, who may see and change whom, what may be set, the admin list."""

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from litestar import Litestar

from shared.events import new_event
from tests.user_service.conftest import USERS, Caller, profile_url
from user_service.config import UserSettings
from user_service.purge import parse_duration, purge
from user_service.services import MembershipService, ProfileService

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    if code:
        assert body["code"] == code, body
    return body


async def me(client: httpx.AsyncClient, caller: Caller) -> dict[str, Any]:
    response = await client.get(f"{USERS}/me", headers=caller.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- /me ---------------------------------------------------------------------------------------------


async def test_me_exists_before_the_registration_event_arrives(client: httpx.AsyncClient) -> None:
    ada = Caller(email="ada@example.com")
    profile = await me(client, ada)
    assert profile["id"] == str(ada.id)
    assert profile["email"] == "ada@example.com"
    assert profile["tenant_id"] == str(ada.tenant_id)
    assert profile["role"] == "user"
    assert profile["preferences"] == {}
    assert (await me(client, ada))["created_at"] == profile["created_at"]  # created once


async def test_me_requires_a_valid_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{USERS}/me"), 401)
    assert_problem(await client.get(f"{USERS}/me", headers={"Authorization": "Bearer not.a.token"}), 401)


async def test_patch_changes_only_the_fields_given_and_put_replaces_them_all(client: httpx.AsyncClient) -> None:
    ada = Caller()
    patched = await client.patch(
        f"{USERS}/me",
        headers=ada.headers,
        json={"display_name": "Ada", "timezone": "Europe/London", "preferences": {"theme": "dark"}},
    )
    assert patched.status_code == 200, patched.text
    again = await client.patch(f"{USERS}/me", headers=ada.headers, json={"bio": "Analyst"})
    body = again.json()
    assert (body["display_name"], body["timezone"], body["bio"]) == ("Ada", "Europe/London", "Analyst")
    assert body["preferences"] == {"theme": "dark"}
    cleared = await client.patch(f"{USERS}/me", headers=ada.headers, json={"bio": None})
    assert cleared.json()["bio"] is None

    replaced = await client.put(f"{USERS}/me", headers=ada.headers, json={"first_name": "Ada", "locale": "en-GB"})
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert (body["first_name"], body["locale"]) == ("Ada", "en-GB")
    assert body["display_name"] is None and body["timezone"] is None and body["preferences"] == {}
    assert (await me(client, ada)) == body


@pytest.mark.parametrize(
    "field, value",
    [
        ("id", "3fd9f4c1-e1e0-4f21-8526-50430135732e"),
        ("email", "someone-else@example.com"),
        ("role", "admin"),
        ("roles", ["admin"]),
        ("is_admin", True),
        ("tenant_id", "3a893541-04d5-4037-804c-089866f961eb"),
        ("is_active", False),
        ("created_at", "2000-01-01T00:00:00Z"),
        ("updated_at", "2000-01-01T00:00:00Z"),
        ("deleted_at", "2000-01-01T00:00:00Z"),
        ("last_login_at", "2000-01-01T00:00:00Z"),
        ("user_id", "7df7142a-0dd3-4794-937d-a8bd4765e4ac"),
    ],
)
async def test_fields_a_user_may_not_set_are_refused_and_never_applied(
    client: httpx.AsyncClient, field: str, value: object
) -> None:
    ada = Caller()
    before = await me(client, ada)
    for method in ("PATCH", "PUT"):
        for url in (f"{USERS}/me", profile_url(ada)):
            response = await client.request(
                method, url, headers=ada.headers, json={"display_name": "Mallory", field: value}
            )
            assert_problem(response, 422, "validation-error")
    assert await me(client, ada) == before


@pytest.mark.parametrize(
    "body",
    [
        {"timezone": "Mars/Olympus_Mons"},
        {"timezone": "utc+2"},
        {"preferences": {"blob": "x" * 17_000}},
        {"preferences": ["not", "an", "object"]},
        {"preferences": "dark"},
        {"avatar_url": "javascript:alert(1)"},
        {"phone": "call me maybe"},
        {"locale": "english please"},
        {"display_name": "x" * 101},
        {"bio": 42},
    ],
)
async def test_invalid_values_are_a_422_in_the_problem_shape(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    ada = Caller()
    response = await client.patch(f"{USERS}/me", headers=ada.headers, json=body)
    problem = assert_problem(response, 422, "validation-error")
    assert problem["request_id"]


async def test_a_value_of_the_wrong_json_type_is_a_422_naming_the_field(client: httpx.AsyncClient) -> None:
    ada = Caller()
    for body, field in (({"first_name": 5}, "first_name"), ({"phone": 33123456789}, "phone")):
        response = await client.patch(f"{USERS}/me", headers=ada.headers, json=body)
        problem = assert_problem(response, 422, "validation-error")
        assert [error["key"] for error in problem["errors"]] == [field]

    response = await client.patch(f"{USERS}/me", headers=ada.headers, json={"first_name": "Ada", "phone": "+33 1 23"})
    assert response.status_code == 200, response.text
    profile = await me(client, ada)
    assert (profile["first_name"], profile["phone"]) == ("Ada", "+33 1 23")


async def test_preferences_up_to_16_kb_are_kept(client: httpx.AsyncClient) -> None:
    ada = Caller()
    preferences = {"notes": "x" * 16_000, "nested": {"a": [1, 2, {"b": None}]}}
    response = await client.patch(f"{USERS}/me", headers=ada.headers, json={"preferences": preferences})
    assert response.status_code == 200, response.text
    assert (await me(client, ada))["preferences"] == preferences


async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient) -> None:
    ada = Caller()
    response = await client.patch(
        f"{USERS}/me", headers={**ada.headers, "Content-Type": "application/json"}, content=b"{nope"
    )
    assert response.status_code == 400  # not JSON at all
    assert response.headers["content-type"].startswith(PROBLEM)


# -- who may see and change whom -----------------------------------------------------------------------


async def test_access_matrix_with_another_users_id(client: httpx.AsyncClient, users_app: Litestar) -> None:
    tenant = uuid.uuid4()
    ada, bob = Caller(tenant_id=tenant, org_role="member"), Caller(tenant_id=tenant, org_role="owner")
    carl = Caller(tenant_id=tenant, org_role="member")  # a member too, not a manager
    eve = Caller(org_role="owner")  # another organisation's owner
    admin = Caller(roles=["admin", "user"])
    for caller in (ada, bob, carl, eve, admin):
        await me(client, caller)
    async with users_app.state.sessionmaker() as session, session.begin():
        service = MembershipService(session)
        for caller, role in ((ada, "member"), (bob, "owner"), (carl, "member")):
            data = {"organization_id": str(tenant), "user_id": str(caller.id), "role": role}
            await service.apply_event(new_event("organization.member_added", "auth", data))
    await client.patch(f"{USERS}/me", headers=ada.headers, json={"display_name": "Ada", "phone": "+44 20 7946 0000"})
    original = await me(client, ada)
    missing = profile_url(uuid.uuid4())

    # An owner (or admin) of the caller's active organisation reads its members' public fields only.
    manager_view = await client.get(profile_url(ada), headers=bob.headers)
    assert manager_view.status_code == 200
    assert manager_view.json() == {
        "id": str(ada.id),
        "first_name": None,
        "last_name": None,
        "display_name": "Ada",
        "avatar_url": None,
        "bio": None,
        "tenant_id": str(tenant),
    }
    # Nobody else learns whether the profile exists: the same 404 as for an unknown id.
    unknown = assert_problem(await client.get(missing, headers=eve.headers), 404, "user-not-found")
    for outsider in (eve, carl):
        hidden = assert_problem(await client.get(profile_url(ada), headers=outsider.headers), 404, "user-not-found")
        assert hidden["detail"] == unknown["detail"]
    for intruder in (bob, eve):
        for method, body in (
            ("PUT", {"display_name": "pwned"}),
            ("PATCH", {"display_name": "pwned"}),
            ("DELETE", None),
        ):
            response = await client.request(method, profile_url(ada), headers=intruder.headers, json=body)
            assert_problem(response, 404, "user-not-found")
    assert await me(client, ada) == original

    # The owner and an admin see everything and may change it.
    assert (await client.get(profile_url(ada), headers=ada.headers)).json() == original
    assert (await client.get(profile_url(ada), headers=admin.headers)).json() == original
    changed = await client.patch(profile_url(ada), headers=admin.headers, json={"bio": "set by an admin"})
    assert changed.status_code == 200 and changed.json()["bio"] == "set by an admin"
    assert_problem(await client.get(missing, headers=admin.headers), 404)

    # Delete: the owner may; afterwards the profile is gone for everyone.
    assert (await client.delete(profile_url(bob), headers=bob.headers)).status_code == 204
    assert (await client.delete(profile_url(ada), headers=admin.headers)).status_code == 204
    for caller in (ada, bob, admin):
        assert_problem(await client.get(profile_url(ada), headers=caller.headers), 404)
    assert_problem(await client.get(f"{USERS}/me", headers=ada.headers), 404)


async def test_delete_records_user_deleted_in_the_outbox(
    client: httpx.AsyncClient, user_settings: UserSettings
) -> None:
    ada = Caller()
    await me(client, ada)
    assert (await client.delete(profile_url(ada), headers=ada.headers)).status_code == 204

    def rows() -> list[tuple[str, dict[str, Any]]]:
        with psycopg.connect(user_settings.database_url) as conn:
            return [(r[0], r[1]) for r in conn.execute("SELECT event_type, payload FROM outbox").fetchall()]

    [(event_type, payload)] = await asyncio.to_thread(rows)
    assert event_type == "user.deleted"
    assert payload["user_id"] == str(ada.id)
    assert payload["deleted_by"] == str(ada.id)


# -- the admin list ------------------------------------------------------------------------------------


SEEDED = 25


@pytest.fixture
async def seeded(client: httpx.AsyncClient, users_app: Litestar) -> list[dict[str, Any]]:
    """25 accounts as auth's events describe them: varied names, roles, tenants, states, dates."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    tenants = [uuid.uuid4(), uuid.uuid4()]
    accounts = []
    for n in range(SEEDED):
        accounts.append(
            {
                "user_id": str(uuid.uuid4()),
                "email": f"user{n:02d}@{'acme' if n % 2 else 'example'}.com",
                "first_name": ["Ada", "Grace", "Alan", "Edsger", "Barbara"][n % 5],
                "last_name": f"Surname{(n * 7) % SEEDED:02d}",
                "tenant_id": str(tenants[n % 2]),
                "roles": ["admin", "user"] if n % 6 == 0 else ["user"],
                "is_active": n % 4 != 3,
                "created_at": (start + timedelta(days=n)).isoformat(),
                "last_login_at": (start + timedelta(days=40 - n)).isoformat() if n % 3 else None,
            }
        )
    async with users_app.state.sessionmaker() as session, session.begin():
        service = ProfileService(session, users_app.state.clock)
        for account in accounts:
            await service.apply_account_event(new_event("user.registered", "auth", account))
    return accounts


async def list_users(client: httpx.AsyncClient, admin: Caller, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{USERS}/", headers=admin.headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_list_pages_filters_and_sorts_a_seeded_set(
    client: httpx.AsyncClient, seeded: list[dict[str, Any]]
) -> None:
    admin = Caller(roles=["admin"])
    everyone = await list_users(client, admin, page_size=100)
    assert everyone["total"] == SEEDED
    assert [u["id"] for u in everyone["users"]] == [a["user_id"] for a in reversed(seeded)]  # newest first

    pages = [
        await list_users(client, admin, page=page, page_size=10, sort_by="email", sort_order="asc")
        for page in (1, 2, 3)
    ]
    assert [(p["total"], p["page"], p["page_size"], p["total_pages"]) for p in pages] == [
        (SEEDED, 1, 10, 3),
        (SEEDED, 2, 10, 3),
        (SEEDED, 3, 10, 3),
    ]
    assert [len(p["users"]) for p in pages] == [10, 10, 5]
    paged = [u["email"] for p in pages for u in p["users"]]
    assert paged == sorted(a["email"] for a in seeded)
    assert (await list_users(client, admin, page=4, page_size=10))["users"] == []

    def ids(body: dict[str, Any]) -> set[str]:
        return {u["id"] for u in body["users"]}

    def expected(predicate: Any) -> set[str]:
        return {a["user_id"] for a in seeded if predicate(a)}

    assert ids(await list_users(client, admin, search="GRACE", page_size=100)) == expected(
        lambda a: a["first_name"] == "Grace"
    )
    assert ids(await list_users(client, admin, search="acme.c", page_size=100)) == expected(
        lambda a: "acme.c" in a["email"]
    )
    assert ids(await list_users(client, admin, search="name0", page_size=100)) == expected(
        lambda a: "name0" in a["last_name"].lower()
    )
    assert ids(await list_users(client, admin, search="%", page_size=100)) == set()  # wildcards are literal
    assert ids(await list_users(client, admin, role="admin", page_size=100)) == expected(
        lambda a: "admin" in a["roles"]
    )
    assert ids(await list_users(client, admin, is_active="false", page_size=100)) == expected(
        lambda a: not a["is_active"]
    )
    tenant = seeded[0]["tenant_id"]
    assert ids(await list_users(client, admin, tenant_id=tenant, page_size=100)) == expected(
        lambda a: a["tenant_id"] == tenant
    )
    window = {"created_after": "2026-01-05T00:00:00Z", "created_before": "2026-01-10T00:00:00Z", "page_size": 100}
    assert ids(await list_users(client, admin, **window)) == {a["user_id"] for a in seeded[4:9]}
    combined = await list_users(
        client, admin, role="user", is_active="true", tenant_id=tenant, search="a", page_size=100
    )
    assert ids(combined) == expected(
        lambda a: (
            "admin" not in a["roles"]
            and a["is_active"]
            and a["tenant_id"] == tenant
            and ("a" in a["email"] or "a" in a["first_name"].lower() or "a" in a["last_name"].lower())
        )
    )
    assert combined["total"] == len(combined["users"])

    by_name = await list_users(client, admin, sort_by="last_name", sort_order="desc", page_size=100)
    assert [u["last_name"] for u in by_name["users"]] == sorted((a["last_name"] for a in seeded), reverse=True)
    by_login = await list_users(client, admin, sort_by="last_login_at", sort_order="desc", page_size=100)
    logins = [u["last_login_at"] for u in by_login["users"]]
    with_login = [value for value in logins if value is not None]
    assert logins == with_login + [None] * (SEEDED - len(with_login))  # never-logged-in last
    assert [datetime.fromisoformat(v) for v in with_login] == sorted(
        (datetime.fromisoformat(v) for v in with_login), reverse=True
    )


@pytest.mark.parametrize(
    "params",
    [
        {"page_size": 101},
        {"page_size": 0},
        {"page": 0},
        {"sort_by": "password_hash"},
        {"sort_order": "sideways"},
        {"role": "superuser"},
        {"is_active": "maybe"},
        {"tenant_id": "not-a-uuid"},
        {"created_after": "yesterday"},
    ],
)
async def test_bad_list_parameters_are_a_422_problem(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    admin = Caller(roles=["admin"])
    response = await client.get(f"{USERS}/", headers=admin.headers, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_only_admins_list_users(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{USERS}/", headers=Caller().headers), 403)
    assert_problem(await client.get(f"{USERS}/"), 401)


# -- purge ----------------------------------------------------------------------------------------------


async def test_purge_removes_profiles_deleted_long_enough_ago(
    client: httpx.AsyncClient, user_settings: UserSettings, clock: Any
) -> None:
    old, recent, alive = Caller(), Caller(), Caller()
    for caller in (old, recent, alive):
        await me(client, caller)
    clock.advance(days=-40)
    await client.delete(profile_url(old), headers=old.headers)
    clock.advance(days=40)
    await client.delete(profile_url(recent), headers=recent.headers)

    old_event, recent_event = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(user_settings.database_url) as conn:
        for event_id, age in ((old_event, "40 days"), (recent_event, "1 day")):
            conn.execute(
                "INSERT INTO processed_events VALUES (%s, 'user.registered', now() - %s::interval)", (event_id, age)
            )

    assert await purge(user_settings, datetime.now(UTC) - parse_duration("30d")) == (1, 1)

    def remaining() -> set[str]:
        with psycopg.connect(user_settings.database_url) as conn:
            return {str(row[0]) for row in conn.execute("SELECT id FROM profiles").fetchall()}

    assert await asyncio.to_thread(remaining) == {str(recent.id), str(alive.id)}
    with psycopg.connect(user_settings.database_url) as conn:
        assert [row[0] for row in conn.execute("SELECT event_id FROM processed_events")] == [recent_event]
    assert parse_duration("12h") == timedelta(hours=12) and parse_duration("7") == timedelta(days=7)


async def test_purge_never_forgets_event_ids_younger_than_the_dedup_retention(
    client: httpx.AsyncClient, user_settings: UserSettings, clock: Any
) -> None:
    """A short --older-than purges profiles that young, but event ids only past the retention (30 d)."""
    gone = Caller()
    await me(client, gone)
    clock.advance(days=-2)
    await client.delete(profile_url(gone), headers=gone.headers)
    clock.advance(days=2)
    kept_event = uuid.uuid4()
    with psycopg.connect(user_settings.database_url) as conn:
        conn.execute(
            "INSERT INTO processed_events VALUES (%s, 'user.registered', now() - '10 days'::interval)", (kept_event,)
        )

    assert await purge(user_settings, datetime.now(UTC) - parse_duration("1d")) == (1, 0)

    def event_ids() -> set[str]:
        with psycopg.connect(user_settings.database_url) as conn:
            return {str(row[0]) for row in conn.execute("SELECT event_id FROM processed_events").fetchall()}

    assert str(kept_event) in await asyncio.to_thread(event_ids)


def test_purge_command_line(user_settings: UserSettings, tmp_path: Any) -> None:
    env = {"USERS_DATABASE_URL": user_settings.database_url, "DATA_DIR": str(tmp_path), "PATH": os.environ["PATH"]}
    command = [sys.executable, "-m", "user_service", "purge", "--older-than"]
    done = subprocess.run([*command, "12h"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "purged 0 deleted profile(s)" in done.stdout
    refused = subprocess.run([*command, "soon"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "expected a duration" in refused.stderr
