"""The composition root: services run in-process unless their URL is configured; EXTRA_ROUTES are
proxied there as in production, and a malformed one is refused at start-up."""

import re
from pathlib import Path

import pytest

from embedded.app import create_app
from shared.settings import SettingsError
from tests.conftest import app_client
from tests.gateway.conftest import AUTH, USERS, SettingsFactory, access_token, bearer
from tests.gateway.echo import Echo, served_over_http

BILLING = "/api/v1/billing"


async def test_a_configured_service_url_is_proxied_over_http(make_settings: SettingsFactory, tmp_path: Path) -> None:
    environ = {"AUTH_SERVICE_URL": "http://127.0.0.1:1", "DATA_DIR": str(tmp_path)}
    settings = make_settings(redis_url="", auth_service_url="http://127.0.0.1:1")

    async with app_client(create_app(settings, environ=environ)) as client:
        response = await client.post(f"{AUTH}/login", json={"email": "ada@example.com", "password": "x" * 12})
        ready = await client.get("/ready")
        for _ in range(4):  # five consecutive failures open the breaker
            await client.get(f"{AUTH}/.well-known/jwks.json")
        metrics = (await client.get("/metrics")).text

    assert 'pyairtable_gateway_upstream_breaker_state{upstream="auth"} 2.0' in metrics
    assert response.status_code == 502
    assert response.json()["code"] == "upstream-unavailable"
    assert ready.json()["checks"]["upstream:auth"]["status"] == "degraded"


async def test_extra_routes_are_proxied_in_the_embedded_mode_too(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    billing, users = Echo(BILLING), Echo(USERS)
    async with served_over_http(billing) as billing_url, served_over_http(users) as users_url:
        # One new prefix, and one that replaces a service the embedded mode would run in-process.
        settings = make_settings(
            redis_url="", request_timeout=10, extra_routes=f"{BILLING}={billing_url},{USERS}={users_url}"
        )
        async with app_client(create_app(settings, environ={"DATA_DIR": str(tmp_path)})) as client:
            invoice = await client.get(f"{BILLING}/invoices/1", headers=bearer(access_token()))
            me = await client.get(f"{USERS}/me", headers=bearer(access_token()))
    assert invoice.status_code == 200, invoice.text
    assert [seen.path for seen in billing.seen] == [f"{BILLING}/invoices/1"]
    assert me.status_code == 200, me.text
    assert [seen.path for seen in users.seen] == [f"{USERS}/me"]


@pytest.mark.parametrize(
    ("extra_routes", "complaint"),
    [
        ("/api/v1/billing", "is not /api/v1/<segment>"),
        ("/billing=http://127.0.0.1:8006", "is not /api/v1/<segment>"),
        ("/api/v1=http://127.0.0.1:8006", "is not /api/v1/<segment>"),
        ("/api/v1/../auth=http://127.0.0.1:8006", "is not /api/v1/<segment>"),
        ("/api/v1/bill ing=http://127.0.0.1:8006", "is not /api/v1/<segment>"),
        ("/api/v1/billing=127.0.0.1:8006", "must be http(s)://host"),
        ("/api/v1/billing=ftp://127.0.0.1", "must be http(s)://host"),
        ("/api/v1/billing=http://", "must be http(s)://host"),
        ("/api/v1/billing=http://127.0.0.1:8006?x=1", "must be http(s)://host"),
        ("/api/v1/billing=http://a:1,/api/v1/billing/=http://b:2", "is given twice"),
    ],
)
def test_a_malformed_extra_route_is_refused_at_start_up(
    make_settings: SettingsFactory, extra_routes: str, complaint: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(complaint)):
        make_settings(extra_routes=extra_routes)
