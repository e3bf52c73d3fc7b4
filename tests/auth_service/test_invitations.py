"""Invitations: mailed through a real SMTP server, followed once from the mail's link (at
registration or by a signed-in user), single use, seven days, revocable, for the invited address
only; against the real service, PostgreSQL and Redis."""

from collections.abc import AsyncIterator

import httpx
import pytest

from auth_service.app import create_app
from auth_service.config import AuthSettings
from tests.auth_service.conftest import PASSWORD, Clock, mail_to
from tests.auth_service.organizations_support import (
    AUTH,
    ORGS,
    Member,
    audit_actions,
    claims,
    invitation_token,
    invite,
    member,
    outbox_events,
    sign_up,
)
from tests.conftest import app_client
from tests.mail_server import Inbox, html_of, text_of

ACCEPT = f"{AUTH}/invitations/accept"


@pytest.fixture
async def client(mail_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(mail_settings, clock=clock)) as test_client:
        yield test_client


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Member:
    return await member(client, "ada@example.com")


def org_of(who: Member) -> str:
    return str(claims(who.tokens)["tid"])


async def test_the_mail_carries_a_link_registering_with_it_joins_with_the_role(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member, auth_settings: AuthSettings
) -> None:
    sent = await invite(client, ada, org_of(ada), "Bob@Example.com", "admin")
    assert sent.status_code == 201, sent.text
    mail = await mail_to(inbox, "bob@example.com")
    assert "https://app.example.com/accept-invitation?token=" in text_of(mail)
    assert "ada" in mail["Subject"] and "admin" in html_of(mail)
    token = text_of(mail).split("?token=")[1].split()[0]

    joined = await sign_up(client, "bob@example.com", token)

    assert joined.status_code == 201, joined.text
    body = joined.json()
    assert body["user"]["email_verified"] is True  # the mail proved the address
    assert (claims(body)["tid"], claims(body)["org_role"]) == (org_of(ada), "admin")
    assert (await client.get(ORGS, headers=Member("bob@example.com", body).headers)).json()["organizations"][0][
        "role"
    ] == "admin"
    assert len(inbox.to("bob@example.com")) == 1  # no verification mail: nothing left to verify
    added = outbox_events(auth_settings.database_url, "organization.member_added")
    assert {"organization_id": org_of(ada), "user_id": body["user"]["id"], "role": "admin"} in added
    actions = [e["action"] for e in audit_actions(auth_settings.database_url)]
    assert {"invitation.created", "invitation.accepted", "member.joined"} <= set(actions)
    assert token not in str(audit_actions(auth_settings.database_url))


async def test_an_invitation_works_once(client: httpx.AsyncClient, inbox: Inbox, ada: Member) -> None:
    token = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com")
    await member(client, "bob@example.com", token)
    carol = await member(client, "carol@example.com")

    again = await client.post(ACCEPT, json={"token": token}, headers=carol.headers)
    at_registration = await sign_up(client, "bob2@example.com", token)

    assert again.status_code == at_registration.status_code == 400
    assert again.json()["code"] == at_registration.json()["code"] == "invalid-invitation"


async def test_an_invitation_expires_after_seven_days(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member, clock: Clock
) -> None:
    token = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com")
    listed = (await client.get(f"{ORGS}/{org_of(ada)}/invitations", headers=ada.headers)).json()["invitations"]
    clock.advance(days=7, seconds=1)

    late = await sign_up(client, "bob@example.com", token)

    assert late.status_code == 400 and late.json()["code"] == "invalid-invitation"
    assert len(listed) == 1
    assert (await client.get(f"{ORGS}/{org_of(ada)}/invitations", headers=ada.headers)).json()["invitations"] == []


async def test_a_revoked_invitation_no_longer_works_and_none_shows_a_token(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member
) -> None:
    token = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com", "viewer")
    listing = await client.get(f"{ORGS}/{org_of(ada)}/invitations", headers=ada.headers)
    (pending,) = listing.json()["invitations"]
    assert token not in listing.text and "token" not in pending
    assert (pending["email"], pending["role"]) == ("bob@example.com", "viewer")

    revoked = await client.delete(f"{ORGS}/{org_of(ada)}/invitations/{pending['id']}", headers=ada.headers)
    again = await client.delete(f"{ORGS}/{org_of(ada)}/invitations/{pending['id']}", headers=ada.headers)

    assert revoked.status_code == 204 and again.status_code == 404
    refused = await sign_up(client, "bob@example.com", token)
    assert refused.status_code == 400 and refused.json()["code"] == "invalid-invitation"


async def test_a_new_invitation_to_the_same_address_replaces_the_earlier(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member
) -> None:
    first = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com", "viewer")
    second = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com", "member")

    assert (await sign_up(client, "bob@example.com", first)).status_code == 400
    bob = await member(client, "bob@example.com", second)
    assert claims(bob.tokens)["org_role"] == "member"


async def test_an_existing_user_accepts_with_their_verified_address_only(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member
) -> None:
    bob = await member(client, "bob@example.com")
    carol = await member(client, "carol@example.com")
    await mail_to(inbox, "bob@example.com")  # the verification mail of his registration
    token = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com")

    unverified = await client.post(ACCEPT, json={"token": token}, headers=bob.headers)
    someone_else = await client.post(ACCEPT, json={"token": token}, headers=carol.headers)
    verification = await mail_to(inbox, "bob@example.com")
    verify_token = text_of(verification).split("?token=")[1].split()[0]
    assert (await client.post(f"{AUTH}/email/verify", json={"token": verify_token})).status_code == 200
    accepted = await client.post(ACCEPT, json={"token": token}, headers=bob.headers)

    assert unverified.status_code == someone_else.status_code == 403
    assert someone_else.json()["code"] == "invitation-email-mismatch"
    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["id"], accepted.json()["role"]) == (org_of(ada), "member")
    switched = await client.post(f"{ORGS}/{org_of(ada)}/switch", headers=bob.headers)
    assert claims(switched.json())["tid"] == org_of(ada)


async def test_registering_with_an_invitation_for_another_address_is_refused(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member
) -> None:
    token = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com")

    response = await sign_up(client, "mallory@example.com", token)

    assert response.status_code == 403
    assert response.json()["code"] == "invitation-email-mismatch"
    assert (await sign_up(client, "bob@example.com", token)).status_code == 201  # still unused


@pytest.mark.parametrize("token", ["x", "a" * 512, "not-a-token-at-all-" * 5])
async def test_an_unknown_token_gets_the_one_answer(client: httpx.AsyncClient, ada: Member, token: str) -> None:
    response = await client.post(ACCEPT, json={"token": token}, headers=ada.headers)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid-invitation"


async def test_a_member_cannot_be_invited_again(client: httpx.AsyncClient, inbox: Inbox, ada: Member) -> None:
    response = await invite(client, ada, org_of(ada), "ADA@example.com", "admin")

    assert response.status_code == 409
    assert response.json()["code"] == "already-member"


async def test_accepting_without_signing_in_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(ACCEPT, json={"token": "whatever"})

    assert response.status_code == 401


async def test_register_then_sign_in_lands_in_the_inviting_organisation(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member
) -> None:
    token = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com", "viewer")
    await member(client, "bob@example.com", token)

    login = await client.post(f"{AUTH}/login", json={"email": "bob@example.com", "password": PASSWORD})

    assert (claims(login.json())["tid"], claims(login.json())["org_role"]) == (org_of(ada), "viewer")


async def test_an_address_gets_a_bounded_number_of_invitations_an_hour(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member
) -> None:
    """Anyone can found an organisation and invite: MAIL_PER_ADDRESS_PER_HOUR (5) bounds the mails."""
    answers = [await invite(client, ada, org_of(ada), "bob@example.com") for _ in range(6)]

    assert [a.status_code for a in answers] == [201] * 5 + [429]
    assert answers[-1].json()["code"] == "too-many-attempts" and "retry-after" in answers[-1].headers
    await mail_to(inbox, "bob@example.com", 5)
    listed = (await client.get(f"{ORGS}/{org_of(ada)}/invitations", headers=ada.headers)).json()["invitations"]
    assert len(listed) == 1  # each replaced the one before


async def test_an_admin_cannot_replace_an_owners_invitation_to_be_owner(
    client: httpx.AsyncClient, inbox: Inbox, ada: Member
) -> None:
    bob_token = await invitation_token(client, inbox, ada, org_of(ada), "bob@example.com", "admin")
    bob = await member(client, "bob@example.com", bob_token)
    owner_invitation = await invitation_token(client, inbox, ada, org_of(ada), "carol@example.com", "owner")

    assert (await invite(client, bob, org_of(ada), "carol@example.com", "viewer")).status_code == 201

    carol = await member(client, "carol@example.com", owner_invitation)
    assert claims(carol.tokens)["org_role"] == "owner"
