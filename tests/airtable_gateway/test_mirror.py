"""The Airtable-compatible mirror: an unchanged Airtable client (pyairtable) pointed at the
service, with a platform access token as its API key. The service runs as a real process."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from pyairtable import Api

from tests.airtable_gateway.conftest import API, ORG, PENALTY_SECONDS, upstream_log
from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, Emulator
from tests.e2e.processes import Processes, Service, access_token, environment, free_port


@pytest.fixture
def service(
    tmp_path: Path, emulator: Emulator, org_grants: str, redis_url: str, redis_namespace: str
) -> Iterator[Service]:
    processes = Processes(tmp_path)
    port = free_port()
    env = environment(
        tmp_path,
        AIRTABLE_GATEWAY_PORT=str(port),
        AIRTABLE_GATEWAY_DATABASE_URL=org_grants,
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=redis_namespace,
        AIRTABLE_TOKEN=emulator.token,
        AIRTABLE_API_URL=emulator.url,
        AIRTABLE_PENALTY_SECONDS=str(PENALTY_SECONDS),
    )
    try:
        yield processes.python("airtable-gateway", ["-m", "airtable_gateway", "serve"], env, port).wait_healthy()
    finally:
        processes.stop_all()


@pytest.fixture
def platform_api(service: Service) -> Iterator[Api]:
    """pyairtable as it is, its endpoint URL pointed at the service, a platform token as its key."""
    api = Api(access_token(org=ORG), endpoint_url=f"{service.url}{API}")
    yield api
    api.session.close()


def test_pyairtable_reads_through_the_mirror(platform_api: Api, emulator: Emulator) -> None:
    api = platform_api
    assert {base.id for base in api.bases()} == {CRM_BASE, OPS_BASE}
    contacts = api.table(CRM_BASE, "Contacts")
    assert {table.name for table in api.base(CRM_BASE).tables()} == {"Contacts", "Companies"}

    records = contacts.all()
    assert len({record["id"] for record in records}) == 250
    oldest = contacts.first(formula="{Age} > 60", sort=["-Age"], fields=["Name", "Age"])
    assert oldest is not None and set(oldest["fields"]) <= {"Name", "Age"}
    assert contacts.get("recContact0000001")["fields"]["Name"] == "Ada Lovelace 001"

    calls = len(upstream_log(emulator, CRM_BASE))
    assert len(contacts.all()) == 250  # every page again, from the cache
    assert len(upstream_log(emulator, CRM_BASE)) == calls

    with pytest.raises(requests.HTTPError) as missing:
        contacts.get("recNoSuchRecord00")
    assert missing.value.response.status_code == 404
    assert missing.value.response.json()["error"]["type"] in ("NOT_FOUND", "MODEL_ID_NOT_FOUND")


def test_pyairtable_writes_through_the_mirror(platform_api: Api, emulator: Emulator) -> None:
    tasks = platform_api.table(OPS_BASE, TASKS)
    created = tasks.batch_create([{"Name": f"Mirror {n:02d}", "Priority": n} for n in range(12)])
    assert [record["fields"]["Name"] for record in created] == [f"Mirror {n:02d}" for n in range(12)]
    assert len(tasks.all()) == 32  # the write invalidated the cached list

    updated = tasks.batch_update([{"id": record["id"], "fields": {"Done": True}} for record in created])
    assert all(record["fields"]["Done"] for record in updated)
    result = tasks.batch_upsert([{"fields": {"Name": "Mirror 00", "Priority": 99}}], key_fields=["Name"])
    assert result["updatedRecords"] == [created[0]["id"]]
    assert tasks.update(created[1]["id"], {"Priority": 42})["fields"]["Priority"] == 42

    deleted = tasks.batch_delete([record["id"] for record in created])
    assert all(item["deleted"] for item in deleted)
    assert len(tasks.all()) == 20
    assert emulator.stats()["throttled"] == {}


def test_the_mirror_caches_and_needs_a_platform_token(service: Service, emulator: Emulator) -> None:
    url = f"{service.url}{API}/v0/{CRM_BASE}/{CONTACTS}"
    headers = {"Authorization": f"Bearer {access_token(org=ORG)}"}
    first = httpx.get(url, params={"pageSize": 3}, headers=headers)
    second = httpx.get(url, params={"pageSize": 3}, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert len(first.json()["records"]) == 3
    not_modified = httpx.get(url, params={"pageSize": 3}, headers={**headers, "If-None-Match": first.headers["etag"]})
    assert not_modified.status_code == 304

    # Airtable's own token is not a platform token: refused before anything reaches Airtable.
    refused = httpx.get(url, headers={"Authorization": f"Bearer {emulator.token}"})
    assert refused.status_code == 401
    assert len(upstream_log(emulator, CRM_BASE)) == 1
