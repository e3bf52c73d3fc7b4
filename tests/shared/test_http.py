"""HTTP defaults every service gets from the kernel, seen through the auth service."""

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared.http import MAX_JSON_DEPTH, client_ip
from shared.security import Identity, require_admin
from shared.service import create_service_app
from tests.auth_service.conftest import JWT_SECRET, Clock, bearer, register
from tests.conftest import app_client, signed_access_token
from tests.metrics import total

JSON = {"Content-Type": "application/json"}
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    return body


def signed_token(**claims: Any) -> str:
    return signed_access_token(JWT_SECRET, **claims)


# -- request IDs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("incoming", ["abc-123_XYZ.req:1", "0" * 128, "3daa26d0-defc-440f-9803-0ef742d18800"])
async def test_a_well_formed_request_id_is_echoed(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == incoming


@pytest.mark.parametrize(
    "incoming",
    ["has spaces in it", "x" * 129, "short", "<script>alert(1)</script>", "id\u00e9-with-latin1", "a,b,c,d,e,f,g"],
    ids=["spaces", "too-long", "too-short", "markup", "non-ascii", "commas"],
)
async def test_a_malformed_request_id_is_replaced(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming.encode()})
    assert response.status_code == 200
    assert response.headers["x-request-id"] != incoming
    assert GENERATED_ID.match(response.headers["x-request-id"])


async def test_each_request_without_an_id_gets_its_own(client: httpx.AsyncClient) -> None:
    first = (await client.get("/health")).headers["x-request-id"]
    second = (await client.get("/health")).headers["x-request-id"]
    assert GENERATED_ID.match(first) and GENERATED_ID.match(second)
    assert first != second


async def test_error_bodies_carry_the_request_id_of_the_header(client: httpx.AsyncClient) -> None:
    incoming = "trace-0123456789"
    response = await client.post("/api/v1/auth/register", json={"email": 5}, headers={"X-Request-ID": incoming})
    body = assert_problem(response, 422)
    assert body["request_id"] == incoming
    assert body["errors"][0]["key"] == "email"
    generated = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong-password"}
    )
    assert assert_problem(generated, 401)["request_id"] == generated.headers["x-request-id"]


async def test_unknown_path_is_a_problem_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/auth/nowhere", headers={"X-Request-ID": "lost-request-0001"})
    body = assert_problem(response, 404)
    assert body["request_id"] == "lost-request-0001"
    assert body["instance"] == "/api/v1/auth/nowhere"


async def test_wrong_method_is_a_problem_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]
    put = await client.put("/api/v1/auth/login", json={})
    assert_problem(put, 405)


async def test_every_response_says_nosniff(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    responses = [
        await client.get("/health"),
        await client.get("/ready"),
        await client.get("/metrics"),
        await client.get("/api/v1/auth/me", headers=bearer(tokens)),
        await client.get("/api/v1/auth/me"),
        await client.get("/does-not-exist"),
        await client.post("/health"),
        await client.post("/api/v1/auth/register", content=b"{not json", headers={"Content-Type": "application/json"}),
    ]
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", (response.request.url, response.status_code)
        assert response.headers.get("x-request-id")
        assert response.status_code < 500, response.text


async def test_a_malformed_json_body_is_a_problem_not_a_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400)


# -- health, readiness, metrics, schema --------------------------------------------------------------


async def test_health_names_the_service(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["service"] == "auth"
    assert body["version"]


async def test_ready_checks_database_and_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["service"] == "auth"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"


@pytest.fixture
async def db_down_client(auth_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    settings = msgspec.structs.replace(
        auth_settings, database_url=f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/pyairtable_auth"
    )
    async with app_client(create_app(settings, clock=clock)) as client:
        yield client


@pytest.fixture
async def redis_down_client(auth_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    settings = msgspec.structs.replace(auth_settings, redis_url=f"redis://127.0.0.1:{CLOSED_PORT}/0")
    async with app_client(create_app(settings, clock=clock)) as client:
        yield client


async def test_ready_is_503_when_the_database_is_down(db_down_client: httpx.AsyncClient) -> None:
    assert (await db_down_client.get("/health")).status_code == 200  # the app started and is alive
    response = await db_down_client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["status"] == "fail"
    assert body["checks"]["redis"]["status"] == "ok"
    assert "postgres@" not in response.text  # no connection string leaks


async def test_ready_stays_200_and_says_degraded_when_redis_is_down(redis_down_client: httpx.AsyncClient) -> None:
    """Redis is an accelerator (tests/shared/test_stores.py has the rest)."""
    assert (await redis_down_client.get("/health")).status_code == 200
    response = await redis_down_client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["checks"]["redis"]["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "ok"


async def test_protected_route_with_the_database_down_is_a_503(db_down_client: httpx.AsyncClient) -> None:
    response = await db_down_client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {signed_token()}"})
    assert_problem(response, 503)
    assert response.headers["retry-after"].isdigit()
    assert "127.0.0.1" not in response.text  # no connection details leak


async def test_login_with_the_database_down_is_a_503(db_down_client: httpx.AsyncClient) -> None:
    response = await db_down_client.post(
        "/api/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse battery staple"}
    )
    assert_problem(response, 503)
    assert "retry-after" in response.headers


async def test_metrics_label_paths_by_route_template(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    sessions = (await client.get("/api/v1/auth/sessions", headers=bearer(tokens))).json()["sessions"]
    session_id = sessions[0]["id"]
    unknown = uuid.uuid4()
    template = {"app_name": "auth", "method": "DELETE", "path": "/api/v1/auth/sessions/{session_id}"}
    before = total((await client.get("/metrics")).text, "pyairtable_requests_total", **template)
    await client.delete(f"/api/v1/auth/sessions/{unknown}", headers=bearer(tokens))
    revoked = await client.delete(f"/api/v1/auth/sessions/{session_id}", headers=bearer(tokens))
    assert revoked.status_code == 204, revoked.text

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert total(text, "pyairtable_requests_total", **template) == before + 2, "both counted under the template"
    assert session_id not in text
    assert str(unknown) not in text


async def test_openapi_schema_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/auth/me" in schema["paths"]
    assert "/health" in schema["paths"]
    assert "BearerAuth" in schema["components"]["securitySchemes"]


# -- client_ip -------------------------------------------------------------------------------------


def scope(peer: str | None, *forwarded_for: str) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 50000) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded_for],
    }


PROXIES = ["10.0.0.0/8", "fd00::/8"]


@pytest.mark.parametrize(
    ("request_scope", "trusted", "expected"),
    [
        (scope("203.0.113.7", "198.51.100.1"), [], "203.0.113.7"),
        (scope("203.0.113.7", "198.51.100.1"), PROXIES, "203.0.113.7"),
        (scope("10.0.0.2"), PROXIES, "10.0.0.2"),
        (scope("10.0.0.2", "198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope("10.0.0.2", "6.6.6.6, 198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.9"), PROXIES, "198.51.100.1"),
        (scope("10.0.0.2", " 198.51.100.1 ,  10.0.0.9 "), PROXIES, "198.51.100.1"),
        (scope("10.0.0.2", "10.0.0.7, 10.0.0.9"), PROXIES, "10.0.0.7"),
        (scope("10.0.0.2", "6.6.6.6, not-an-ip"), PROXIES, "10.0.0.2"),
        (scope("10.0.0.2", "6.6.6.6, 198.51.100.1:443"), PROXIES, "10.0.0.2"),
        (scope("fd00::1", "2001:db8::42"), PROXIES, "2001:db8::42"),
        (scope("10.0.0.2", ""), PROXIES, "10.0.0.2"),
        # A proxy that adds its own header line instead of appending to the client's one.
        (scope("10.0.0.2", "6.6.6.6", "198.51.100.1"), PROXIES, "198.51.100.1"),
    ],
    ids=[
        "no-trusted-proxies",
        "untrusted-peer",
        "trusted-peer-no-header",
        "one-hop",
        "client-spoofed-hop",
        "trusted-hops-skipped",
        "whitespace",
        "all-hops-trusted",
        "garbage-hop",
        "hop-with-port",
        "ipv6",
        "empty-header",
        "two-header-lines",
    ],
)
def test_client_ip(request_scope: dict[str, Any], trusted: list[str], expected: str) -> None:
    assert client_ip(request_scope, trusted) == expected  # type: ignore[arg-type]


# -- a bare kernel app: unexpected errors, role guards, body limits ----------------------------------


@get("/boom", opt={"exclude_from_auth": True}, sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("connection string postgresql://admin:hunter2@db/secret")


@get("/admin-only", guards=[require_admin], sync_to_thread=False)
def admin_only(request: Request[Identity, str, Any]) -> dict[str, str]:
    return {"user_id": str(request.user.user_id)}


@post("/echo", opt={"exclude_from_auth": True}, sync_to_thread=False)
def echo(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    return data


class Order(msgspec.Struct, forbid_unknown_fields=True):
    item: str
    quantity: int
    gift: bool = False


@post("/orders", opt={"exclude_from_auth": True}, sync_to_thread=False)
def place_order(data: JSONBody[Order], copies: FromQuery[int] = 1) -> dict[str, Any]:
    return {"item": data.item, "quantity": data.quantity, "gift": data.gift, "copies": copies}


@get("/lookup/{name:str}", opt={"exclude_from_auth": True}, sync_to_thread=False)
def lookup(name: FromPath[str]) -> dict[str, str]:
    return {"name": name}


@post("/store/{case:str}", opt={"exclude_from_auth": True})
async def store(case: FromPath[str], data: JSONBody[dict[str, str]], db_session: NamedDependency[AsyncSession]) -> None:
    """Values the database itself refuses: one it cannot take as an integer, a duplicate key."""
    if case == "integer":
        await db_session.execute(text("SELECT CAST(:value AS integer)"), {"value": data["value"]})
    else:
        await db_session.execute(text("CREATE TEMPORARY TABLE unique_values (value text PRIMARY KEY)"))
        for _ in range(2):
            await db_session.execute(text("INSERT INTO unique_values VALUES (:value)"), {"value": data["value"]})


@pytest.fixture
async def kernel_client(auth_settings: AuthSettings) -> AsyncIterator[httpx.AsyncClient]:
    settings = msgspec.structs.replace(auth_settings, service_name="kernel-test", max_body_size=4096)
    handlers = [boom, admin_only, echo, place_order, lookup, store]
    app = create_service_app(settings, title="kernel test", route_handlers=handlers)
    async with app_client(app) as client:
        yield client


async def test_an_unexpected_error_is_a_500_problem_without_internals(kernel_client: httpx.AsyncClient) -> None:
    response = await kernel_client.get("/boom", headers={"X-Request-ID": "boom-request-0001"})
    body = assert_problem(response, 500)
    assert body["request_id"] == "boom-request-0001"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text


async def test_role_guard_refuses_without_the_role(kernel_client: httpx.AsyncClient) -> None:
    user = await kernel_client.get("/admin-only", headers={"Authorization": f"Bearer {signed_token()}"})
    assert_problem(user, 403)
    admin_id = str(uuid.uuid4())
    admin = await kernel_client.get(
        "/admin-only", headers={"Authorization": f"Bearer {signed_token(sub=admin_id, roles=['user', 'admin'])}"}
    )
    assert admin.status_code == 200, admin.text
    assert admin.json() == {"user_id": admin_id}


async def test_a_body_over_the_limit_is_a_413_problem(kernel_client: httpx.AsyncClient) -> None:
    small = await kernel_client.post("/echo", json={"note": "x" * 100})
    assert small.status_code == 201, small.text
    large = await kernel_client.post("/echo", json={"note": "x" * 10_000})
    assert_problem(large, 413)


# -- strict JSON bodies, converted query parameters -------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"item": "pen", "quantity": "5"}, "quantity"),
        ({"item": 5, "quantity": 5}, "item"),
        ({"item": "pen", "quantity": 5, "gift": "true"}, "gift"),
    ],
    ids=["string-for-number", "number-for-string", "string-for-boolean"],
)
async def test_a_body_value_of_the_wrong_json_type_is_a_422_naming_the_field(
    kernel_client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await kernel_client.post("/orders", json=body), 422)
    assert problem["code"] == "validation-error"
    assert problem["errors"] == [{"message": problem["errors"][0]["message"], "key": field, "source": "body"}]
    assert problem["detail"].endswith(f"({field})")


async def test_a_well_typed_body_and_query_parameters_in_text_are_accepted(kernel_client: httpx.AsyncClient) -> None:
    response = await kernel_client.post("/orders?copies=5", json={"item": "pen", "quantity": 5, "gift": True})
    assert response.status_code == 201, response.text
    assert response.json() == {"item": "pen", "quantity": 5, "gift": True, "copies": 5}


async def test_a_body_of_the_wrong_shape_or_not_json_is_still_a_4xx(kernel_client: httpx.AsyncClient) -> None:
    missing = assert_problem(await kernel_client.post("/orders", json={"item": "pen"}), 422)
    assert "quantity" in missing["detail"]
    assert assert_problem(await kernel_client.post("/orders", json=["pen", 5]), 422)["code"] == "validation-error"
    malformed = await kernel_client.post("/orders", content=b"{pen", headers={"Content-Type": "application/json"})
    assert assert_problem(malformed, 400)["code"] == "bad-request"


# -- the input door: nesting, NUL, UTF-8, values the database refuses -------------------------------


def nested(depth: int) -> Any:
    """An object ``depth`` levels deep (``{"a": {"a": ... 1}}``)."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_a_body_nested_past_the_limit_is_a_422_and_brackets_in_text_do_not_count(
    kernel_client: httpx.AsyncClient,
) -> None:
    at_limit = await kernel_client.post("/echo", json=nested(MAX_JSON_DEPTH))
    assert at_limit.status_code == 201, at_limit.text
    text_of_brackets = await kernel_client.post("/echo", json={"note": "[{" * 1000})
    assert text_of_brackets.status_code == 201, text_of_brackets.text

    too_deep = assert_problem(await kernel_client.post("/echo", json=nested(MAX_JSON_DEPTH + 1)), 422)
    thousand = await kernel_client.post("/orders", content=b"[" * 1000 + b"]" * 1000, headers=JSON)
    assert f"{MAX_JSON_DEPTH} levels" in too_deep["detail"]
    assert assert_problem(thousand, 422)["errors"][0]["source"] == "body"


async def test_a_nul_character_anywhere_in_a_body_is_a_422_naming_the_field(kernel_client: httpx.AsyncClient) -> None:
    in_list = assert_problem(await kernel_client.post("/echo", json={"note": {"tags": ["ok", "a\u0000b"]}}), 422)
    in_key = assert_problem(await kernel_client.post("/echo", json={"k\u0000": 1}), 422)
    typed = assert_problem(await kernel_client.post("/orders", json={"item": "pen\u0000", "quantity": 1}), 422)
    a_backslash_then_u0000 = await kernel_client.post("/echo", json={"note": "\\u0000"})

    assert in_list["errors"] == [
        {"message": "contains the NUL character, which cannot be stored", "key": "note.tags[1]", "source": "body"}
    ]
    assert in_key["errors"][0]["key"] == "k\\u0000"
    assert typed["errors"][0]["key"] == "item"
    assert a_backslash_then_u0000.status_code == 201
    assert a_backslash_then_u0000.json() == {"note": "\\u0000"}


async def test_a_nul_character_in_a_query_or_path_parameter_is_a_422_naming_it(
    kernel_client: httpx.AsyncClient,
) -> None:
    taken = assert_problem(await kernel_client.post("/orders?copies=1%00", json={"item": "pen", "quantity": 1}), 422)
    not_taken = assert_problem(await kernel_client.post("/echo?tag=a%00b", json={}), 422)
    path = assert_problem(await kernel_client.get("/lookup/a%00b"), 422)

    assert (taken["errors"][0]["key"], taken["errors"][0]["source"]) == ("copies", "query")
    assert not_taken["errors"][0]["key"] == "tag"
    assert (path["errors"][0]["key"], path["errors"][0]["source"]) == ("name", "path")
    assert (await kernel_client.get("/lookup/caf%C3%A9")).json() == {"name": "café"}


async def test_text_that_is_not_utf8_is_refused(kernel_client: httpx.AsyncClient) -> None:
    body = assert_problem(await kernel_client.post("/echo", content=b'{"note": "\xff\xfe"}', headers=JSON), 400)
    ignored_field = await kernel_client.post(
        "/orders", content=b'{"item": "pen", "quantity": 1, "x": "\xc3\x28"}', headers=JSON
    )
    query = assert_problem(await kernel_client.post("/echo?tag=%ff", json={}), 422)

    assert "UTF-8" in body["detail"]
    assert_problem(ignored_field, 400)
    assert query["errors"][0]["key"] == "tag"


async def test_a_value_the_database_refuses_is_a_4xx_and_its_text_is_not_logged(
    kernel_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "not-a-number-4f1d"
    refused = assert_problem(await kernel_client.post("/store/integer", json={"value": secret}), 422)
    duplicate = assert_problem(await kernel_client.post("/store/unique", json={"value": secret}), 409)

    assert refused["code"] == "unstorable-value"
    assert duplicate["code"] == "conflict"
    assert secret not in refused["detail"] + duplicate["detail"]
    logged = [record for record in caplog.records if record.name == "shared.errors"]
    assert [record.sqlstate for record in logged] == ["22P02", "23505"]  # type: ignore[attr-defined]
    assert all(secret not in str(record.__dict__) for record in caplog.records)
