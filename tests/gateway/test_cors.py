"""CORS (F7): the allowed origin is echoed exactly with ``Vary: Origin`` and never ``*`` with
credentials; other origins get no ``Access-Control-Allow-Origin``; preflights are answered before
authentication; error responses (401, 429) carry the CORS headers too, so browsers can read them."""

from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from gateway.app import create_app
from gateway.config import GatewaySettings
from shared.settings import SettingsError
from tests.conftest import app_client
from tests.gateway.conftest import USERS, SettingsFactory, access_token, assert_invalid_token, assert_problem, bearer
from tests.gateway.echo import Echo

ALLOWED = "https://app.example"
DISALLOWED = [
    "https://evil.example",
    "null",
    "https://app.example.evil",
    "https://evil.app.example",
    "http://app.example",
    "https://app.example:8443",
    "https://APP.example.evil",
    "https://app.example/",
]


@pytest.fixture
async def cors(make_settings: SettingsFactory, echo: Echo) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(cors_origins=ALLOWED, rate_limit_per_minute=3, rate_limit_burst=3)
    app: Litestar = create_app(settings, services={USERS: echo})
    async with app_client(app) as client:
        yield client


def assert_allowed(response: httpx.Response) -> None:
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "Origin" in [part.strip() for part in response.headers.get("vary", "").split(",")]
    assert response.headers.get("access-control-allow-credentials") == "true"


async def test_the_allowed_origin_is_echoed_exactly(cors: httpx.AsyncClient) -> None:
    response = await cors.get(f"{USERS}/me", headers={**bearer(access_token()), "Origin": ALLOWED})
    assert response.status_code == 200, response.text
    assert_allowed(response)
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "ratelimit", "ratelimit-policy", "retry-after"} <= exposed


@pytest.mark.parametrize("origin", DISALLOWED)
async def test_other_origins_get_no_allow_origin(cors: httpx.AsyncClient, echo: Echo, origin: str) -> None:
    for response in (
        await cors.get(f"{USERS}/me", headers={**bearer(access_token()), "Origin": origin}),
        await cors.get(f"{USERS}/me", headers={"Origin": origin}),
        await cors.get("/health", headers={"Origin": origin}),
    ):
        assert "access-control-allow-origin" not in response.headers, response.headers
        assert "Origin" in [part.strip() for part in response.headers.get("vary", "").split(",")]
    preflight = await cors.options(f"{USERS}/me", headers={"Origin": origin, "Access-Control-Request-Method": "DELETE"})
    assert_refused_preflight(preflight, "Origin")
    assert len(echo.seen) == 1


def assert_refused_preflight(response: httpx.Response, reason: str) -> None:
    """A refused preflight is the platform's problem+json (F9), with no Access-Control-Allow-Origin."""
    problem = assert_problem(response, 403, "cors-refused")
    assert reason in problem["detail"], problem
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "Origin" in [part.strip() for part in response.headers.get("vary", "").split(",")]


async def test_never_a_wildcard_origin(cors: httpx.AsyncClient) -> None:
    for origin in (ALLOWED, "https://evil.example", "null"):
        for response in (
            await cors.get(f"{USERS}/me", headers={"Origin": origin}),
            await cors.options(f"{USERS}/me", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}),
        ):
            assert response.headers.get("access-control-allow-origin") != "*"


def test_a_wildcard_with_credentials_is_refused_at_start_up(make_settings: SettingsFactory) -> None:
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        make_settings(cors_origins="*")
    GatewaySettings(cors_origins="*", cors_allow_credentials=False).validate()


@pytest.mark.parametrize("path", [f"{USERS}/me", f"{USERS}/42/avatar", "/api/v1/auth/login"])
async def test_a_preflight_is_answered_before_authentication(cors: httpx.AsyncClient, echo: Echo, path: str) -> None:
    response = await cors.options(
        path,
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
        },
    )
    assert response.status_code == 204, response.text
    assert_allowed(response)
    assert "PATCH" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert echo.seen == [], "a preflight reached the upstream"


async def test_a_preflight_for_an_unlisted_method_or_header_is_refused(cors: httpx.AsyncClient) -> None:
    method = await cors.options(f"{USERS}/me", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "TRACE"})
    assert_refused_preflight(method, "method")
    header = await cors.options(
        f"{USERS}/me",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-user-id",
        },
    )
    assert_refused_preflight(header, "headers")


async def test_401_and_429_carry_the_cors_headers(cors: httpx.AsyncClient) -> None:
    refused = await cors.get(f"{USERS}/me", headers={"Origin": ALLOWED})
    assert_invalid_token(refused)
    assert_allowed(refused)

    headers = {**bearer(access_token()), "Origin": ALLOWED}
    for _ in range(2):  # the refused request above used one of the three
        assert (await cors.get(f"{USERS}/me", headers=headers)).status_code == 200
    limited = await cors.get(f"{USERS}/me", headers=headers)
    assert_problem(limited, 429, "quota-exceeded")
    assert_allowed(limited)
    assert "retry-after" in limited.headers

    missing = await cors.get("/api/v1/nope", headers=headers)
    assert_problem(missing, 404)
    assert_allowed(missing)


async def test_without_cors_origins_no_cors_headers_are_sent(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{USERS}/me", headers={**bearer(access_token()), "Origin": ALLOWED})
    assert response.status_code == 200
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]


async def test_requests_without_origin_still_vary_on_origin(cors: httpx.AsyncClient) -> None:
    """Sent past Litestar (no Origin), a proxied answer and a problem carry what its hooks would add."""
    for response in (
        await cors.get(f"{USERS}/me", headers=bearer(access_token())),
        await cors.get(f"{USERS}/me"),  # 401 problem
    ):
        assert "Origin" in [part.strip() for part in response.headers.get("vary", "").split(",")], response.headers
        assert len(response.headers.get_list("x-request-id")) == 1
        assert response.headers.get_list("x-content-type-options") == ["nosniff"]
        assert "access-control-allow-origin" not in response.headers
