"""Who may register (SIGNUP_MODE open, invite, domains): an invitation always opens the door, and
platform administrators create accounts whatever the mode; against the real service."""

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared.settings import SettingsError, load_settings
from tests.auth_service.conftest import PASSWORD, Clock, admin_headers
from tests.auth_service.organizations_support import (
    AUTH,
    ORGS,
    Member,
    claims,
    invitation_token,
    sign_up,
)
from tests.conftest import app_client
from tests.mail_server import Inbox

CREATE_ACCOUNT = f"{AUTH}/admin/users"


@pytest.fixture
def mode() -> dict[str, str]:
    return {"signup_mode": "open"}


@pytest.fixture
async def client(mail_settings: AuthSettings, clock: Clock, mode: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    settings = msgspec.structs.replace(mail_settings, **mode)
    async with app_client(create_app(settings, clock=clock)) as test_client:
        yield test_client


async def test_open_is_the_default(client: httpx.AsyncClient) -> None:
    assert AuthSettings().signup_mode == "open"
    assert (await sign_up(client, "anyone@anywhere.test")).status_code == 201


@pytest.mark.parametrize("mode", [{"signup_mode": "invite"}])
async def test_invite_mode_refuses_registration_without_an_invitation(
    client: httpx.AsyncClient, mode: dict[str, str]
) -> None:
    response = await sign_up(client, "ada@example.com")

    assert response.status_code == 403
    assert response.json()["code"] == "signup-closed"
    login = await client.post(f"{AUTH}/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert login.status_code == 401  # no account was made


@pytest.mark.parametrize("mode", [{"signup_mode": "invite"}])
async def test_invite_mode_lets_the_invited_in_and_admins_create_accounts(
    client: httpx.AsyncClient, inbox: Inbox, mode: dict[str, str]
) -> None:
    created = await client.post(
        CREATE_ACCOUNT,
        json={"email": "Ada@Example.com", "password": PASSWORD, "first_name": "Ada"},
        headers=admin_headers(),
    )
    assert created.status_code == 201, created.text
    assert created.json()["email"] == "ada@example.com"
    login = await client.post(f"{AUTH}/login", json={"email": "ada@example.com", "password": PASSWORD})
    ada = Member("ada@example.com", login.json())
    org_id = claims(ada.tokens)["tid"]
    assert claims(ada.tokens)["org_role"] == "owner"
    assert (await client.get(ORGS, headers=ada.headers)).json()["organizations"][0]["name"] == "Ada"

    token = await invitation_token(client, inbox, ada, org_id, "bob@example.com")
    joined = await sign_up(client, "bob@example.com", token)

    assert joined.status_code == 201
    assert claims(joined.json())["tid"] == org_id


async def test_only_platform_admins_create_accounts(client: httpx.AsyncClient) -> None:
    ada = Member("ada@example.com", (await sign_up(client, "ada@example.com")).json())

    response = await client.post(
        CREATE_ACCOUNT, json={"email": "bob@example.com", "password": PASSWORD}, headers=ada.headers
    )
    taken = await client.post(
        CREATE_ACCOUNT, json={"email": "ada@example.com", "password": PASSWORD}, headers=admin_headers()
    )

    assert response.status_code == 403
    assert taken.status_code == 409


@pytest.mark.parametrize("mode", [{"signup_mode": "domains", "signup_domains": "example.com, @Example.org"}])
@pytest.mark.parametrize(
    ("email", "status"),
    [
        ("ada@example.com", 201),
        ("bob@EXAMPLE.org", 201),
        ("eve@example.com.evil.test", 403),
        ("eve@sub.example.com", 403),
        ("eve@evil.test", 403),
    ],
)
async def test_domains_mode_lets_only_those_domains_register(
    client: httpx.AsyncClient, mode: dict[str, str], email: str, status: int
) -> None:
    response = await sign_up(client, email)

    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["code"] == "signup-closed"


@pytest.mark.parametrize(
    "environ",
    [{"SIGNUP_MODE": "closed"}, {"SIGNUP_MODE": "domains"}, {"SIGNUP_MODE": "domains", "SIGNUP_DOMAINS": " , "}],
)
def test_a_wrong_signup_setting_stops_the_start(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="SIGNUP_"):
        load_settings(AuthSettings, environ)
