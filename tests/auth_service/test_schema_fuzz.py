"""RELIABILITY A2: schemathesis fuzzes every auth operation in-process (see tests/schema_fuzz.py),
signed in as a registered user."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from tests.auth_service.conftest import PASSWORD
from tests.schema_fuzz import client, fuzz, stop_apps


@pytest.fixture
def app(auth_app: Litestar) -> Iterator[Litestar]:
    yield auth_app
    stop_apps()


def test_every_operation_keeps_its_contract(app: Litestar) -> None:
    session = client(app)
    registered = session.post("/api/v1/auth/register", json={"email": "fuzz@example.com", "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    session.headers["Authorization"] = f"Bearer {registered.json()['access_token']}"

    failures = fuzz(app, session)
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
