"""An organisation's members with their profiles: auth's membership events, published on the real
event bus, are applied once each, in the order they happened; the list is for the organisation's
owners and admins and platform admins."""

import uuid
from datetime import timedelta
from typing import Any

import httpx
import psycopg
from litestar import Litestar

from shared.events import Event, new_event
from tests.conftest import eventually
from tests.user_service.conftest import USERS, Caller

ORG = uuid.uuid4()


def members_url(org: uuid.UUID = ORG) -> str:
    return f"{USERS}/orgs/{org}/members"


OWNER = Caller(tenant_id=ORG, org_role="owner")
ADMIN = Caller(roles=["admin", "user"])


def membership(kind: str, user: uuid.UUID, role: str | None = None, org: uuid.UUID = ORG) -> Event:
    data: dict[str, Any] = {"organization_id": str(org), "user_id": str(user)}
    if role is not None:
        data["role"] = role
    return new_event(f"organization.{kind}", "auth", data)


def account(user: uuid.UUID, email: str, first_name: str) -> Event:
    data = {"user_id": str(user), "email": email, "roles": ["user"], "first_name": first_name, "tenant_id": str(ORG)}
    return new_event("user.registered", "auth", data)


def shifted(event: Event, **delta: float) -> Event:
    return Event(event.id, event.type, event.source, event.occurred_at + timedelta(**delta), event.data)


async def members(client: httpx.AsyncClient, caller: Caller = OWNER, **params: Any) -> dict[str, Any]:
    response = await client.get(members_url(), params=params, headers=caller.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def roles_once(client: httpx.AsyncClient, expected: dict[str, str]) -> None:
    """Wait until the members and their roles are ``expected``."""

    async def current() -> bool:
        found = {item["user_id"]: item["role"] for item in (await members(client, page_size=100))["members"]}
        return found == expected

    await eventually(current, f"the members to be {expected}")


async def test_members_follow_the_events_with_their_profiles(users_app: Litestar, client: httpx.AsyncClient) -> None:
    ada, bob = uuid.uuid4(), uuid.uuid4()
    bus = users_app.state.bus
    await bus.publish(account(ada, "ada@example.com", "Ada"))
    added = membership("member_added", ada, "owner")
    await bus.publish(added)
    await bus.publish(membership("member_added", bob, "member"))  # no profile yet
    await bus.publish(membership("member_added", uuid.uuid4(), "member", org=uuid.uuid4()))  # elsewhere
    await roles_once(client, {str(ada): "owner", str(bob): "member"})

    body = await members(client)
    assert body["total"] == 2 and body["page"] == 1 and body["total_pages"] == 1
    by_id = {item["user_id"]: item for item in body["members"]}
    assert by_id[str(ada)] | {"joined_at": None} == {
        "user_id": str(ada),
        "role": "owner",
        "joined_at": None,
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": None,
        "display_name": None,
        "avatar_url": None,
        "is_active": True,
    }
    assert by_id[str(bob)]["email"] is None  # the profile is still on its way

    await bus.publish(membership("member_changed", bob, "admin"))
    await roles_once(client, {str(ada): "owner", str(bob): "admin"})
    await bus.publish(membership("member_removed", bob))
    await roles_once(client, {str(ada): "owner"})
    await bus.publish(added)  # redelivered: applied once, changes nothing
    await bus.publish(membership("member_added", bob, "viewer"))  # joined again
    await roles_once(client, {str(ada): "owner", str(bob): "viewer"})
    await bus.publish(new_event("organization.deleted", "auth", {"organization_id": str(ORG)}))
    await roles_once(client, {})


async def test_an_older_event_arriving_late_changes_nothing(users_app: Litestar, client: httpx.AsyncClient) -> None:
    ada = uuid.uuid4()
    bus = users_app.state.bus
    await bus.publish(membership("member_added", ada, "member"))
    await roles_once(client, {str(ada): "member"})
    await bus.publish(membership("member_removed", ada))
    await roles_once(client, {})
    await bus.publish(shifted(membership("member_changed", ada, "admin"), seconds=-60))  # before the removal
    # A marker on the same stream, published after: once it is applied, the late one was handled.
    later = membership("member_changed", uuid.uuid4(), "member")
    await bus.publish(later)
    await roles_once(client, {later.data["user_id"]: "member"})


async def test_pages(users_app: Litestar, client: httpx.AsyncClient) -> None:
    joined = [membership("member_added", uuid.uuid4(), "member") for _ in range(5)]
    joined = [shifted(event, seconds=index) for index, event in enumerate(joined)]
    for event in joined:
        await users_app.state.bus.publish(event)
    await eventually(lambda: _total(client, 5), "five members")
    pages = [await members(client, page=page, page_size=2) for page in (1, 2, 3)]
    assert [page["total_pages"] for page in pages] == [3, 3, 3]
    listed = [item["user_id"] for page in pages for item in page["members"]]
    assert listed == [event.data["user_id"] for event in joined]  # the earliest first


async def _total(client: httpx.AsyncClient, expected: int) -> bool:
    return bool((await members(client))["total"] == expected)


async def test_who_may_list_an_organisations_members(users_app: Litestar, client: httpx.AsyncClient) -> None:
    await users_app.state.bus.publish(membership("member_added", OWNER.id, "owner"))
    await roles_once(client, {str(OWNER.id): "owner"})
    for caller in (OWNER, Caller(tenant_id=ORG, org_role="admin"), ADMIN):
        assert (await client.get(members_url(), headers=caller.headers)).status_code == 200
    for role in ("member", "viewer"):
        response = await client.get(members_url(), headers=Caller(tenant_id=ORG, org_role=role).headers)
        assert response.status_code == 403 and response.json()["code"] == "organization-managers-only"
    # Another organisation's owner, or the owner of this one while another is active: never revealed.
    for caller in (Caller(org_role="owner"), Caller(roles=["user"])):
        response = await client.get(members_url(), headers=caller.headers)
        assert response.status_code == 404 and response.json()["code"] == "organization-not-found"
    unknown = await client.get(members_url(uuid.uuid4()), headers=OWNER.headers)
    assert unknown.status_code == 404
    assert (await client.get(members_url())).status_code == 401
    for params in ({"page": 0}, {"page_size": 101}, {"page": "x"}):
        response = await client.get(members_url(), params=params, headers=OWNER.headers)
        assert response.status_code == 422, response.text


async def test_a_membership_event_with_an_unknown_role_is_not_applied(
    users_app: Litestar, client: httpx.AsyncClient, clean_users_database: str
) -> None:
    ada = uuid.uuid4()
    await users_app.state.bus.publish(membership("member_added", ada, "emperor"))
    marker = membership("member_added", uuid.uuid4(), "member")
    await users_app.state.bus.publish(marker)
    await roles_once(client, {marker.data["user_id"]: "member"})
    with psycopg.connect(clean_users_database) as conn:
        row = conn.execute("SELECT count(*) FROM memberships WHERE user_id = %s", (ada,)).fetchone()
    assert row == (0,)
