"""An organisation that requires two-factor sign-in: its owner turns it on only with two-factor
on; a member without it signs in by enrolling first, and cannot switch into it; with TOTP codes on
the test's own clock, against the real service, PostgreSQL and Redis."""

from collections.abc import AsyncIterator

import httpx
import pyotp
import pytest

from auth_service.app import create_app
from auth_service.config import AuthSettings
from tests.auth_service.conftest import PASSWORD, Clock
from tests.auth_service.organizations_support import (
    AUTH,
    ORGS,
    Member,
    Team,
    claims,
    invitation_token,
    member,
    team,
)
from tests.auth_service.test_two_factor import code_at, decode_qr_png, enable
from tests.conftest import app_client
from tests.mail_server import Inbox


@pytest.fixture
async def client(mail_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(mail_settings, clock=clock)) as test_client:
        yield test_client


@pytest.fixture
async def crew(client: httpx.AsyncClient, inbox: Inbox) -> Team:
    return await team(client, inbox)


async def require_two_factor(client: httpx.AsyncClient, crew: Team, value: bool = True) -> httpx.Response:
    return await client.patch(
        f"{ORGS}/{crew.org_id}/settings", json={"require_two_factor": value}, headers=crew.owner.headers
    )


async def test_an_owner_without_two_factor_cannot_require_it(client: httpx.AsyncClient, crew: Team) -> None:
    response = await require_two_factor(client, crew)

    assert response.status_code == 409
    assert response.json()["code"] == "two-factor-not-enabled"
    assert (await client.get(f"{ORGS}/{crew.org_id}", headers=crew.owner.headers)).json()["require_two_factor"] is False


async def test_a_member_without_two_factor_enrols_to_sign_in(
    client: httpx.AsyncClient, crew: Team, clock: Clock
) -> None:
    await enable(client, crew.owner.tokens, clock)
    assert (await require_two_factor(client, crew)).status_code == 200

    refused = await client.post(f"{AUTH}/login", json={"email": crew.member.email, "password": PASSWORD})

    assert refused.status_code == 403
    body = refused.json()
    assert body["code"] == "two-factor-enrolment-required"
    assert "access_token" not in body and body["expires_in"] > 0
    enrolment = await client.post(f"{AUTH}/login/mfa/enroll", json={"challenge": body["challenge"]})
    assert enrolment.status_code == 201, enrolment.text
    assert decode_qr_png(enrolment.json()["qr_code"]) == [enrolment.json()["otpauth_uri"]]
    wrong = await client.post(
        f"{AUTH}/login/mfa",
        json={
            "challenge": body["challenge"],
            "code": pyotp.TOTP(enrolment.json()["secret"]).at(clock.now, counter_offset=5),
        },
    )
    assert wrong.status_code == 401
    signed_in = await client.post(
        f"{AUTH}/login/mfa", json={"challenge": body["challenge"], "code": code_at(enrolment.json()["secret"], clock)}
    )
    assert signed_in.status_code == 200, signed_in.text
    assert len(signed_in.json()["recovery_codes"]) == 10
    assert (claims(signed_in.json())["tid"], claims(signed_in.json())["org_role"]) == (crew.org_id, "member")
    again = await client.post(f"{AUTH}/login/mfa", json={"challenge": body["challenge"], "code": "000000"})
    assert again.status_code == 401 and again.json()["code"] == "invalid-challenge"
    clock.advance(seconds=30)
    next_time = await client.post(f"{AUTH}/login", json={"email": crew.member.email, "password": PASSWORD})
    assert next_time.status_code == 200 and next_time.json()["mfa_required"] is True


async def test_a_login_challenge_does_not_enrol(client: httpx.AsyncClient, crew: Team, clock: Clock) -> None:
    """Only the challenge of a refused sign-in enrols: a made-up or a second-factor one does not."""
    await enable(client, crew.owner.tokens, clock)
    mfa = await client.post(f"{AUTH}/login", json={"email": crew.owner.email, "password": PASSWORD})

    response = await client.post(f"{AUTH}/login/mfa/enroll", json={"challenge": mfa.json()["challenge"]})

    assert response.status_code == 401
    assert response.json()["code"] == "invalid-challenge"


async def test_switching_into_it_without_two_factor_is_refused(
    client: httpx.AsyncClient, crew: Team, clock: Clock
) -> None:
    await enable(client, crew.owner.tokens, clock)
    await require_two_factor(client, crew)
    own = (await client.post(ORGS, json={"name": "Eve's"}, headers=crew.viewer.headers)).json()["id"]
    away = await client.post(f"{ORGS}/{own}/switch", headers=crew.viewer.headers)
    assert away.status_code == 200

    back = await client.post(f"{ORGS}/{crew.org_id}/switch", headers=Member(crew.viewer.email, away.json()).headers)

    assert back.status_code == 403
    assert back.json()["code"] == "two-factor-required"


async def test_turning_the_requirement_off_lets_the_password_alone_in_again(
    client: httpx.AsyncClient, crew: Team, clock: Clock
) -> None:
    await enable(client, crew.owner.tokens, clock)
    await require_two_factor(client, crew)

    assert (await require_two_factor(client, crew, False)).status_code == 200

    login = await client.post(f"{AUTH}/login", json={"email": crew.member.email, "password": PASSWORD})
    assert login.status_code == 200 and claims(login.json())["tid"] == crew.org_id


async def test_joining_it_by_invitation_gives_no_token_for_it_until_two_factor_is_on(
    client: httpx.AsyncClient, crew: Team, clock: Clock, inbox: Inbox
) -> None:
    await enable(client, crew.owner.tokens, clock)
    await require_two_factor(client, crew)
    token = await invitation_token(client, inbox, crew.owner, crew.org_id, "zoe@example.com")

    zoe = await member(client, "zoe@example.com", token)

    assert "tid" not in claims(zoe.tokens)
    assert (await client.post(f"{ORGS}/{crew.org_id}/switch", headers=zoe.headers)).status_code == 403
    await enable(client, zoe.tokens, clock)
    switched = await client.post(f"{ORGS}/{crew.org_id}/switch", headers=zoe.headers)
    assert switched.status_code == 200, switched.text
    assert (claims(switched.json())["tid"], claims(switched.json())["org_role"]) == (crew.org_id, "member")
