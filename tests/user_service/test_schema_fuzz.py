"""RELIABILITY A2: schemathesis fuzzes every user-service operation in-process (see
tests/schema_fuzz.py), signed in as an administrator with a profile."""

from collections.abc import Iterator

import httpx
import pytest
from litestar import Litestar

from tests.schema_fuzz import client, fuzz, stop_apps
from tests.user_service.conftest import USERS, Caller


@pytest.fixture
def app(users_app: Litestar) -> Iterator[Litestar]:
    yield users_app
    stop_apps()


def test_every_operation_keeps_its_contract(app: Litestar) -> None:
    session = client(app, Caller(roles=["admin", "user"]).headers)
    assert session.get(f"{USERS}/me").status_code == 200  # the caller's profile exists

    failures = fuzz(app, session)
    assert not failures, "\n\n".join(failures)


async def test_an_invalid_query_parameter_is_a_documented_422(client: httpx.AsyncClient) -> None:
    admin = Caller(roles=["admin", "user"])
    document = (await client.get("/schema/openapi.json")).json()

    response = await client.get(USERS, params={"role": "nobody"}, headers=admin.headers)

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "application/problem+json" in document["paths"][USERS]["get"]["responses"]["422"]["content"]
