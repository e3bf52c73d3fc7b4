"""Airtable's limits made invisible: requests wait their turn (never more than 5/s per base), a
429 pauses the base (reads the cache cannot answer get 503 for the whole pause, writes wait for
its end), 5xx on reads are retried, creates never blindly, a deadline gives 503."""

import asyncio

import httpx

from airtable_gateway.app import create_app
from tests.airtable_gateway.conftest import API, PENALTY_SECONDS, PROBLEM, SettingsFactory, bearer, upstream_log
from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, Emulator
from tests.conftest import app_client

CONTACTS_URL = f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records"
TASKS_URL = f"{API}/bases/{OPS_BASE}/tables/{TASKS}/records"


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times)), default=0)


async def test_a_burst_of_50_reads_on_one_base_waits_its_turn(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    # One user allowed the whole queue (see test_fair_share.py for the default share).
    settings = make_settings(airtable_queue_timeout=30.0, airtable_fair_share_seconds=30.0)
    async with app_client(create_app(settings)) as client:
        client.headers.update(bearer())
        responses = await asyncio.gather(
            *(client.get(CONTACTS_URL, params={"page_size": 1, "max_records": n}) for n in range(1, 51))
        )
    assert [response.status_code for response in responses] == [200] * 50, responses[0].text
    assert all(response.headers["x-cache"] == "MISS" for response in responses)
    stats = emulator.stats()
    assert stats["throttled"].get(CRM_BASE, 0) == 0
    log = upstream_log(emulator, CRM_BASE)
    assert len(log) == 50
    assert {entry["status"] for entry in log} == {200}
    assert most_in_one_second([entry["at"] for entry in log]) <= 5


async def test_after_a_429_reads_are_refused_and_writes_wait_for_the_whole_pause(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.fail(CRM_BASE, 429)
    throttled = await client.get(CONTACTS_URL, params={"page_size": 1})
    assert throttled.status_code == 503
    assert throttled.headers["content-type"] == PROBLEM
    assert throttled.json()["code"] == "airtable-rate-limited"
    assert 1 <= int(throttled.headers["retry-after"]) <= 2  # the pause: PENALTY_SECONDS, jittered

    reads = [client.get(CONTACTS_URL, params={"page_size": 1, "max_records": n}) for n in range(1, 5)]
    other_base = [client.get(TASKS_URL, params={"page_size": 1, "max_records": n}) for n in range(1, 5)]
    write = client.post(CONTACTS_URL, json={"fields": {"Name": "After the pause"}})
    *answers, written = await asyncio.gather(*reads, *other_base, write)
    assert [response.status_code for response in answers] == [503] * 4 + [200] * 4
    assert all(1 <= int(response.headers["retry-after"]) <= 2 for response in answers[:4])
    assert written.status_code == 201  # waited for the end of the pause, then went

    log = upstream_log(emulator, CRM_BASE)
    assert [(entry["method"], entry["status"]) for entry in log] == [("GET", 429), ("POST", 200)]
    assert log[1]["at"] - log[0]["at"] >= PENALTY_SECONDS  # nothing reached the base during the pause
    assert all(entry["status"] == 200 for entry in upstream_log(emulator, OPS_BASE))  # not paused
    assert (await client.get(CONTACTS_URL, params={"page_size": 1})).status_code == 200  # after it


async def test_server_errors_on_reads_are_retried(client: httpx.AsyncClient, emulator: Emulator) -> None:
    emulator.fail(CRM_BASE, 503, count=2)
    response = await client.get(CONTACTS_URL, params={"page_size": 2})
    assert response.status_code == 200
    assert [entry["status"] for entry in upstream_log(emulator, CRM_BASE)] == [503, 503, 200]


async def test_a_create_is_never_retried_after_a_server_error(client: httpx.AsyncClient, emulator: Emulator) -> None:
    emulator.fail(OPS_BASE, 500)
    response = await client.post(TASKS_URL, json={"fields": {"Name": "Maybe"}})
    assert response.status_code == 502
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["error"]["type"] == "SERVER_ERROR"
    assert [entry["status"] for entry in upstream_log(emulator, OPS_BASE, "POST")] == [500]


async def test_a_create_refused_with_429_goes_again_after_the_pause(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.fail(OPS_BASE, 429)
    response = await client.post(TASKS_URL, json={"fields": {"Name": "Once"}})
    assert response.status_code == 201
    assert [entry["status"] for entry in upstream_log(emulator, OPS_BASE, "POST")] == [429, 200]
    names = [r["fields"].get("Name") for r in (await client.get(TASKS_URL, params={"all": "true"})).json()["records"]]
    assert names.count("Once") == 1


async def test_past_the_deadline_a_503_with_retry_after(make_settings: SettingsFactory, emulator: Emulator) -> None:
    settings = make_settings(airtable_queue_timeout=1.0, airtable_penalty_seconds=30.0)
    async with app_client(create_app(settings)) as client:
        client.headers.update(bearer())
        emulator.fail(CRM_BASE, 429)
        throttled = await client.get(CONTACTS_URL, params={"page_size": 1})
        queued = await client.get(CONTACTS_URL, params={"page_size": 2})
        other_base = await client.get(TASKS_URL, params={"page_size": 1})
    for response in (throttled, queued):
        assert response.status_code == 503
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "airtable-rate-limited"
        assert 29 <= int(response.headers["retry-after"]) <= 35
    assert len(upstream_log(emulator, CRM_BASE)) == 1
    assert other_base.status_code == 200


async def test_airtable_unreachable_is_a_502(make_settings: SettingsFactory) -> None:
    async with app_client(create_app(make_settings(airtable_api_url="http://127.0.0.1:1"))) as client:
        client.headers.update(bearer())
        read = await client.get(CONTACTS_URL)
        write = await client.post(TASKS_URL, json={"fields": {"Name": "x"}})
    for response in (read, write):
        assert response.status_code == 502
        assert response.json()["code"] == "airtable-unavailable"


async def test_airtable_too_slow_is_a_504_and_a_create_goes_once(
    make_settings: SettingsFactory, emulator: Emulator
) -> None:
    # The timeout also bounds each connect (a timed-out connection is closed, so the retry connects
    # again): 1 s, not less, so that a loaded machine cannot turn a connect into a "not sent" that
    # uses up the retry without reaching Airtable.
    emulator.set_latency(3.0)
    async with app_client(create_app(make_settings(airtable_timeout=1.0, airtable_max_retries=1))) as client:
        client.headers.update(bearer())
        read = await client.get(CONTACTS_URL)
        write = await client.post(TASKS_URL, json={"fields": {"Name": "slow"}})
    assert (read.status_code, write.status_code) == (504, 504)
    assert read.json()["code"] == "airtable-timeout"
    emulator.set_latency(0)
    log = emulator.stats()["log"]
    assert len([entry for entry in log if entry["base"] == CRM_BASE]) == 2  # the read, retried once
    assert len([entry for entry in log if entry["base"] == OPS_BASE]) == 1  # the create, never again


async def test_replicas_share_the_limits_and_the_pauses(make_settings: SettingsFactory, emulator: Emulator) -> None:
    settings = make_settings(airtable_queue_timeout=30.0, airtable_fair_share_seconds=30.0)
    async with app_client(create_app(settings)) as first, app_client(create_app(settings)) as second:
        for client in (first, second):
            client.headers.update(bearer())
        responses = await asyncio.gather(
            *(
                (first if n % 2 else second).get(CONTACTS_URL, params={"page_size": 1, "max_records": n})
                for n in range(1, 21)
            )
        )
        assert [response.status_code for response in responses] == [200] * 20
        log = upstream_log(emulator, CRM_BASE)
        assert len(log) == 20
        assert most_in_one_second([entry["at"] for entry in log]) <= 5

        emulator.fail(CRM_BASE, 429)
        assert (await first.get(CONTACTS_URL, params={"page_size": 2})).status_code == 503
        assert (await second.get(CONTACTS_URL, params={"page_size": 3})).status_code == 503  # knew of the pause
        written = await second.post(CONTACTS_URL, json={"fields": {"Name": "After the pause"}})
        assert written.status_code == 201
    after = upstream_log(emulator, CRM_BASE)[20:]
    assert [entry["status"] for entry in after] == [429, 200]
    assert after[1]["at"] - after[0]["at"] >= PENALTY_SECONDS
    assert emulator.stats()["throttled"].get(CRM_BASE, 0) == 1  # only the injected one
