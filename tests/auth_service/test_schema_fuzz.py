"""RELIABILITY A2: schemathesis fuzzes every auth operation in-process (see tests/schema_fuzz.py),
signed in as a registered user."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from auth_service.config import AuthSettings
from tests.auth_service.conftest import PASSWORD
from tests.auth_service.test_admin import run_create_admin
from tests.schema_fuzz import client, fuzz, stop_apps


@pytest.fixture
def app(auth_app: Litestar) -> Iterator[Litestar]:
    yield auth_app
    stop_apps()


def test_every_operation_keeps_its_contract(app: Litestar, auth_settings: AuthSettings) -> None:
    assert run_create_admin(auth_settings, "fuzz@example.com", PASSWORD).returncode == 0
    session = client(app)
    signed_in = session.post("/api/v1/auth/login", json={"email": "fuzz@example.com", "password": PASSWORD})
    assert signed_in.status_code == 200, signed_in.text
    session.headers["Authorization"] = f"Bearer {signed_in.json()['access_token']}"

    # Signing out ends the token every other operation uses.
    failures = fuzz(app, session, last=("POST /api/v1/auth/logout",))
    assert not failures, "\n\n".join(failures)


def documented(document: dict[str, Any], method: str, path: str, status: int) -> str:
    """The media type the OpenAPI document declares for ``status`` of the operation."""
    content: dict[str, Any] = document["paths"][path][method]["responses"][str(status)]["content"]
    return next(iter(content))


async def test_login_documents_the_problems_it_answers(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()

    wrong = await client.post("/api/v1/auth/login", json={"email": "000", "password": PASSWORD})
    empty = await client.post("/api/v1/auth/login", json={})

    assert (wrong.status_code, empty.status_code) == (401, 422)
    for status in (401, 422, 429):
        assert documented(document, "post", "/api/v1/auth/login", status) == "application/problem+json"


async def test_signed_in_operations_document_401(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()

    anonymous = await client.put("/api/v1/auth/email", json={"current_password": PASSWORD, "new_email": "b@x.io"})

    assert anonymous.status_code == 401
    assert documented(document, "put", "/api/v1/auth/email", 401) == "application/problem+json"
