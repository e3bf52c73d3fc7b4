"""The read cache: hits, ETags, invalidation by writes, coalesced misses, token isolation, stale
answers during a 429 pause."""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airtable_gateway.app import create_app
from tests.airtable_gateway.conftest import API, SettingsFactory, bearer, upstream_log, wait_for
from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, Emulator, run_emulator
from tests.conftest import app_client

CONTACTS_URL = f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records"
TASKS_URL = f"{API}/bases/{OPS_BASE}/tables/{TASKS}/records"
USER_TOKEN = "patUserOwnToken.0123456789abcdef"


async def test_a_repeated_read_is_a_hit_with_the_same_etag(client: httpx.AsyncClient, emulator: Emulator) -> None:
    first = await client.get(CONTACTS_URL, params={"page_size": 5})
    second = await client.get(CONTACTS_URL, params={"page_size": 5})
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.json() == second.json()
    assert first.headers["etag"] == second.headers["etag"]
    assert len(upstream_log(emulator, CRM_BASE)) == 1

    for if_none_match in (first.headers["etag"], f'"other", W/{first.headers["etag"]}'):
        not_modified = await client.get(CONTACTS_URL, params={"page_size": 5}, headers={"If-None-Match": if_none_match})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == first.headers["etag"]
    changed = await client.get(CONTACTS_URL, params={"page_size": 5}, headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    assert len(upstream_log(emulator, CRM_BASE)) == 1

    metrics = (await client.get("/metrics")).text
    assert 'pyairtable_airtable_cache_total{result="hit"}' in metrics
    assert "pyairtable_airtable_upstream_requests_total" in metrics


async def test_a_different_request_is_a_different_entry(client: httpx.AsyncClient) -> None:
    small = await client.get(CONTACTS_URL, params={"page_size": 2})
    other = await client.get(CONTACTS_URL, params={"page_size": 2, "fields": "Name"})
    assert (small.headers["x-cache"], other.headers["x-cache"]) == ("MISS", "MISS")
    assert set(other.json()["records"][0]["fields"]) == {"Name"}


async def test_a_write_invalidates_the_cached_reads_of_its_base(client: httpx.AsyncClient) -> None:
    assert (await client.get(TASKS_URL, params={"all": "true"})).headers["x-cache"] == "MISS"
    assert (await client.get(TASKS_URL, params={"all": "true"})).headers["x-cache"] == "HIT"
    contacts = await client.get(CONTACTS_URL, params={"page_size": 1})

    created = await client.post(TASKS_URL, json={"fields": {"Name": "Fresh"}})
    assert created.status_code == 201
    after = await client.get(TASKS_URL, params={"all": "true"})
    assert after.headers["x-cache"] == "MISS"
    assert "Fresh" in {record["fields"].get("Name") for record in after.json()["records"]}
    # Another base's entries stay.
    assert (await client.get(CONTACTS_URL, params={"page_size": 1})).headers["etag"] == contacts.headers["etag"]
    assert (await client.get(CONTACTS_URL, params={"page_size": 1})).headers["x-cache"] == "HIT"

    # A write through the Airtable-compatible mirror invalidates them too.
    mirrored = await client.post(f"{API}/v0/{OPS_BASE}/{TASKS}", json={"records": [{"fields": {"Name": "Mirrored"}}]})
    assert mirrored.status_code == 200
    again = await client.get(TASKS_URL, params={"all": "true"})
    assert again.headers["x-cache"] == "MISS"
    assert "Mirrored" in {record["fields"].get("Name") for record in again.json()["records"]}


async def test_concurrent_identical_misses_share_one_upstream_call(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.set_latency(0.5)
    responses = await asyncio.gather(*(client.get(CONTACTS_URL, params={"page_size": 20}) for _ in range(20)))
    assert {response.status_code for response in responses} == {200}
    assert len({response.content for response in responses}) == 1
    assert sorted(response.headers["x-cache"] for response in responses) == ["HIT"] * 19 + ["MISS"]
    assert len(upstream_log(emulator, CRM_BASE)) == 1


@pytest.fixture
def two_token_emulator(tmp_path: Path) -> Iterator[Emulator]:
    """An emulator that knows the platform's token and a user's own."""
    with run_emulator(tmp_path, tokens=("emulator-token", USER_TOKEN), penalty_seconds=1.0) as emulator:
        yield emulator


async def test_users_with_their_own_token_never_share_cache_entries(
    make_settings: SettingsFactory, two_token_emulator: Emulator
) -> None:
    settings = make_settings(airtable_api_url=two_token_emulator.url, airtable_token="emulator-token")
    own, platform_user, other_platform_user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with app_client(create_app(settings)) as client:
        saved = await client.put(f"{API}/token", json={"token": USER_TOKEN}, headers=bearer(own))
        assert saved.status_code == 200
        with_own = await client.get(CONTACTS_URL, params={"page_size": 3}, headers=bearer(own))
        with_platform = await client.get(CONTACTS_URL, params={"page_size": 3}, headers=bearer(platform_user))
        assert (with_own.headers["x-cache"], with_platform.headers["x-cache"]) == ("MISS", "MISS")
        assert (await client.get(CONTACTS_URL, params={"page_size": 3}, headers=bearer(own))).headers[
            "x-cache"
        ] == "HIT"
        # Users of the same (platform) token see the same Airtable data: they share its entries.
        shared = await client.get(CONTACTS_URL, params={"page_size": 3}, headers=bearer(other_platform_user))
        assert shared.headers["x-cache"] == "HIT"
    log = upstream_log(two_token_emulator, CRM_BASE)
    assert len(log) == 2
    assert log[0]["token"] != log[1]["token"]


async def test_stale_entries_answer_while_the_base_is_paused(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    settings = make_settings(cache_ttl=0.3, airtable_penalty_seconds=3.0)
    async with app_client(create_app(settings)) as client:
        client.headers.update(bearer())
        first = await client.get(CONTACTS_URL, params={"page_size": 4})
        assert first.headers["x-cache"] == "MISS"
        await asyncio.sleep(0.4)  # past its TTL

        emulator.fail(CRM_BASE, 429)
        other_read = asyncio.create_task(client.get(CONTACTS_URL, params={"page_size": 6}))
        await asyncio.to_thread(wait_for, lambda: any(e["status"] == 429 for e in upstream_log(emulator, CRM_BASE)))
        calls = len(upstream_log(emulator, CRM_BASE))

        stale = await client.get(CONTACTS_URL, params={"page_size": 4})
        assert stale.status_code == 200
        assert stale.headers["x-cache"] == "STALE"
        assert stale.content == first.content
        assert len(upstream_log(emulator, CRM_BASE)) == calls  # answered without asking Airtable

        waited = await other_read  # went again after the pause
        assert waited.status_code == 200
        assert waited.headers["x-cache"] == "MISS"
    statuses = [entry["status"] for entry in upstream_log(emulator, CRM_BASE)]
    assert statuses == [200, 429, 200]


async def test_a_stale_entry_answers_when_airtable_fails(make_settings: SettingsFactory, emulator: Emulator) -> None:
    async with app_client(create_app(make_settings(cache_ttl=0.2, airtable_max_retries=1))) as client:
        client.headers.update(bearer())
        fresh = await client.get(CONTACTS_URL, params={"page_size": 4})
        await asyncio.sleep(0.3)
        emulator.fail(CRM_BASE, 503, count=2)
        stale = await client.get(CONTACTS_URL, params={"page_size": 4})
        uncached = await client.get(CONTACTS_URL, params={"page_size": 5})
    assert (stale.status_code, stale.headers["x-cache"]) == (200, "STALE")
    assert stale.content == fresh.content
    assert int(stale.headers["age"]) >= 0
    assert uncached.status_code == 200  # the failures were used up by the stale one's attempts
    assert [entry["status"] for entry in upstream_log(emulator, CRM_BASE)] == [200, 503, 503, 200]


async def test_identical_misses_on_two_replicas_share_one_upstream_call(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    emulator.set_latency(0.5)
    settings = make_settings()
    async with app_client(create_app(settings)) as first, app_client(create_app(settings)) as second:
        requests = [
            (first if n % 2 else second).get(CONTACTS_URL, params={"page_size": 7}, headers=bearer()) for n in range(10)
        ]
        responses = await asyncio.gather(*requests)
    assert {response.status_code for response in responses} == {200}
    assert len({response.content for response in responses}) == 1
    assert [response.headers["x-cache"] for response in responses].count("MISS") == 1
    assert len(upstream_log(emulator, CRM_BASE)) == 1
