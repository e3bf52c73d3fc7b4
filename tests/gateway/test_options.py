"""``OPTIONS`` through the gateway answers an ``Allow`` that lists every method the route serves, on
every path of every service's OpenAPI document (Litestar 2's automatic answer named only the first
handler's: GET on ``/users/me`` without PUT and PATCH)."""

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedded.app import create_app
from tests.auth_service.conftest import JWT_SECRET
from tests.conftest import app_client
from tests.gateway.conftest import SettingsFactory, access_token, bearer

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head"}
# The routes the issue found short of a method (PUT, PATCH, POST), with every method they serve.
SHORT_BEFORE = {
    "/api/v1/users/me": {"GET", "PUT", "PATCH"},
    "/api/v1/users/2f1c6a3e-0b7d-4c1e-9a53-6d1f0c7b8e21": {"GET", "PUT", "PATCH", "DELETE"},
    "/api/v1/airtable/bases/appBase/tables/People/records": {"GET", "POST", "PUT", "PATCH", "DELETE"},
    "/api/v1/airtable/token": {"GET", "PUT", "DELETE"},
    "/api/v1/analytics/metrics": {"GET", "POST"},
}


@pytest.fixture
async def platform(make_settings: SettingsFactory, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The embedded platform: every service in-process on SQLite, no Redis."""
    environ = {"DATA_DIR": str(tmp_path), "JWT_SECRET": JWT_SECRET, "REDIS_URL": ""}
    settings = make_settings(
        redis_url="",
        request_timeout=10.0,  # the services are real apps: a loaded machine may keep one past 0.5 s
        rate_limit_burst=1000,
        rate_limit_per_minute=10_000,
        auth_rate_limit_burst=1000,  # one OPTIONS to each of the seven auth-policy paths
        auth_rate_limit_per_minute=10_000,
    )
    async with app_client(create_app(settings, environ=environ)) as client:
        client.headers.update(bearer(access_token(roles=["admin"])))
        yield client


def concrete(path: str, operations: dict[str, Any]) -> str:
    """The documented path with each parameter given a value of its type."""
    parameters = {
        parameter["name"]: parameter.get("schema", {})
        for operation in operations.values()
        if isinstance(operation, dict)
        for parameter in operation.get("parameters", [])
        if parameter.get("in") == "path"
    }

    def value(match: re.Match[str]) -> str:
        schema = parameters.get(match.group(1), {})
        if schema.get("format") == "uuid":
            return str(uuid.uuid4())
        return "1" if schema.get("type") == "integer" else "x1"

    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", value, path)


async def test_allow_lists_every_documented_method_of_every_path(platform: httpx.AsyncClient) -> None:
    document = (await platform.get("/api/v1/openapi.json")).json()
    checked = 0
    for path, operations in document["paths"].items():
        documented = {method.upper() for method in operations if method in HTTP_METHODS}
        response = await platform.options(concrete(path, operations))
        assert response.status_code == 204, (path, response.text)
        allowed = {method.strip() for method in response.headers["allow"].split(",")}
        assert documented | {"OPTIONS"} <= allowed, (path, allowed)
        checked += 1
    assert checked >= 31  # every service's paths were there, the admin-guarded ones too


@pytest.mark.parametrize("path", list(SHORT_BEFORE), ids=list(SHORT_BEFORE))
async def test_allow_names_put_and_patch_where_they_are_served(platform: httpx.AsyncClient, path: str) -> None:
    response = await platform.options(path)
    assert response.status_code == 204, response.text
    assert {method.strip() for method in response.headers["allow"].split(",")} == SHORT_BEFORE[path] | {"OPTIONS"}
