import secrets
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from auth_service.app import create_app
from auth_service.config import AuthSettings
from tests.conftest import Clock, app_client, database_fixtures, eventually, signed_access_token
from tests.mail_server import Inbox, MailServer, mail_server  # noqa: F401  (pytest finds fixtures by name)

JWT_SECRET = secrets.token_urlsafe(48)
PASSWORD = "correct horse battery staple"
# The cheapest parameters the service accepts (OWASP's minimum), so the suite stays fast.
FAST_ARGON2: dict[str, Any] = {"argon2_time_cost": 2, "argon2_memory_kib": 19456, "argon2_parallelism": 1}


TABLES = (
    "users, sessions, refresh_tokens, one_time_tokens, outbox, mail_outbox, processed_events,"
    " organizations, memberships, invitations"
)


auth_database, clean_auth_database = database_fixtures("auth", AuthSettings, "auth_service", TABLES)


@pytest.fixture
def auth_settings(clean_auth_database: str, service_settings: dict[str, Any]) -> AuthSettings:
    return AuthSettings(
        **service_settings,
        database_url=clean_auth_database,
        jwt_secret=JWT_SECRET,
        ip_attempts_per_minute=1000,
        outbox_poll_seconds=0.2,
        **FAST_ARGON2,
    )


@pytest.fixture
def auth_app(auth_settings: AuthSettings, clock: Clock) -> Litestar:
    return create_app(auth_settings, clock=clock)


@pytest.fixture
async def client(auth_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(auth_app) as test_client:
        yield test_client


async def register(
    client: httpx.AsyncClient, email: str = "ada@example.com", password: str = PASSWORD
) -> dict[str, Any]:
    response = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def admin_headers() -> dict[str, str]:
    """A bearer of an administrator the service has no account for (as an admin's token looks)."""
    return {"Authorization": f"Bearer {signed_access_token(JWT_SECRET, roles=['user', 'admin'])}"}


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "request_id"}


@pytest.fixture
def mail_settings(auth_settings: AuthSettings, mail_server: MailServer) -> AuthSettings:  # noqa: F811
    return msgspec.structs.replace(
        auth_settings, smtp_url=mail_server.url, smtp_ca_file=mail_server.ca_file, site_url="https://app.example.com"
    )


@pytest.fixture
def inbox(mail_server: MailServer) -> Inbox:  # noqa: F811
    return mail_server.inbox


async def mail_to(inbox: Inbox, address: str, count: int = 1) -> EmailMessage:
    """The ``count``-th message to ``address``, once it has arrived."""
    await eventually(lambda: len(inbox.to(address)) >= count, f"mail #{count} to {address}")
    return inbox.to(address)[count - 1]
