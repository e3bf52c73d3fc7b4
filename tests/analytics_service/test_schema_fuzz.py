"""RELIABILITY A2: schemathesis fuzzes every analytics operation in-process (see
tests/schema_fuzz.py), signed in as an administrator."""

from collections.abc import Iterator

import pytest
from litestar import Litestar

from tests.analytics_service.conftest import User
from tests.schema_fuzz import client, fuzz, stop_apps


@pytest.fixture
def app(analytics_app: Litestar) -> Iterator[Litestar]:
    yield analytics_app
    stop_apps()


def test_every_operation_keeps_its_contract(app: Litestar) -> None:
    failures = fuzz(app, client(app, User("admin", "user").headers))
    assert not failures, "\n\n".join(failures)
