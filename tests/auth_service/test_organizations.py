"""Organisations: who may do what (owner, admin, member, viewer, and someone of another
organisation) on every organisation route, the last owner kept, role changes and removals
effective on the next request and refresh, switching, and where a sign-in starts; against the
real service, PostgreSQL, Redis and an SMTP server (members join through the invitation mail)."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared.keys import hs256_kid
from tests.auth_service.conftest import JWT_SECRET, PASSWORD, Clock
from tests.auth_service.organizations_support import (
    AUTH,
    ORGS,
    Member,
    Team,
    audit_actions,
    claims,
    member,
    outbox_events,
    refreshed,
    team,
    unknown_id,
)
from tests.conftest import access_claims, app_client
from tests.mail_server import Inbox

ROLES = ("owner", "admin", "member", "viewer")
MANAGERS = ("owner", "admin")


@pytest.fixture
async def client(mail_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(mail_settings, clock=clock)) as test_client:
        yield test_client


@pytest.fixture
async def crew(client: httpx.AsyncClient, inbox: Inbox) -> Team:
    return await team(client, inbox)


def routes(org_id: str, target_id: str) -> list[tuple[str, str, dict[str, Any] | None, tuple[str, ...], int]]:
    """Each organisation route that leaves the team as it is: method, path, body, the roles
    allowed, and the status an allowed role gets."""
    return [
        ("GET", f"{ORGS}/{org_id}", None, ROLES, 200),
        ("PATCH", f"{ORGS}/{org_id}", {"name": "Analytical Engines"}, MANAGERS, 200),
        ("PATCH", f"{ORGS}/{org_id}/settings", {"require_two_factor": False}, ("owner",), 200),
        ("GET", f"{ORGS}/{org_id}/members", None, ROLES, 200),
        ("PATCH", f"{ORGS}/{org_id}/members/{target_id}", {"role": "viewer"}, MANAGERS, 200),
        ("DELETE", f"{ORGS}/{org_id}/members/{unknown_id()}", None, MANAGERS, 404),
        ("GET", f"{ORGS}/{org_id}/invitations", None, MANAGERS, 200),
        ("POST", f"{ORGS}/{org_id}/invitations", {"email": "zoe@example.com", "role": "viewer"}, MANAGERS, 201),
        ("DELETE", f"{ORGS}/{org_id}/invitations/{unknown_id()}", None, MANAGERS, 404),
    ]


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_may_do_what_the_roles_table_says_in_its_organisation(
    client: httpx.AsyncClient, crew: Team, role: str
) -> None:
    caller = crew.by_role(role)

    for method, path, body, allowed, status in routes(crew.org_id, crew.viewer.id):
        response = await client.request(method, path, json=body, headers=caller.headers)

        if role in allowed:
            assert response.status_code == status, (method, path, response.text)
        else:
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["code"] == "org-role-required"


@pytest.mark.parametrize("role", ROLES)
async def test_another_organisation_is_not_found_whatever_the_role(
    client: httpx.AsyncClient, crew: Team, role: str
) -> None:
    theirs = claims(crew.outsider.tokens)["tid"]
    caller = crew.by_role(role)

    for method, path, body, _, _ in [
        *routes(theirs, crew.outsider.id),
        ("POST", f"{ORGS}/{theirs}/switch", None, (), 0),
        ("POST", f"{ORGS}/{theirs}/leave", None, (), 0),
    ]:
        response = await client.request(method, path, json=body, headers=caller.headers)

        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == "organization-not-found"
        assert "eve" not in response.text and theirs not in response.text.replace(path, "")


async def test_an_organisation_that_does_not_exist_answers_as_another_ones(
    client: httpx.AsyncClient, crew: Team
) -> None:
    unknown = await client.get(f"{ORGS}/{unknown_id()}", headers=crew.owner.headers)
    other = await client.get(f"{ORGS}/{claims(crew.outsider.tokens)['tid']}", headers=crew.owner.headers)

    assert unknown.status_code == other.status_code == 404
    assert unknown.json()["detail"] == other.json()["detail"]


async def test_members_see_each_other_with_roles_and_their_own_organisations(
    client: httpx.AsyncClient, crew: Team
) -> None:
    members = (await client.get(f"{ORGS}/{crew.org_id}/members", headers=crew.viewer.headers)).json()["members"]
    mine = (await client.get(ORGS, headers=crew.viewer.headers)).json()["organizations"]

    assert {(m["email"], m["role"]) for m in members} == {
        ("ada@example.com", "owner"),
        ("bob@example.com", "admin"),
        ("carol@example.com", "member"),
        ("dan@example.com", "viewer"),
    }
    assert [(o["id"], o["role"], o["name"]) for o in mine] == [(crew.org_id, "viewer", "ada")]


async def test_registration_founds_an_organisation_its_owner_and_publishes_the_membership(
    client: httpx.AsyncClient, auth_settings: AuthSettings
) -> None:
    ada = await member(client, "ada.lovelace@example.com")

    token = claims(ada.tokens)
    assert token["org_role"] == "owner"
    assert ada.tokens["user"]["tenant_id"] == token["tid"]
    mine = (await client.get(ORGS, headers=ada.headers)).json()["organizations"]
    assert [(o["id"], o["slug"], o["role"]) for o in mine] == [(token["tid"], "ada-lovelace", "owner")]
    added = outbox_events(auth_settings.database_url, "organization.member_added")
    assert added == [{"organization_id": token["tid"], "user_id": ada.id, "role": "owner"}]


async def test_a_new_organisation_has_its_creator_as_owner_and_a_slug_of_its_own(
    client: httpx.AsyncClient, auth_settings: AuthSettings
) -> None:
    ada = await member(client, "ada@example.com")

    first = await client.post(ORGS, json={"name": "Engines"}, headers=ada.headers)
    second = await client.post(ORGS, json={"name": "Engines"}, headers=ada.headers)

    assert first.status_code == second.status_code == 201
    assert first.json()["role"] == "owner" and first.json()["slug"] == "engines"
    assert second.json()["slug"].startswith("engines-")
    assert len((await client.get(ORGS, headers=ada.headers)).json()["organizations"]) == 3
    created = [e for e in audit_actions(auth_settings.database_url) if e["action"] == "org.created"]
    assert {e["organization_id"] for e in created} == {first.json()["id"], second.json()["id"]}


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 101])
async def test_an_absurd_name_is_refused(client: httpx.AsyncClient, name: str) -> None:
    ada = await member(client, "ada@example.com")

    response = await client.post(ORGS, json={"name": name}, headers=ada.headers)

    assert response.status_code == 422


async def test_an_admin_cannot_touch_an_owner_nor_make_one(client: httpx.AsyncClient, crew: Team) -> None:
    demote = await client.patch(
        f"{ORGS}/{crew.org_id}/members/{crew.owner.id}", json={"role": "member"}, headers=crew.admin.headers
    )
    promote = await client.patch(
        f"{ORGS}/{crew.org_id}/members/{crew.member.id}", json={"role": "owner"}, headers=crew.admin.headers
    )
    remove = await client.delete(f"{ORGS}/{crew.org_id}/members/{crew.owner.id}", headers=crew.admin.headers)
    invite_owner = await client.post(
        f"{ORGS}/{crew.org_id}/invitations",
        json={"email": "zoe@example.com", "role": "owner"},
        headers=crew.admin.headers,
    )

    assert [r.status_code for r in (demote, promote, remove, invite_owner)] == [403, 403, 403, 403]
    members = (await client.get(f"{ORGS}/{crew.org_id}/members", headers=crew.owner.headers)).json()["members"]
    assert {m["email"]: m["role"] for m in members}["ada@example.com"] == "owner"
    assert {m["email"]: m["role"] for m in members}["carol@example.com"] == "member"


async def test_an_organisation_keeps_its_last_owner(client: httpx.AsyncClient, crew: Team) -> None:
    demote = await client.patch(
        f"{ORGS}/{crew.org_id}/members/{crew.owner.id}", json={"role": "admin"}, headers=crew.owner.headers
    )
    leave = await client.post(f"{ORGS}/{crew.org_id}/leave", headers=crew.owner.headers)
    remove = await client.delete(f"{ORGS}/{crew.org_id}/members/{crew.owner.id}", headers=crew.owner.headers)

    assert [r.status_code for r in (demote, leave, remove)] == [409, 409, 409]
    assert {r.json()["code"] for r in (demote, leave, remove)} == {"last-owner"}

    promoted = await client.patch(
        f"{ORGS}/{crew.org_id}/members/{crew.admin.id}", json={"role": "owner"}, headers=crew.owner.headers
    )
    assert promoted.status_code == 200
    assert (await client.post(f"{ORGS}/{crew.org_id}/leave", headers=crew.owner.headers)).status_code == 204
    bob = await refreshed(client, crew.admin)
    assert claims(bob.tokens)["org_role"] == "owner"


async def test_a_changed_role_holds_on_the_next_request_and_refresh(
    client: httpx.AsyncClient, crew: Team, auth_settings: AuthSettings
) -> None:
    changed = await client.patch(
        f"{ORGS}/{crew.org_id}/members/{crew.admin.id}", json={"role": "viewer"}, headers=crew.owner.headers
    )

    assert changed.status_code == 200 and changed.json()["role"] == "viewer"
    assert (await client.get(f"{AUTH}/me", headers=crew.admin.headers)).status_code == 401
    bob = await refreshed(client, crew.admin)
    assert (claims(bob.tokens)["tid"], claims(bob.tokens)["org_role"]) == (crew.org_id, "viewer")
    rename = await client.patch(f"{ORGS}/{crew.org_id}", json={"name": "Mine now"}, headers=bob.headers)
    assert rename.status_code == 403
    assert outbox_events(auth_settings.database_url, "organization.member_changed") == [
        {"organization_id": crew.org_id, "user_id": crew.admin.id, "role": "viewer"}
    ]
    audit = [e for e in audit_actions(auth_settings.database_url) if e["action"] == "member.role_changed"]
    assert [(e["actor_id"], e["target_id"], e["details"]) for e in audit] == [
        (crew.owner.id, crew.admin.id, {"from": "admin", "to": "viewer"})
    ]
    assert "@" not in str(audit)


async def test_a_removed_member_loses_the_organisation_at_once(
    client: httpx.AsyncClient, crew: Team, auth_settings: AuthSettings
) -> None:
    removed = await client.delete(f"{ORGS}/{crew.org_id}/members/{crew.member.id}", headers=crew.admin.headers)

    assert removed.status_code == 204
    assert (await client.get(f"{AUTH}/me", headers=crew.member.headers)).status_code == 401
    carol = await refreshed(client, crew.member)
    assert "tid" not in claims(carol.tokens) and "org_role" not in claims(carol.tokens)
    assert (await client.get(f"{ORGS}/{crew.org_id}", headers=carol.headers)).status_code == 404
    assert (await client.get(ORGS, headers=carol.headers)).json()["organizations"] == []
    assert outbox_events(auth_settings.database_url, "organization.member_removed") == [
        {"organization_id": crew.org_id, "user_id": crew.member.id}
    ]


async def test_permission_comes_from_the_membership_not_the_token(client: httpx.AsyncClient, crew: Team) -> None:
    """A token still claiming ``admin`` (signed, unrevoked) does not act for a mere member."""
    forged = access_claims(sub=crew.member.id, tid=crew.org_id, org_role="admin", email=crew.member.email)
    token = jwt.encode(forged, JWT_SECRET, algorithm="HS256", headers={"typ": "at+jwt", "kid": hs256_kid(JWT_SECRET)})

    response = await client.patch(
        f"{ORGS}/{crew.org_id}", json={"name": "Taken over"}, headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 403


async def test_a_member_leaves_and_the_organisation_is_gone_for_them(client: httpx.AsyncClient, crew: Team) -> None:
    left = await client.post(f"{ORGS}/{crew.org_id}/leave", headers=crew.viewer.headers)

    assert left.status_code == 204
    dan = await refreshed(client, crew.viewer)
    assert "tid" not in claims(dan.tokens)
    members = (await client.get(f"{ORGS}/{crew.org_id}/members", headers=crew.owner.headers)).json()["members"]
    assert "dan@example.com" not in {m["email"] for m in members}


async def test_switching_gives_a_pair_for_the_other_organisation_and_sign_in_starts_there(
    client: httpx.AsyncClient, crew: Team, auth_settings: AuthSettings
) -> None:
    own = (await client.post(ORGS, json={"name": "Carol's"}, headers=crew.member.headers)).json()["id"]

    switched = await client.post(f"{ORGS}/{own}/switch", headers=crew.member.headers)

    assert switched.status_code == 200, switched.text
    assert (claims(switched.json())["tid"], claims(switched.json())["org_role"]) == (own, "owner")
    assert (await client.get(f"{AUTH}/me", headers=crew.member.headers)).status_code == 401  # that session ended
    login = await client.post(f"{AUTH}/login", json={"email": crew.member.email, "password": PASSWORD})
    assert claims(login.json())["tid"] == own
    back = await client.post(f"{ORGS}/{crew.org_id}/switch", headers=Member(crew.member.email, login.json()).headers)
    assert (claims(back.json())["tid"], claims(back.json())["org_role"]) == (crew.org_id, "member")
    switches = [e for e in audit_actions(auth_settings.database_url) if e["action"] == "org.switched"]
    assert [e["organization_id"] for e in switches] == [own, crew.org_id]


async def test_sign_in_falls_back_to_the_oldest_membership(client: httpx.AsyncClient, crew: Team) -> None:
    """Dan was last active in the team; removed from it, he signs in to the organisation he joined first after."""
    own = (await client.post(ORGS, json={"name": "Dan's"}, headers=crew.viewer.headers)).json()["id"]
    await client.delete(f"{ORGS}/{crew.org_id}/members/{crew.viewer.id}", headers=crew.owner.headers)

    login = await client.post(f"{AUTH}/login", json={"email": crew.viewer.email, "password": PASSWORD})

    assert (claims(login.json())["tid"], claims(login.json())["org_role"]) == (own, "owner")


INTROSPECT = f"{AUTH}/internal/api-keys/introspect"


async def key_claims(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    answer = await client.post(INTROSPECT, json={"key": key})
    assert answer.status_code == 200, answer.text
    return claims(answer.json())


async def test_a_personal_key_acts_in_its_organisation_with_its_owners_current_role(
    client: httpx.AsyncClient, crew: Team
) -> None:
    created = await client.post(
        f"{AUTH}/api-keys", json={"name": "ci", "scopes": ["airtable:read"]}, headers=crew.member.headers
    )
    key = created.json()["key"]
    assert (await key_claims(client, key))["org_role"] == "member"

    await client.patch(
        f"{ORGS}/{crew.org_id}/members/{crew.member.id}", json={"role": "viewer"}, headers=crew.owner.headers
    )
    viewer = await key_claims(client, key)
    await client.delete(f"{ORGS}/{crew.org_id}/members/{crew.member.id}", headers=crew.owner.headers)
    removed = await key_claims(client, key)

    assert (viewer["tid"], viewer["org_role"]) == (crew.org_id, "viewer")
    assert "tid" not in removed and "org_role" not in removed
    assert removed["sub"] == crew.member.id


async def test_an_organisations_service_keys_are_its_managers_to_keep(client: httpx.AsyncClient, crew: Team) -> None:
    keys = f"{ORGS}/{crew.org_id}/service-keys"
    body = {"name": "etl", "scopes": ["airtable:read", "airtable:write"]}

    created = await client.post(keys, json=body, headers=crew.admin.headers)
    by_member = await client.post(keys, json=body, headers=crew.member.headers)
    by_outsider = await client.get(keys, headers=crew.outsider.headers)

    assert created.status_code == 201, created.text
    assert (by_member.status_code, by_outsider.status_code) == (403, 404)
    token = await key_claims(client, created.json()["key"])
    assert (token["tid"], token["org_role"], token["roles"]) == (crew.org_id, "member", ["service"])
    listed = (await client.get(keys, headers=crew.owner.headers)).json()["keys"]
    assert [k["id"] for k in listed] == [created.json()["id"]]
    theirs = f"{ORGS}/{claims(crew.outsider.tokens)['tid']}/service-keys"
    assert (await client.get(theirs, headers=crew.outsider.headers)).json()["keys"] == []
    other_org = await client.delete(f"{theirs}/{created.json()['id']}", headers=crew.outsider.headers)
    assert other_org.status_code == 404
    assert (await client.delete(f"{keys}/{created.json()['id']}", headers=crew.owner.headers)).status_code == 204
    refused = await client.post(INTROSPECT, json={"key": created.json()["key"]})
    assert refused.status_code == 401


async def test_only_an_owner_deletes_the_organisation_and_its_members_lose_it(
    client: httpx.AsyncClient, crew: Team, auth_settings: AuthSettings
) -> None:
    personal = await client.post(
        f"{AUTH}/api-keys", json={"name": "mine", "scopes": ["airtable:read"]}, headers=crew.member.headers
    )
    service = await client.post(
        f"{ORGS}/{crew.org_id}/service-keys",
        json={"name": "etl", "scopes": ["airtable:read"]},
        headers=crew.owner.headers,
    )
    by_admin = await client.delete(f"{ORGS}/{crew.org_id}", headers=crew.admin.headers)
    by_outsider = await client.delete(f"{ORGS}/{crew.org_id}", headers=crew.outsider.headers)

    deleted = await client.delete(f"{ORGS}/{crew.org_id}", headers=crew.owner.headers)

    assert (by_admin.status_code, by_outsider.status_code, deleted.status_code) == (403, 404, 204)
    assert (await client.get(f"{AUTH}/me", headers=crew.member.headers)).status_code == 401
    carol = await refreshed(client, crew.member)
    assert "tid" not in claims(carol.tokens)
    ada = await refreshed(client, crew.owner)
    assert (await client.get(f"{ORGS}/{crew.org_id}", headers=ada.headers)).status_code == 404
    assert "tid" not in await key_claims(client, personal.json()["key"])  # the key stays, in no organisation
    assert (await client.post(INTROSPECT, json={"key": service.json()["key"]})).status_code == 401
    assert outbox_events(auth_settings.database_url, "organization.deleted") == [{"organization_id": crew.org_id}]
    removed = outbox_events(auth_settings.database_url, "organization.member_removed")
    assert {e["user_id"] for e in removed} == {crew.owner.id, crew.admin.id, crew.member.id, crew.viewer.id}
    login = await client.post(f"{AUTH}/login", json={"email": crew.admin.email, "password": PASSWORD})
    assert login.status_code == 200 and "tid" not in claims(login.json())
