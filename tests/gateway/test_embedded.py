"""The composition root: services run in-process unless their URL is configured."""

from pathlib import Path

from embedded.app import create_app
from tests.conftest import app_client
from tests.gateway.conftest import AUTH, SettingsFactory


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
