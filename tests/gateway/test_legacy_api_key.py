"""The older platform service's README, its curl flows verbatim, through the gateway in front of the
real auth and analytics services: a backend with only the deployment's ``X-API-Key`` tracks events
and metrics (200, the old shapes); the integer ``user_id`` of its own system is kept as an external
id, never taken for a platform user."""

from collections.abc import AsyncIterator

import httpx
import msgspec
import psycopg
import pytest
from litestar import Litestar

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from gateway.app import create_app
from tests.auth_service.conftest import Clock
from tests.conftest import app_client
from tests.gateway.conftest import AUTH, SettingsFactory, assert_problem

ANALYTICS = "/api/v1/analytics"
API_KEY = "your-api-key-of-this-deployment-0123"
JSON = {"Content-Type": "application/json"}
ONLY_API_KEY = {**JSON, "X-API-Key": API_KEY}


@pytest.fixture
async def legacy(
    make_settings: SettingsFactory, auth_settings: AuthSettings, clock: Clock, analytics_app: Litestar
) -> AsyncIterator[httpx.AsyncClient]:
    auth = create_auth_app(msgspec.structs.replace(auth_settings, api_key=API_KEY), clock=clock)
    settings = make_settings(api_key=API_KEY, request_timeout=10.0, auth_rate_limit_burst=20)
    gateway = create_app(settings, services={AUTH: auth, ANALYTICS: analytics_app})
    async with app_client(gateway) as client:
        yield client


async def test_the_readmes_curl_flows_verbatim(legacy: httpx.AsyncClient, clean_analytics_database: str) -> None:
    # Register user, login, use JWT token: as the README shows.
    registered = await legacy.post(
        "/auth/register",
        headers=ONLY_API_KEY,
        content=b"""{
    "email": "user@example.com",
    "password": "password123",
    "first_name": "John",
    "last_name": "Doe"
  }""",
    )
    assert registered.status_code == 200, registered.text
    login = await legacy.post(
        "/auth/login",
        headers=ONLY_API_KEY,
        content=b"""{
    "email": "user@example.com",
    "password": "password123"
  }""",
    )
    assert login.status_code == 200, login.text
    # The README's next call reads the profile (the user service: tests/gateway/test_compat.py);
    # /auth/verify takes the same headers to the auth service here.
    verified = await legacy.get(
        "/auth/verify", headers={"Authorization": f"Bearer {login.json()['access_token']}", "X-API-Key": API_KEY}
    )
    assert verified.status_code == 200, verified.text
    assert verified.json()["user"]["email"] == "user@example.com"

    # Track event, record metric: the backend sends only X-API-Key.
    event = await legacy.post(
        "/analytics/events",
        headers=ONLY_API_KEY,
        content=b"""{
    "event_type": "user_login",
    "user_id": 1,
    "event_data": {"source": "web"}
  }""",
    )
    assert event.status_code == 200, event.text
    assert set(event.json()) == {"id", "event_type", "event_data", "user_id", "session_id", "timestamp"}
    assert (event.json()["event_type"], event.json()["event_data"]) == ("user_login", {"source": "web"})
    assert event.json()["user_id"] == "1"

    metric = await legacy.post(
        "/analytics/metrics",
        headers=ONLY_API_KEY,
        content=b"""{
    "metric_name": "api_calls",
    "metric_value": 1,
    "metric_type": "counter",
    "service_name": "platform-services",
    "endpoint": "/auth/login"
  }""",
    )
    assert metric.status_code == 200, metric.text
    body = metric.json()
    assert (body["metric_name"], body["metric_value"], body["metric_type"]) == ("api_calls", 1, "counter")
    assert (body["service_name"], body["endpoint"]) == ("platform-services", "/auth/login")

    # The old un-prefixed route alike; the external id is never a platform user's id.
    assert (
        await legacy.post("/events", headers=ONLY_API_KEY, json={"event_type": "x", "user_id": 2})
    ).status_code == 200
    with psycopg.connect(clean_analytics_database) as conn:
        rows = conn.execute(
            "SELECT user_id, properties->>'external_user_id' FROM events ORDER BY event_type"
        ).fetchall()
    assert [external for _, external in rows] == ["1", "2"]
    assert all(user_id not in ("1", "2") for user_id, _ in rows)


async def test_an_external_user_id_on_a_metric_is_a_label(
    legacy: httpx.AsyncClient,
    clean_analytics_database: str,
) -> None:
    body = {"metric_name": "api_calls", "metric_value": 2, "user_id": 7}
    metric = await legacy.post("/analytics/metrics", headers=ONLY_API_KEY, json=body)
    assert metric.status_code == 200, metric.text
    assert metric.json()["user_id"] == "7"
    with psycopg.connect(clean_analytics_database) as conn:
        user_id, labels = conn.execute("SELECT user_id, labels FROM metrics").fetchone() or (None, None)
    assert user_id != "7" and labels == {"external_user_id": "7"}


async def test_a_wrong_or_missing_api_key_is_still_a_401(legacy: httpx.AsyncClient) -> None:
    event = {"event_type": "user_login", "user_id": 1}
    assert_problem(await legacy.post("/analytics/events", headers=JSON, json=event), 401)
    wrong = {**JSON, "X-API-Key": "not-the-deployment-key-0123456789"}
    assert_problem(await legacy.post("/analytics/events", headers=wrong, json=event), 401)


async def test_the_deployment_key_alone_reaches_only_the_old_analytics_routes(legacy: httpx.AsyncClient) -> None:
    assert_problem(await legacy.get("/auth/profile", headers=ONLY_API_KEY), 401)
    assert_problem(await legacy.get(f"{ANALYTICS}/costs", headers=ONLY_API_KEY), 401)
