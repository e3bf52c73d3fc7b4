"""The read cache: hits, ETags, invalidation by writes, coalesced misses, token isolation, stale
answers during a 429 pause and while an expired entry is refreshed (stale-while-revalidate)."""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airtable_gateway.app import create_app
from tests.airtable_gateway.conftest import API, SettingsFactory, bearer, upstream_log, wait_for
from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, Emulator, run_emulator
from tests.conftest import app_client, eventually
from tests.metrics import sample

CONTACTS_URL = f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records"
TASKS_URL = f"{API}/bases/{OPS_BASE}/tables/{TASKS}/records"
USER_TOKEN = "patUserOwnToken.0123456789abcdef"


async def test_a_repeated_read_is_a_hit_with_the_same_etag(client: httpx.AsyncClient, emulator: Emulator) -> None:
    hits_before = sample((await client.get("/metrics")).text, "pyairtable_airtable_cache_total", result="hit")
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
    assert sample(metrics, "pyairtable_airtable_cache_total", result="hit") == hits_before + 4, (
        "the second read, two 304s and the changed one"
    )


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


async def test_stale_entries_answer_while_the_base_is_paused_and_are_refreshed_after_it(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    settings = make_settings(cache_ttl=0.3, airtable_penalty_seconds=2.0)
    async with app_client(create_app(settings)) as client:
        client.headers.update(bearer())
        first = await client.get(CONTACTS_URL, params={"page_size": 4})
        assert first.headers["x-cache"] == "MISS"
        await asyncio.sleep(0.4)  # past its TTL

        emulator.fail(CRM_BASE, 429)
        throttled = await client.get(CONTACTS_URL, params={"page_size": 6})
        assert throttled.status_code == 503
        calls = len(upstream_log(emulator, CRM_BASE))

        stale = await client.get(CONTACTS_URL, params={"page_size": 4})
        assert stale.status_code == 200
        assert stale.headers["x-cache"] == "STALE"
        assert stale.content == first.content
        uncached = await client.get(CONTACTS_URL, params={"page_size": 7})
        assert uncached.status_code == 503  # at once, with the time left of the pause
        assert 1 <= int(uncached.headers["retry-after"]) <= 3
        assert len(upstream_log(emulator, CRM_BASE)) == calls  # neither asked Airtable

        await asyncio.sleep(float(throttled.headers["retry-after"]))  # the pause is over
        after = await client.get(CONTACTS_URL, params={"page_size": 4})
        assert (after.headers["x-cache"], after.content) == ("STALE", first.content)  # answered at once
        await asyncio.to_thread(wait_for, lambda: len(upstream_log(emulator, CRM_BASE)) == calls + 1)
        refreshed = await eventually_a_hit(client, {"page_size": 4})
        assert refreshed.json()["records"] == first.json()["records"]
        assert refreshed.headers["etag"] != first.headers["etag"]  # a new answer (a new offset token)
    assert [entry["status"] for entry in upstream_log(emulator, CRM_BASE)] == [200, 429, 200]


async def eventually_a_hit(client: httpx.AsyncClient, params: dict[str, Any]) -> httpx.Response:
    async def hit() -> httpx.Response | None:
        response = await client.get(CONTACTS_URL, params=params)
        return response if response.headers["x-cache"] == "HIT" else None

    result: httpx.Response = await eventually(hit, "the refreshed entry")
    return result


async def test_an_expired_entry_answers_at_once_while_one_call_refreshes_it(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    async with app_client(create_app(make_settings(cache_ttl=0.3))) as client:
        client.headers.update(bearer())
        first = await client.get(CONTACTS_URL, params={"page_size": 4})
        await asyncio.sleep(0.4)  # past its TTL
        emulator.set_latency(1.0)  # a slow refresh, which no reader waits for
        readers = await asyncio.gather(*(client.get(CONTACTS_URL, params={"page_size": 4}) for _ in range(10)))
        assert {(r.status_code, r.headers["x-cache"], r.content) for r in readers} == {(200, "STALE", first.content)}
        await asyncio.to_thread(wait_for, lambda: len(upstream_log(emulator, CRM_BASE)) == 2)
        emulator.set_latency(0)
        await eventually_a_hit(client, {"page_size": 4})
    assert len(upstream_log(emulator, CRM_BASE)) == 2  # one refresh for all ten readers


async def test_a_stale_entry_answers_when_airtable_fails(make_settings: SettingsFactory, emulator: Emulator) -> None:
    settings = make_settings(cache_ttl=0.2, cache_revalidate_seconds=0, airtable_max_retries=1)
    async with app_client(create_app(settings)) as client:
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
