"""Issue 11's run, as real processes: the API gateway in front of the Airtable gateway (PostgreSQL,
Redis) in front of the Airtable emulator; one account sends 120 uncached reads of one base from 6
client addresses at once, then another account reads the same base. The other read is served while
the heavy account's surplus gets 503 + Retry-After (run with ``-s`` to see the measured wait)."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.airtable_gateway.conftest import grant
from tests.airtable_gateway.emulator_fixture import CRM_BASE, Emulator
from tests.airtable_gateway.test_fair_share import HEAVY_READS, heavy_burst_then_another_users_read, served_and_refused
from tests.conftest import DatabaseFactory
from tests.e2e.processes import Processes, Service, Stack, access_token, start_service

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 8)]
HEAVY_ORG, OTHER_ORG = uuid.uuid4(), uuid.uuid4()


@pytest.fixture
def platform(
    tmp_path: Path, databases: DatabaseFactory, redis_url: str, redis_namespace: str, emulator: Emulator
) -> Iterator[Service]:
    """The API gateway routing /api/v1/airtable to the Airtable gateway; its per-address limits
    raised, since they are not what this run is about."""
    processes = Processes(tmp_path)
    stack = Stack(processes, tmp_path, databases, redis_url, redis_namespace)
    try:
        database_url = databases.create("pyairtable_airtable")
        upstream = {"AIRTABLE_TOKEN": emulator.token, "AIRTABLE_API_URL": emulator.url}
        airtable = start_service(
            processes,
            "airtable",
            "airtable_gateway",
            "AIRTABLE_GATEWAY",
            tmp_path,
            database_url,
            **stack.redis,
            **upstream,
            AIRTABLE_QUEUE_TIMEOUT="10",
        ).wait_healthy()
        for organization in (HEAVY_ORG, OTHER_ORG):
            grant(database_url, organization, CRM_BASE, "read")
        limits = {"RATE_LIMIT_PER_MINUTE": "6000", "RATE_LIMIT_BURST": "200"}
        yield stack.gateway("gateway", AIRTABLE_GATEWAY_URL=airtable.url, **limits).wait_healthy()
    finally:
        processes.stop_all()


async def test_one_account_on_six_addresses_cannot_starve_a_base(platform: Service, emulator: Emulator) -> None:
    heavy = {"Authorization": f"Bearer {access_token(org=HEAVY_ORG)}"}
    clients = [
        httpx.AsyncClient(
            base_url=platform.url,
            transport=httpx.AsyncHTTPTransport(local_address=address),
            timeout=30,
            limits=httpx.Limits(max_connections=HEAVY_READS),
        )
        for address in ADDRESSES
    ]
    try:
        answers, other, waited = await heavy_burst_then_another_users_read(
            clients, heavy, {"Authorization": f"Bearer {access_token(org=OTHER_ORG)}"}
        )
    finally:
        for client in clients:
            await client.aclose()

    assert other.status_code == 200, other.text
    served, _ = served_and_refused(answers)
    assert emulator.stats()["throttled"].get(CRM_BASE, 0) == 0
    print(f"\nthrough the gateway: the other user's read waited {waited:.2f} s behind {len(served)} of {HEAVY_READS}")
