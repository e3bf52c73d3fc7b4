"""Analytics test fixtures: the service on its own migrated PostgreSQL database and the test's
Redis namespace, and access tokens for users and administrators."""

import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar import Litestar

from analytics_service.app import create_app
from analytics_service.config import AnalyticsSettings
from shared import migrations
from tests.conftest import Clock, app_client, database_fixtures, settings_factory, signed_access_token

JWT_SECRET = secrets.token_urlsafe(48)
API = "/api/v1/analytics"
TABLES = (
    "events, metrics, usage_daily, cost_daily, endpoint_hourly, event_hourly, usage_applied, usage_scoped_daily,"
    " audit_log, processed_events"
)


class User:
    """A made-up account with a valid access token; ``claims`` adds some (``tid``, ``org_role``)."""

    def __init__(self, *roles: str, **extra: Any) -> None:
        self.id = str(uuid.uuid4())
        self.roles = list(roles or ["user"])
        self.extra = extra

    @property
    def token(self) -> str:
        """Minted when read, so a User made early never hands out a token that expired mid-run."""
        return signed_access_token(JWT_SECRET, sub=self.id, roles=self.roles, **self.extra)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


analytics_database, clean_analytics_database = database_fixtures(
    "analytics", AnalyticsSettings, "analytics_service", TABLES
)

SettingsFactory = Callable[..., AnalyticsSettings]


@pytest.fixture
def make_settings(clean_analytics_database: str, service_settings: dict[str, Any]) -> SettingsFactory:
    return settings_factory(
        AnalyticsSettings, **service_settings, database_url=clean_analytics_database, jwt_secret=JWT_SECRET
    )


@pytest.fixture
def analytics_app(make_settings: SettingsFactory, clock: Clock) -> Litestar:
    return create_app(make_settings(), clock=clock)


@pytest.fixture
async def client(analytics_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(analytics_app) as test_client:
        yield test_client


@pytest.fixture
def sqlite_app(tmp_path: Path, clock: Clock) -> Litestar:
    """The service on SQLite in DATA_DIR (the embedded platform's database), migrated."""
    settings = AnalyticsSettings(data_dir=str(tmp_path), jwt_secret=JWT_SECRET)
    migrations.upgrade(settings, "analytics_service")
    return create_app(settings, clock=clock)


@pytest.fixture
def user() -> User:
    return User("user")


@pytest.fixture
def admin() -> User:
    return User("admin", "user")


def count_rows(database_url: str, table: str, where: str = "TRUE") -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()  # noqa: S608 - test-only literals
    assert row is not None
    return int(row[0])
