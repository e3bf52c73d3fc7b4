"""Routing and the gateway's own public endpoints: each prefix reaches its upstream, unknown ones are
404, and health, readiness, metrics, the merged OpenAPI document and the docs need no token."""

import asyncio
import time

import httpx
import pytest
from litestar import Litestar
from litestar.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.routing import RouteTable
from tests.conftest import app_client
from tests.gateway.conftest import (
    AUTH,
    USERS,
    SettingsFactory,
    access_token,
    assert_problem,
    bearer,
    register,
)
from tests.gateway.echo import Echo
from tests.metrics import sample

REQUESTS = "pyairtable_gateway_requests_total"


async def test_each_prefix_reaches_its_own_upstream(platform_client: httpx.AsyncClient, echo: Echo) -> None:
    tokens = await register(platform_client)
    me = await platform_client.get(f"{AUTH}/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "ada@example.com"
    assert echo.seen == [], "an auth request reached the users upstream"

    users = await platform_client.get(f"{USERS}/42/profile?fields=a&fields=b", headers=bearer(tokens["access_token"]))
    assert users.status_code == 200, users.text
    seen = users.json()
    assert seen["method"] == "GET"
    assert seen["path"] == seen["raw_path"] == f"{USERS}/42/profile"
    assert seen["query_string"] == "fields=a&fields=b"
    assert len(echo.seen) == 1


async def test_the_bare_prefix_and_every_method_are_forwarded(client: httpx.AsyncClient, echo: Echo) -> None:
    headers = bearer(access_token())
    bare = await client.get(USERS, headers=headers)
    assert bare.status_code == 200, bare.text
    assert bare.json()["raw_path"] == USERS
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = await client.request(method, f"{USERS}/7", headers=headers, json={"n": 1})
        assert response.status_code == 200, response.text
        assert response.json()["method"] == method
        assert response.json()["body"] == '{"n":1}'


async def test_percent_encoded_characters_reach_the_upstream_decoded_in_path_exact_in_raw_path(
    client: httpx.AsyncClient,
) -> None:
    """The upstream sees what a server in front of it would give: ``path`` decoded, ``raw_path`` as sent."""
    response = await client.get(f"{USERS}/hello%20world", headers=bearer(access_token()))
    assert response.status_code == 200, response.text
    assert response.json()["raw_path"] == f"{USERS}/hello%20world"
    assert response.json()["path"] == f"{USERS}/hello world"


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "BREW"])
async def test_methods_no_service_serves_are_405_at_the_gateway(
    client: httpx.AsyncClient, echo: Echo, method: str
) -> None:
    """RELIABILITY F10: TRACE (cross-site tracing) and made-up methods never reach a service."""
    response = await client.request(method, f"{USERS}/7", headers=bearer(access_token()))
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert echo.seen == []


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/api/v1/users", "/api/v1/users"),
        ("/api/v1/users/", "/api/v1/users"),
        ("/api/v1/users/42/profile", "/api/v1/users"),
        ("/api/v1/users/admin", "/api/v1/users/admin"),
        ("/api/v1/users/admin/x", "/api/v1/users/admin"),
        ("/api/v1/users/administrator", "/api/v1/users"),
        ("/api/v1/usersx", None),
        ("/api/v1", None),
        ("/api/v1/", None),
        ("/", None),
        ("", None),
    ],
)
def test_the_longest_prefix_of_whole_segments_wins(path: str, prefix: str | None) -> None:
    table = RouteTable(["/api/v1/auth", "/api/v1/users", "/api/v1/users/admin"])
    route = table.match(path)
    assert (route.prefix if route else None) == prefix


@pytest.mark.parametrize(
    "path",
    ["/api/v1/nope", "/api/v1/billing/x", "/api/v2/users/x", "/api/v1/usersx", "/api/v1", "/users/x", "/"],
)
async def test_an_unknown_prefix_is_404_problem(client: httpx.AsyncClient, echo: Echo, path: str) -> None:
    response = await client.get(path, headers=bearer(access_token()))
    assert_problem(response, 404, "not-found")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert echo.seen == []


async def test_problem_instance_is_the_path_the_client_asked_for(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{USERS}/x/y")
    body = assert_problem(response, 401)
    assert body["instance"] == f"{USERS}/x/y"


async def test_health_ready_metrics_openapi_and_docs_need_no_token(platform_client: httpx.AsyncClient) -> None:
    health = await platform_client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["service"] == "gateway"

    ready = await platform_client.get("/ready")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert {name: check["status"] for name, check in checks.items()} == {
        "redis": "ok",
        "upstream:auth": "ok",
        "upstream:users": "ok",
    }

    unauthorised = {"method": "GET", "route": f"{AUTH}/*", "status": "401"}
    before = sample((await platform_client.get("/metrics")).text, REQUESTS, **unauthorised)
    assert (await platform_client.get(f"{AUTH}/me")).status_code == 401
    metrics = await platform_client.get("/metrics")
    assert metrics.status_code == 200
    assert sample(metrics.text, REQUESTS, **unauthorised) == before + 1, "counted under the route template"
    assert f'route="{AUTH}/me"' not in metrics.text, "metrics must use the route template, not raw paths"

    document = await platform_client.get("/api/v1/openapi.json")
    assert document.status_code == 200, document.text
    spec = document.json()
    assert spec["openapi"].startswith("3.")
    for path in (f"{AUTH}/login", f"{AUTH}/register", f"{AUTH}/refresh", f"{AUTH}/me"):
        assert path in spec["paths"], f"{path} missing from the merged document"
    assert spec["components"]["schemas"], "component schemas were not merged"
    assert "BearerAuth" in spec["components"]["securitySchemes"]
    assert spec["x-unavailable"] == []
    login_body = spec["paths"][f"{AUTH}/login"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert login_body["$ref"].removeprefix("#/components/schemas/") in spec["components"]["schemas"]

    docs = await platform_client.get("/api/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/api/v1/openapi.json" in docs.text


async def test_a_down_upstream_is_reported_degraded_and_the_gateway_stays_ready(
    make_settings: SettingsFactory, echo: Echo
) -> None:
    async def database_down() -> None:
        raise ConnectionRefusedError("database down")

    echo.state.readiness_checks["database"] = database_down
    app = create_app(make_settings(), services={USERS: echo})
    async with app_client(app) as client:
        ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert ready.json()["checks"]["upstream:users"]["status"] == "degraded"
    assert ready.json()["checks"]["redis"]["status"] == "ok"


async def test_openapi_lists_an_unreachable_service_instead_of_failing(
    make_settings: SettingsFactory, echo: Echo, auth_app: Litestar
) -> None:
    """One service without a document does not take the platform's documentation down."""

    class NoDocument(Echo):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
            if scope["type"] == "http" and scope["path"].startswith("/schema"):
                raise RuntimeError("no document")
            await super().__call__(scope, receive, send)

    app = create_app(make_settings(request_timeout=10), services={AUTH: auth_app, USERS: NoDocument(USERS)})
    async with app_client(app) as client:
        document = await client.get("/api/v1/openapi.json")
    assert document.status_code == 200, document.text
    assert document.json()["x-unavailable"] == [USERS]
    assert f"{AUTH}/login" in document.json()["paths"]


async def test_requests_in_flight_are_counted_while_they_are_proxied(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(request_timeout=10), services={USERS: Echo(USERS, slow_seconds=1.0)})

    async def in_flight(client: httpx.AsyncClient) -> float:
        return sample((await client.get("/metrics")).text, "pyairtable_gateway_requests_in_flight")

    async with app_client(app) as client:
        before = await in_flight(client)
        slow = asyncio.create_task(client.get(f"{USERS}/slow", headers=bearer(access_token())))
        deadline = time.monotonic() + 10
        while await in_flight(client) != before + 1:
            assert time.monotonic() < deadline, "the slow request was never counted in flight"
            await asyncio.sleep(0.02)
        assert (await slow).status_code == 200
        assert await in_flight(client) == before
