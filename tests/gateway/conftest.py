"""Gateway test fixtures: the gateway app with its upstreams in-process.

Upstreams are the real auth service (PostgreSQL, Redis) at ``/api/v1/auth`` and an ``Echo`` at
``/api/v1/users`` that answers with what reached it. The gateway and the auth service share one
Redis namespace (or, without Redis, one ``MemoryStore``), so a logout seen by auth is seen by the
gateway.
"""

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import jwt
import pytest
import redis as redis_sync
from litestar import Litestar

import tests.conftest
from analytics_service.app import create_app as create_analytics_app
from analytics_service.config import AnalyticsSettings
from gateway.app import create_app
from gateway.config import GatewaySettings
from shared.keys import hs256_kid
from tests.analytics_service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    analytics_database,
    clean_analytics_database,
)
from tests.auth_service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    JWT_SECRET,
    PASSWORD,
    auth_app,
    auth_database,
    auth_settings,
    clean_auth_database,
)
from tests.conftest import LOADED_REDIS_TIMEOUT_SECONDS, access_claims, app_client, settings_factory
from tests.gateway.echo import Echo

AUTH = "/api/v1/auth"
USERS = "/api/v1/users"
KID = hs256_kid(JWT_SECRET)
INVALID_TOKEN = 'Bearer error="invalid_token"'
PROBLEM = "application/problem+json"
CLOSED_REDIS = "redis://127.0.0.1:1/0"

SettingsFactory = Callable[..., GatewaySettings]


@pytest.fixture
def make_settings(service_settings: dict[str, Any]) -> SettingsFactory:
    """Gateway settings sharing the auth service's secret and the test's Redis namespace."""
    return settings_factory(
        GatewaySettings,
        **service_settings,
        jwt_secret=JWT_SECRET,
        request_timeout=0.5,
        # As patient as the shared store (``LOADED_REDIS_TIMEOUT_SECONDS``): a limiter reply later
        # than its 50 ms production bound would count that request in the per-process fallback and
        # let one more through the shared quota.
        rate_limit_redis_timeout=LOADED_REDIS_TIMEOUT_SECONDS,
    )


@pytest.fixture
def echo() -> Echo:
    return Echo(USERS)


@pytest.fixture
def gateway(make_settings: SettingsFactory, echo: Echo) -> Litestar:
    """The gateway with only the echo upstream (no database needed)."""
    return create_app(make_settings(), services={USERS: echo})


@pytest.fixture
async def client(gateway: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(gateway) as test_client:
        yield test_client


@pytest.fixture
def platform(make_settings: SettingsFactory, auth_app: Litestar, echo: Echo) -> Litestar:  # noqa: F811
    """The gateway in front of the real auth service and the echo, sharing one Redis namespace.

    A password hash can take well over the echo's 0.5 s on a busy machine: the auth service gets
    a request timeout that a test never waits out."""
    return create_app(make_settings(request_timeout=10.0), services={AUTH: auth_app, USERS: echo})


@pytest.fixture
def analytics_app(clean_analytics_database: str, service_settings: dict[str, Any]) -> Litestar:  # noqa: F811
    """The real analytics service, on the auth service's secret (an upstream of the older clients' routes)."""
    settings = AnalyticsSettings(**service_settings, database_url=clean_analytics_database, jwt_secret=JWT_SECRET)
    return create_analytics_app(settings)


@pytest.fixture
async def platform_client(platform: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(platform) as test_client:
        yield test_client


@pytest.fixture
def redis_keys(redis_url: str, redis_namespace: str) -> Iterator[Callable[[], list[str]]]:
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)

    def keys() -> list[str]:
        return sorted(client.scan_iter(match=f"{redis_namespace}:*", count=1000))

    yield keys
    client.close()


def peer_client(app: Litestar, client_ip: str) -> httpx.AsyncClient:
    """Another client of an app whose lifespan ``app_client`` is already running."""
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# -- tokens -----------------------------------------------------------------------------------


claims = access_claims


def access_token(**changes: Any) -> str:
    """An access token the gateway accepts (signed with the shared secret)."""
    return jwt.encode(claims(**changes), JWT_SECRET, algorithm="HS256", headers={"typ": "at+jwt", "kid": KID})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, Any]:
    response = await client.post(f"{AUTH}/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# -- assertions -------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """A problem (:func:`tests.conftest.assert_problem`) that names the request it answers."""
    body = tests.conftest.assert_problem(response, status, code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_invalid_token(response: httpx.Response) -> None:
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == INVALID_TOKEN


# -- raw ASGI requests (paths exactly as sent, no client-side normalisation) --------------------


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.headers = httpx.Headers(headers)
        self.content = body

    def json(self) -> Any:
        return httpx.Response(self.status_code, headers=self.headers, content=self.content).json()


async def raw_request(
    app: Litestar,
    raw_target: bytes,
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> RawResponse:
    """Call the app as uvicorn would for this request target: ``raw_path`` as received,
    ``path`` percent-decoded, the query apart. The app's lifespan must be running."""
    raw_path, _, query = raw_target.partition(b"?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1"), encoding="latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or []), (b"content-length", str(len(body)).encode())],
        "client": client,
        "server": ("testserver", 80),
        "state": {},
    }
    sent = False
    status, response_headers, chunks = 0, [], []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, response_headers
        if message["type"] == "http.response.start":
            status, response_headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)  # type: ignore[arg-type]
    return RawResponse(status, response_headers, b"".join(chunks))
