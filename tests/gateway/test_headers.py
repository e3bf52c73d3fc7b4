"""What reaches the upstream: no client-asserted identity, no hop-by-hop headers, the gateway's own
forwarding headers and request ID; and what the client gets back: the request ID, ``nosniff`` and
one access-log line per request without the token."""

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from litestar import Litestar

from gateway.app import create_app
from shared.http import STANDARD_RESPONSE_HEADERS
from tests.conftest import app_client
from tests.gateway.conftest import (
    PROBLEM,
    USERS,
    SettingsFactory,
    access_token,
    assert_invalid_token,
    raw_request,
)
from tests.gateway.echo import Echo, served_over_http

VICTIM = str(uuid.uuid4())

# Each variant: the headers a client adds to try to pass as someone else (names as sent).
SPOOFED: dict[str, list[tuple[str, str]]] = {
    "X-User-ID": [("X-User-ID", VICTIM)],
    "x-user-id": [("x-user-id", VICTIM)],
    "X-USER-ID": [("X-USER-ID", VICTIM)],
    "X_User_Id": [("X_User_Id", VICTIM)],
    "x_user_id": [("x_user_id", VICTIM)],
    "duplicated": [("X-User-ID", VICTIM), ("X-User-ID", str(uuid.uuid4()))],
    "duplicated-mixed-case": [("X-User-ID", VICTIM), ("x-user-id", VICTIM), ("X_USER_ID", VICTIM)],
    "comma-joined": [("X-User-ID", f"{VICTIM}, {uuid.uuid4()}")],
    "X-User-Roles": [("X-User-Roles", "admin")],
    "X-User-Role": [("X-User-Role", "admin")],
    "X-User-Email": [("X-User-Email", "admin@example.com")],
    "X-User": [("X-User", "admin")],
    "X-User-Is-Admin": [("X-User-Is-Admin", "true")],
    "X-Roles": [("X-Roles", "admin")],
    "X-Scopes": [("X-Scopes", "admin:*")],
    "X-Forwarded-User": [("X-Forwarded-User", "admin")],
    "X-Forwarded-Email": [("X-Forwarded-Email", "admin@example.com")],
    "X-Forwarded-Groups": [("X-Forwarded-Groups", "admins")],
    "X-Forwarded-Preferred-Username": [("X-Forwarded-Preferred-Username", "admin")],
    "X-Forwarded-Access-Token": [("X-Forwarded-Access-Token", "forged")],
    "X-Authenticated-Userid": [("X-Authenticated-Userid", VICTIM)],
    "X-Authenticated-User": [("X-Authenticated-User", VICTIM)],
    "X-Authenticated-Scope": [("X-Authenticated-Scope", "admin")],
    "X-Auth-User": [("X-Auth-User", "admin")],
    "X-Auth-Request-User": [("X-Auth-Request-User", "admin")],
    "X-Auth-Roles": [("X-Auth-Roles", "admin")],
    "X-Remote-User": [("X-Remote-User", "admin")],
    "Remote-User": [("Remote-User", "admin")],
    "X-Tenant-ID": [("X-Tenant-ID", str(uuid.uuid4()))],
    "X-Consumer-ID": [("X-Consumer-ID", "admin")],
    "X-Consumer-Username": [("X-Consumer-Username", "admin")],
    "X-Consumer-Custom-ID": [("X-Consumer-Custom-ID", "admin")],
    "X-Consumer-Groups": [("X-Consumer-Groups", "admins")],
    "X-Credential-Identifier": [("X-Credential-Identifier", "admin")],
    "X-Client-ID": [("X-Client-ID", "admin")],
    "X-Userinfo": [("X-Userinfo", "eyJzdWIiOiJhZG1pbiJ9")],
    "X-Amzn-Oidc-Identity": [("X-Amzn-Oidc-Identity", "admin")],
    "X-Goog-Authenticated-User-Email": [("X-Goog-Authenticated-User-Email", "accounts.google.com:admin@x")],
    "X-MS-Client-Principal-Name": [("X-MS-Client-Principal-Name", "admin")],
    "connection-listed": [("Connection", "close, X-User-ID"), ("X-User-ID", VICTIM)],
    "connection-listed-underscore": [("Connection", "keep-alive, X_User_Id"), ("X_User_Id", VICTIM)],
}
# Normalised names that must never reach an upstream from a client.
FORBIDDEN_PREFIXES = (
    "x-user",
    "x-auth",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred",
    "x-forwarded-access",
    "x-roles",
    "x-scopes",
    "x-remote-user",
    "remote-user",
    "x-tenant",
    "x-consumer",
    "x-credential",
    "x-client-id",
    "x-userinfo",
    "x-amzn-oidc",
    "x-goog-authenticated",
    "x-ms-client-principal",
)


def leaked(received: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in received if k.lower().replace("_", "-").startswith(FORBIDDEN_PREFIXES)]


@pytest.mark.parametrize("spoofed", SPOOFED.values(), ids=SPOOFED.keys())
async def test_client_identity_headers_never_reach_the_upstream(
    client: httpx.AsyncClient, echo: Echo, spoofed: list[tuple[str, str]]
) -> None:
    token = access_token()
    response = await client.get(f"{USERS}/me", headers=[("Authorization", f"Bearer {token}"), *spoofed])
    assert response.status_code == 200, response.text
    received = echo.seen[-1].headers
    assert leaked(received) == []
    assert VICTIM not in json.dumps(received)
    assert ("authorization", f"Bearer {token}") in received


@pytest.mark.parametrize("spoofed", SPOOFED.values(), ids=SPOOFED.keys())
async def test_identity_headers_without_a_valid_token_are_refused(
    client: httpx.AsyncClient, echo: Echo, spoofed: list[tuple[str, str]]
) -> None:
    assert_invalid_token(await client.get(f"{USERS}/me", headers=spoofed))
    assert_invalid_token(await client.get(f"{USERS}/me", headers=[("Authorization", "Bearer forged"), *spoofed]))
    assert echo.seen == []


HOP_BY_HOP = [
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "websocket"),
    ("Proxy-Authorization", "Basic YWRtaW46YWRtaW4="),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authenticate", "Basic"),
]


async def test_hop_by_hop_headers_are_never_forwarded(client: httpx.AsyncClient, echo: Echo) -> None:
    headers = [
        ("Authorization", f"Bearer {access_token()}"),
        ("Connection", "keep-alive, Upgrade, X-Hop-Secret"),
        ("X-Hop-Secret", "for the next hop only"),
        *HOP_BY_HOP,
    ]
    response = await client.get(f"{USERS}/me", headers=headers)
    assert response.status_code == 200, response.text
    names = {name for name, _ in echo.seen[-1].headers}
    for name in ("connection", "x-hop-secret", *(name.lower() for name, _ in HOP_BY_HOP)):
        assert name not in names, f"{name} was forwarded"


async def test_the_gateway_sets_forwarding_headers_and_keeps_the_clients_own(
    client: httpx.AsyncClient, echo: Echo
) -> None:
    token = access_token()
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = [
        ("Authorization", f"Bearer {token}"),
        ("traceparent", traceparent),
        ("Accept-Language", "fr"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
        ("Host", "api.example"),
    ]
    response = await client.get(f"{USERS}/me", headers=headers)
    assert response.status_code == 200, response.text
    seen = echo.seen[-1]
    assert seen.header_values("authorization") == [f"Bearer {token}"]
    assert seen.header_values("traceparent") == [traceparent]
    assert seen.header_values("accept-language") == ["fr"]
    assert seen.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header_values("x-forwarded-proto") == ["http"]
    assert seen.header_values("x-forwarded-host") == ["api.example"]
    assert seen.header_values("x-real-ip") == []
    assert seen.header_values("forwarded") == []
    assert seen.header_values("x-request-id") == [response.headers["x-request-id"]]
    assert "6.6.6.6" not in json.dumps(seen.headers)


async def test_a_well_formed_request_id_goes_end_to_end(client: httpx.AsyncClient, echo: Echo) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response = await client.get(f"{USERS}/me", headers={**_bearer(), "X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert echo.seen[-1].header_values("x-request-id") == [request_id]


@pytest.mark.parametrize(
    "incoming", ["short", "has spaces in it", "x" * 200, "semi;colon;injected", "<script>1</script>"]
)
async def test_a_malformed_request_id_is_replaced_everywhere(
    client: httpx.AsyncClient, echo: Echo, incoming: str
) -> None:
    response = await client.get(f"{USERS}/me", headers={**_bearer(), "X-Request-ID": incoming})
    assert response.status_code == 200
    replaced = response.headers["x-request-id"]
    assert replaced != incoming
    assert echo.seen[-1].header_values("x-request-id") == [replaced]


async def test_error_responses_carry_the_request_id_too(client: httpx.AsyncClient) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response = await client.get(f"{USERS}/me", headers={"X-Request-ID": request_id})
    assert_invalid_token(response)
    assert response.headers["x-request-id"] == request_id
    assert response.json()["request_id"] == request_id


async def test_proxied_responses_carry_every_header_the_kernel_sets(client: httpx.AsyncClient) -> None:
    """The direct path sends its own response head: it takes the kernel's list, so a header added
    to shared/http.py reaches proxied traffic too (nosniff today)."""
    assert ("x-content-type-options", "nosniff") in STANDARD_RESPONSE_HEADERS
    for response in (
        await client.get(f"{USERS}/me", headers=_bearer()),
        await client.get(f"{USERS}/me"),
        await client.get("/api/v1/nope"),
    ):
        for name, value in STANDARD_RESPONSE_HEADERS:
            assert response.headers.get_list(name) == [value], (response.request.url, name)
        assert response.headers["content-type"]


async def test_one_access_log_line_per_request_without_the_token(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    token = access_token(sub=VICTIM)
    request_id = f"req-{uuid.uuid4().hex}"
    with _access_log_at(logging.INFO):
        ok = await client.get(f"{USERS}/me?token={token[:10]}", headers={**_bearer(token), "X-Request-ID": request_id})
        refused = await client.get(f"{USERS}/me", headers={"Authorization": f"Bearer {token}x"})
        await asyncio.sleep(0)  # lines are written once per event-loop turn
    output = capsys.readouterr().out
    assert ok.status_code == 200 and refused.status_code == 401
    lines = [json.loads(line) for line in output.splitlines() if '"logger":"gateway.access"' in line]
    assert len(lines) == 2, output
    first, second = lines
    assert first["method"] == "GET"
    assert first["route"] == f"{USERS}/*"
    assert first["status"] == 200
    assert isinstance(first["latency_ms"], int | float) and first["latency_ms"] >= 0
    assert first["user_id"] == VICTIM
    assert first["request_id"] == request_id
    assert first["client_ip"] == "127.0.0.1"
    assert second["status"] == 401
    assert second["user_id"] is None
    assert second["request_id"] == refused.headers["x-request-id"]
    assert first["service"] == "gateway" and first["level"] == "INFO" and first["msg"] == "request"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"]), first["ts"]
    assert token not in output
    assert token.rsplit(".", 1)[-1] not in output, "the token's signature was logged"


async def test_no_access_log_when_switched_off_or_below_the_log_level(
    make_settings: SettingsFactory, echo: Echo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with app_client(create_app(make_settings(access_log=False), services={USERS: echo})) as client:
        with _access_log_at(logging.INFO):
            assert (await client.get(f"{USERS}/me", headers=_bearer())).status_code == 200
            await asyncio.sleep(0)
    async with app_client(create_app(make_settings(), services={USERS: echo})) as client:
        with _access_log_at(logging.WARNING):
            assert (await client.get(f"{USERS}/me", headers=_bearer())).status_code == 200
            await asyncio.sleep(0)
    assert '"logger":"gateway.access"' not in capsys.readouterr().out


@contextlib.contextmanager
def _access_log_at(level: int) -> Iterator[None]:
    logger = logging.getLogger("gateway.access")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _bearer(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or access_token()}"}


async def test_the_gateway_request_id_and_nosniff_replace_the_upstreams_own(
    platform_client: httpx.AsyncClient,
) -> None:
    """The auth service sets X-Request-ID and nosniff itself; the client sees each once, the gateway's."""
    request_id = f"req-{uuid.uuid4().hex}"
    for response in (
        await platform_client.get("/api/v1/auth/.well-known/jwks.json", headers={"X-Request-ID": request_id}),
        await platform_client.get(f"{USERS}/me", headers={**_bearer(), "X-Request-ID": request_id}),
    ):
        assert response.headers.get_list("x-request-id") == [request_id], response.headers
        assert response.headers.get_list("x-content-type-options") == ["nosniff"]


# -- the rule upstreams may rely on (README, "Identity headers") ----------------------------------

# Each name sent by a hostile client in the test, and more of the same families: who, which
# role, tenant, organisation or account, acting as whom, and overrides of the target or the method.
IDENTITY_NAMES = [
    *("X-UserId", "X-Uid", "X-Role", "X-Admin", "X-Tenant", "X-Org-ID", "X-Account-ID", "X-Principal"),
    *("X-Email", "X-Impersonate-User", "X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override"),
    *("X-User-Name", "X-Username", "X-Sub", "X-Subject", "X-Groups", "X-Permissions", "X-Is-Admin"),
    *("X-Organization", "X-Org", "X-Account", "X-Tenant-Name", "X-Impersonated-By", "X-On-Behalf-Of"),
    *("X-HTTP-Method", "X-Method-Override", "X-Original-Method", "X-Original-URI", "X-Forwarded-Prefix"),
    *("X-Forwarded-Uri", "X-Forwarded-Port", "X-Forwarded-Server", "X-Authenticated-Groups", "X-Auth-Token"),
    *("X-JWT-Assertion", "X-Client-Cert", "X-SSL-Client-DN", "X-Webauth-User", "X-Pomerium-Claim-Email"),
    *("Cf-Access-Authenticated-User-Email", "X-Envoy-Original-Path", "X-Host", "X-Scope", "X-Identity"),
    *("X-Login", "X-Proxy-User", "X-Acting-User", "X-Customer-Account-Id", "X-Ms-Client-Principal-Id"),
]
SPELLINGS = {
    "as written": lambda name: name,
    "lower case": str.lower,
    "upper case with underscores": lambda name: name.upper().replace("-", "_"),
}
# Ordinary end-to-end headers: forwarded as they were sent (the rule must not catch these).
ORDINARY = [
    ("User-Agent", "pyairtable-client/1.0"),
    ("Accept", "application/json"),
    ("Accept-Language", "fr-CH"),
    ("Accept-Encoding", "gzip"),
    ("Cache-Control", "no-cache"),
    ("If-None-Match", '"v1"'),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("tracestate", "congo=t61rcWkgMzE"),
    ("baggage", "deployment=canary"),
    ("X-Correlation-ID", "corr-1"),
    ("X-Requested-With", "XMLHttpRequest"),
    ("Prefer", "return=minimal"),
    ("Priority", "u=1"),
]


def identity_request(spelling: str, token: str) -> list[tuple[str, str]]:
    spell = SPELLINGS[spelling]
    spoofed = [(spell(name), f"{VICTIM}:{name}") for name in IDENTITY_NAMES]
    return [("Authorization", f"Bearer {token}"), *spoofed, *ORDINARY]


def assert_only_ordinary_headers_arrived(received: list[tuple[str, str]], token: str) -> None:
    arrived = {(name.replace("_", "-"), value) for name, value in received}
    smuggled = [(name, value) for name, value in received if VICTIM in value]
    assert smuggled == [], f"{len(smuggled)} identity headers reached the upstream: {smuggled}"
    assert ("authorization", f"Bearer {token}") in arrived
    assert {(name.lower(), value) for name, value in ORDINARY} <= arrived


@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_identity_and_override_headers_never_reach_an_in_process_upstream(
    client: httpx.AsyncClient, echo: Echo, spelling: str
) -> None:
    token = access_token()
    response = await client.get(f"{USERS}/me", headers=identity_request(spelling, token))
    assert response.status_code == 200, response.text
    assert_only_ordinary_headers_arrived(echo.seen[-1].headers, token)


BILLING = "/api/v1/billing"


@pytest.fixture
async def extra_route(make_settings: SettingsFactory) -> AsyncIterator[tuple[httpx.AsyncClient, Echo]]:
    """The gateway with an ``EXTRA_ROUTES`` upstream: an echo served by uvicorn over HTTP."""
    billing = Echo(BILLING)
    async with (
        served_over_http(billing) as url,
        app_client(create_app(make_settings(extra_routes=f"{BILLING}={url}"))) as gateway,
    ):
        yield gateway, billing


@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_identity_and_override_headers_never_reach_an_extra_routes_upstream(
    extra_route: tuple[httpx.AsyncClient, Echo], spelling: str
) -> None:
    gateway, billing = extra_route
    token = access_token()
    response = await gateway.get(f"{BILLING}/invoices", headers=identity_request(spelling, token))
    assert response.status_code == 200, response.text
    assert_only_ordinary_headers_arrived(billing.seen[-1].headers, token)


@pytest.mark.parametrize(
    "listed", ["Authorization", "authorization", "close, Authorization", "Idempotency-Key, X-API-Key, Content-Length"]
)
async def test_headers_the_gateway_checks_cannot_be_removed_by_naming_them_in_connection(
    extra_route: tuple[httpx.AsyncClient, Echo], listed: str
) -> None:
    gateway, billing = extra_route
    token = access_token()
    headers = {
        "Authorization": f"Bearer {token}",
        "Connection": listed,
        "Idempotency-Key": f"key-{uuid.uuid4().hex}",
        "X-API-Key": "client-api-key",
        "X-Hop-Only": "gone",
    }
    response = await gateway.post(
        f"{BILLING}/invoices", headers={**headers, "Connection": listed + ", X-Hop-Only"}, json={"n": 1}
    )
    assert response.status_code == 200, response.text
    seen = billing.seen[-1]
    assert seen.header_values("authorization") == [f"Bearer {token}"]
    assert seen.header_values("idempotency-key") == [headers["Idempotency-Key"]]
    assert seen.header_values("x-api-key") == ["client-api-key"]
    assert seen.header_values("x-hop-only") == []  # what Connection names is still hop-by-hop
    assert json.loads(seen.body) == {"n": 1}


REPEATED = {
    "two tokens": [("Authorization", "Bearer {token}"), ("Authorization", "Bearer forged")],
    "the same token twice": [("Authorization", "Bearer {token}"), ("Authorization", "Bearer {token}")],
    "in two cases": [("Authorization", "Bearer {token}"), ("authorization", "Bearer forged")],
    "an empty second one": [("Authorization", "Bearer {token}"), ("Authorization", "")],
    "two idempotency keys": [("Authorization", "Bearer {token}"), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    "two hosts": [("Authorization", "Bearer {token}"), ("Host", "a.example"), ("Host", "b.example")],
}


@pytest.mark.parametrize("repeated", list(REPEATED), ids=list(REPEATED))
async def test_a_header_the_gateway_checks_sent_twice_is_a_400(gateway: Litestar, echo: Echo, repeated: str) -> None:
    token = access_token()
    headers = [(name.encode(), value.format(token=token).encode()) for name, value in REPEATED[repeated]]
    async with app_client(gateway):
        response = await raw_request(gateway, f"{USERS}/me".encode(), method="POST", headers=headers, body=b"{}")
    assert response.status_code == 400
    assert response.json()["code"] == "repeated-header"
    assert response.headers["content-type"] == PROBLEM
    assert echo.seen == []


async def test_a_header_name_longer_than_any_real_one_is_not_forwarded(client: httpx.AsyncClient, echo: Echo) -> None:
    long_name, usual_name = "X-" + "a" * 200, "X-" + "b" * 100
    response = await client.get(f"{USERS}/me", headers={**_bearer(), long_name: "1", usual_name: "2"})
    assert response.status_code == 200, response.text
    assert echo.seen[-1].header_values(long_name) == []
    assert echo.seen[-1].header_values(usual_name) == ["2"]
