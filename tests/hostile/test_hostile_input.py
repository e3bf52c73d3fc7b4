"""The hostile-input suite (issue 11): every operation of every service's OpenAPI document, sent
to the service in-process and through the gateway (platform and legacy routes), gets the NUL
character in each string field and parameter, a body nested 1,000 deep, a 10 MB string, numbers
and date-times at and past their limits, bytes that are not UTF-8 and values of the wrong type.

Every answer is a 4xx problem+json where the request must be refused, and never a 5xx.
(``-s`` prints how many requests of each kind were sent.)
"""

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from shared import migrations
from shared.http import UNSTORABLE_TEXT
from shared.settings import load_settings
from tests.conftest import app_client
from tests.hostile.conftest import API_KEY, SERVICES, Outcome, Platform, send_all
from tests.hostile.requests import DEPTH, NUL, Generator, Hostile

MIRROR = "/api/v1/airtable/v0/appHostile/tblHostile"


def raw_airtable_bodies() -> list[Hostile]:
    """The Airtable mirror passes bodies on unparsed (its document declares none): the same door."""
    deep = b'{"fields":' + b'{"a":' * DEPTH + b"1" + b"}" * DEPTH + b"}"
    nul = msgspec.json.encode({"fields": {"Name": NUL}})
    return [
        Hostile(kind="deep", operation="airtable_v0_post", method="POST", path=MIRROR, body=deep, where="raw body"),
        Hostile(kind="nul", operation="airtable_v0_patch", method="PATCH", path=MIRROR, body=nul, where="raw body"),
    ]


async def document_of(app: Any, path: str) -> dict[str, Any]:
    """The app's OpenAPI document (its lifespan already runs: a plain client)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def report(target: str, outcome: Outcome) -> None:
    """What was sent, by kind, and what came back (``-s`` shows it; docs/RELIABILITY.md records it)."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(outcome.sent.items()))
    total, errors = sum(outcome.sent.values()), len(outcome.server_errors)
    answers = ", ".join(f"{kind} {status}: {count}" for (kind, status), count in sorted(outcome.statuses.items()))
    print(f"\n{target}: {total} hostile requests ({kinds}); {errors} got a 5xx\n  answers: {answers}")


@pytest.mark.parametrize("prefix", [entry.prefix for entry in SERVICES])
async def test_every_operation_of_a_service_refuses_hostile_input(platform: Platform, prefix: str) -> None:
    service = platform.services[prefix]
    requests = list(Generator(await document_of(service, "/schema/openapi.json")).requests())
    if prefix == "/api/v1/airtable":
        requests += raw_airtable_bodies()

    outcome = await send_all(service, requests)

    report(prefix, outcome)
    assert len({hostile.operation for hostile in requests}) >= 5
    assert not outcome.failures(), outcome.failures()


async def test_every_platform_operation_through_the_gateway_refuses_hostile_input(platform: Platform) -> None:
    document = await document_of(platform.gateway, "/api/v1/openapi.json")
    assert not document["x-unavailable"]
    requests = list(Generator(document).requests()) + raw_airtable_bodies()

    outcome = await send_all(platform.gateway, requests)

    report("gateway /api/v1", outcome)
    assert not outcome.failures(), outcome.failures()


async def test_every_legacy_route_refuses_hostile_input(platform: Platform) -> None:
    document = await document_of(platform.gateway, "/schema/openapi.json")
    legacy = {
        path: item
        for path, item in document["paths"].items()
        if any("legacy" in operation.get("tags", []) for operation in item.values() if isinstance(operation, dict))
    }
    requests = list(Generator({**document, "paths": legacy}).requests())
    for hostile in requests:
        # The legacy contract converts leniently ("1.5" for a number, 12345 for a user id), as the
        # older service did: a value of another type may be taken there, never a 5xx.
        hostile.must_refuse = hostile.must_refuse and hostile.kind != "wrong-type"

    outcome = await send_all(platform.gateway, requests, headers={"x-api-key": API_KEY})

    report("gateway legacy", outcome)
    assert len(legacy) >= 10
    assert not outcome.failures(), outcome.failures()


async def test_the_gateway_serves_its_own_openapi_document(platform: Platform) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=platform.gateway), base_url="http://x") as client:
        page = await client.get("/schema")
        document = await client.get("/schema/openapi.json")

    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert document.status_code == 200, document.text
    operations = [
        (operation["operationId"], path)
        for path, item in document.json()["paths"].items()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    ]
    ids = [operation_id for operation_id, _ in operations]
    assert len(ids) == len(set(ids))
    assert ("legacy_login", "/auth/login") in operations and ("legacy_login_unprefixed", "/login") in operations


@pytest.fixture
def sqlite_auth_settings(environ: dict[str, str], tmp_path: Path) -> AuthSettings:
    """The auth service's settings on a migrated SQLite file instead of PostgreSQL."""
    settings = load_settings(AuthSettings, {**environ, "AUTH_DATABASE_URL": "", "DATA_DIR": str(tmp_path / "lite")})
    migrations.upgrade(settings, "auth_service")
    return settings


async def nul_answers(client: httpx.AsyncClient) -> list[tuple[int, Any]]:
    body = {"email": NUL + "@example.com", "password": "a long enough passphrase"}
    answers = []
    for path in ("/api/v1/auth/login", "/api/v1/auth/register"):
        response = await client.post(path, json=body)
        answers.append((response.status_code, response.json()["errors"]))
    return answers


async def test_the_nul_character_gets_the_same_answer_on_sqlite_as_on_postgresql(
    platform: Platform, sqlite_auth_settings: AuthSettings
) -> None:
    transport = httpx.ASGITransport(app=platform.services["/api/v1/auth"])
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        postgresql = await nul_answers(client)
    async with app_client(create_auth_app(sqlite_auth_settings)) as client:
        sqlite = await nul_answers(client)

    assert sqlite == postgresql
    assert sqlite == [(422, [{"message": UNSTORABLE_TEXT, "key": "email", "source": "body"}])] * 2
