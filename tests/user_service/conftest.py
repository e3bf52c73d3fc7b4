import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from tests.auth_service.conftest import JWT_SECRET
from tests.conftest import Clock, app_client, database_fixtures, signed_access_token
from user_service.app import create_app
from user_service.config import UserSettings

USERS = "/api/v1/users"


users_database, clean_users_database = database_fixtures(
    "users", UserSettings, "user_service", "profiles, outbox, processed_events, memberships"
)


@pytest.fixture
def user_settings(clean_users_database: str, service_settings: dict[str, Any]) -> UserSettings:
    return UserSettings(
        **service_settings,
        database_url=clean_users_database,
        jwt_secret=JWT_SECRET,
        outbox_poll_seconds=0.2,
        event_reclaim_seconds=0.5,
    )


@pytest.fixture
def users_app(user_settings: UserSettings, clock: Clock) -> Litestar:
    return create_app(user_settings, clock=clock)


@pytest.fixture
async def client(users_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(users_app) as test_client:
        yield test_client


class Caller:
    """A made-up signed-in user: its id, tenant, and a bearer header (a token minted when it is read,
    so a Caller made at import time never hands out a token that expired mid-run)."""

    def __init__(self, roles: list[str] | None = None, tenant_id: uuid.UUID | None = None, **claims: Any) -> None:
        self.id = uuid.uuid4()
        self.tenant_id = tenant_id or uuid.uuid4()
        self.email = claims.pop("email", f"{self.id.hex[:8]}@example.com")
        self.roles = roles or ["user"]
        self.claims = claims

    @property
    def headers(self) -> dict[str, str]:
        token = signed_access_token(
            JWT_SECRET, sub=str(self.id), email=self.email, roles=self.roles, tid=str(self.tenant_id), **self.claims
        )
        return {"Authorization": f"Bearer {token}"}


def profile_url(caller: Caller | uuid.UUID) -> str:
    return f"{USERS}/{caller.id if isinstance(caller, Caller) else caller}"
