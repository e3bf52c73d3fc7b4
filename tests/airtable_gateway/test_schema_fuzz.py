"""RELIABILITY A2: schemathesis fuzzes every Airtable-gateway operation in-process (see
tests/schema_fuzz.py) in front of the Airtable emulator, signed in as a user.

The emulator and the gateway's outbound limits are raised far above Airtable's 5 requests/s per
base: the fuzz checks the contract, and at that pace its ~1,000 requests would take minutes
(the limits have their own tests, test_ratelimit.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar

from airtable_gateway.config import AirtableSettings
from tests.airtable_gateway.conftest import SettingsFactory, bearer
from tests.airtable_gateway.emulator_fixture import Emulator, run_emulator
from tests.schema_fuzz import client, fuzz, stop_apps

FAST = 10_000


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    log_dir: Path = tmp_path_factory.mktemp("airtable-emulator-fuzz")
    with run_emulator(
        log_dir, requests_per_second=FAST, requests_per_second_per_token=FAST, penalty_seconds=0
    ) as running:
        yield running


@pytest.fixture
def settings(make_settings: SettingsFactory) -> AirtableSettings:
    return make_settings(airtable_rate_limit=FAST, airtable_token_rate_limit=FAST, airtable_queue_timeout=5.0)


@pytest.fixture
def app(airtable_app: Litestar) -> Iterator[Litestar]:
    yield airtable_app
    stop_apps()


def test_every_operation_keeps_its_contract(app: Litestar) -> None:
    failures = fuzz(app, client(app, bearer()))
    assert not failures, "\n\n".join(failures)
