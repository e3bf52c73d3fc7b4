"""What the organisation tests share: a team of four roles in one organisation (built through the
real invitation mail) and an outsider with an organisation of her own."""

import uuid
from typing import Any

import httpx
import jwt
import msgspec
import psycopg

from tests.auth_service.conftest import PASSWORD, bearer, mail_to
from tests.mail_server import Inbox, token_in

AUTH = "/api/v1/auth"
ORGS = f"{AUTH}/orgs"


class Member(msgspec.Struct):
    email: str
    tokens: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.tokens["user"]["id"])

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.tokens)


class Team(msgspec.Struct):
    org_id: str
    owner: Member
    admin: Member
    member: Member
    viewer: Member
    outsider: Member

    def by_role(self, role: str) -> Member:
        member: Member = getattr(self, role)
        return member


def claims(tokens: dict[str, Any]) -> dict[str, Any]:
    """The access token's claims (the service signed it; the test only reads them)."""
    decoded: dict[str, Any] = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return decoded


async def sign_up(client: httpx.AsyncClient, email: str, invitation: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"email": email, "password": PASSWORD}
    if invitation is not None:
        body["invitation"] = invitation
    return await client.post(f"{AUTH}/register", json=body)


async def member(client: httpx.AsyncClient, email: str, invitation: str | None = None) -> Member:
    response = await sign_up(client, email, invitation)
    assert response.status_code == 201, response.text
    return Member(email=email, tokens=response.json())


async def invite(
    client: httpx.AsyncClient, inviter: Member, org_id: str, email: str, role: str = "member"
) -> httpx.Response:
    return await client.post(
        f"{ORGS}/{org_id}/invitations", json={"email": email, "role": role}, headers=inviter.headers
    )


async def invitation_token(
    client: httpx.AsyncClient, inbox: Inbox, inviter: Member, org_id: str, email: str, role: str = "member"
) -> str:
    """Invite ``email`` and read the token from the link in the mail that arrives."""
    before = len(inbox.to(email))
    response = await invite(client, inviter, org_id, email, role)
    assert response.status_code == 201, response.text
    return token_in(await mail_to(inbox, email, before + 1))


async def team(client: httpx.AsyncClient, inbox: Inbox) -> Team:
    owner = await member(client, "ada@example.com")
    org_id = claims(owner.tokens)["tid"]
    joined = {}
    for role, email in (("admin", "bob@example.com"), ("member", "carol@example.com"), ("viewer", "dan@example.com")):
        token = await invitation_token(client, inbox, owner, org_id, email, role)
        joined[role] = await member(client, email, token)
    outsider = await member(client, "eve@example.com")
    return Team(org_id=org_id, owner=owner, outsider=outsider, **joined)


async def refreshed(client: httpx.AsyncClient, who: Member) -> Member:
    response = await client.post(f"{AUTH}/refresh", json={"refresh_token": who.tokens["refresh_token"]})
    assert response.status_code == 200, response.text
    return Member(email=who.email, tokens=response.json())


def outbox_events(database_url: str, event_type: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM outbox WHERE event_type = %s ORDER BY occurred_at", (event_type,)
        ).fetchall()
    return [row[0] for row in rows]


def audit_actions(database_url: str) -> list[dict[str, Any]]:
    return outbox_events(database_url, "audit.recorded")


def unknown_id() -> str:
    return str(uuid.uuid4())
