"""Dependency faults (issue 12): the Airtable gateway's Redis (read cache, upstream rate limits,
and the kernel's revocations) and its own PostgreSQL (users' stored tokens) fail, on private
servers this test kills, hangs and restarts; Airtable reads keep being served."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import msgspec
import pytest
import redis as redis_sync
from litestar import Litestar

from airtable_gateway.app import create_app
from airtable_gateway.config import AirtableSettings
from shared import migrations
from shared.stores import STORE_DEGRADED
from tests.airtable_gateway.conftest import API, ORG, PROBLEM, SettingsFactory, bearer, grant, upstream_log
from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, Emulator, run_emulator
from tests.airtable_gateway.test_ratelimit import most_in_one_second
from tests.conftest import app_client, eventually
from tests.metrics import forget
from tests.private_servers import PrivatePostgres, PrivateRedis

CONTACTS_URL = f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records"
TASKS_URL = f"{API}/bases/{OPS_BASE}/tables/{TASKS}/records"
USER_TOKEN = "patUserOwnToken.0123456789abcdef"


def with_production_redis_timeout(settings: AirtableSettings) -> Litestar:
    return create_app(msgspec.structs.replace(settings, redis_timeout_seconds=0.05))


def redis_keys(server: PrivateRedis, pattern: str) -> list[bytes]:
    with redis_sync.Redis.from_url(server.url, socket_timeout=2) as client:
        return list(client.scan_iter(match=pattern))


def redis_get(server: PrivateRedis, key: str) -> bytes | None:
    with redis_sync.Redis.from_url(server.url, socket_timeout=2) as client:
        value: bytes | None = client.get(key)
        return value


async def metric(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def test_uncached_reads_keep_working_while_redis_is_down_and_shared_again_after(
    make_settings: SettingsFactory, emulator: Emulator, private_redis: PrivateRedis, redis_namespace: str
) -> None:
    settings = make_settings(redis_url=private_redis.url, airtable_queue_timeout=30.0, airtable_fair_share_seconds=30.0)
    async with app_client(with_production_redis_timeout(settings)) as client:
        client.headers.update(bearer())
        assert (await client.get(CONTACTS_URL, params={"page_size": 1})).headers["x-cache"] == "MISS"
        assert (await client.get(CONTACTS_URL, params={"page_size": 1})).headers["x-cache"] == "HIT"
        assert redis_keys(private_redis, f"{redis_namespace}:airtable:cache:*")

        forget(STORE_DEGRADED)
        private_redis.kill()
        reads = await asyncio.gather(
            *(client.get(CONTACTS_URL, params={"page_size": 1, "max_records": n}) for n in range(1, 16))
        )
        assert [(r.status_code, r.headers["x-cache"]) for r in reads] == [(200, "MISS")] * 15
        again = await client.get(CONTACTS_URL, params={"page_size": 1, "max_records": 1})
        assert again.headers["x-cache"] == "HIT"  # cached in the process meanwhile
        assert await metric(client, "pyairtable_store_degraded") == 1
        # Airtable's limits held by the process alone.
        log = upstream_log(emulator, CRM_BASE)
        assert most_in_one_second([entry["at"] for entry in log]) <= 5
        assert emulator.stats()["throttled"].get(CRM_BASE, 0) == 0

        forget(STORE_DEGRADED)
        private_redis.start()  # empty

        async def shared_again() -> bool:
            response = await client.get(CONTACTS_URL, params={"page_size": 2})
            return response.status_code == 200 and bool(redis_keys(private_redis, f"{redis_namespace}:airtable:*"))

        await eventually(shared_again, "the cache and the limits to be in Redis again")
        assert await metric(client, "pyairtable_store_degraded") == 0


async def test_a_hung_redis_is_left_alone_and_a_write_it_missed_voids_its_entries_after(
    make_settings: SettingsFactory, emulator: Emulator, private_redis: PrivateRedis, redis_namespace: str
) -> None:
    settings = make_settings(redis_url=private_redis.url)
    async with app_client(with_production_redis_timeout(settings)) as client:
        client.headers.update(bearer())
        before = await client.get(TASKS_URL, params={"all": "true"})
        assert (await client.get(TASKS_URL, params={"all": "true"})).headers["x-cache"] == "HIT"

        forget(STORE_DEGRADED)
        private_redis.hang()
        try:
            uncached = await client.get(CONTACTS_URL, params={"page_size": 3}, timeout=10)
            assert uncached.status_code == 200
            created = await client.post(TASKS_URL, json={"fields": {"Name": "Written while hung"}}, timeout=10)
            assert created.status_code == 201
            during = await client.get(TASKS_URL, params={"all": "true"}, timeout=10)
            assert "Written while hung" in names(during)
            assert await metric(client, "pyairtable_store_degraded") == 1
        finally:
            forget(STORE_DEGRADED)
            private_redis.resume()

        async def redis_answers_again() -> bool:
            await client.get(CONTACTS_URL, params={"page_size": 4})
            return await metric(client, "pyairtable_store_degraded") == 0

        await eventually(redis_answers_again, "Redis to be used again")
        # The entry Redis kept from before the hang was read before the write: never served again.
        after = await client.get(TASKS_URL, params={"all": "true"})
        assert after.status_code == 200
        assert "Written while hung" in names(after)
        assert after.content != before.content
        assert redis_get(private_redis, f"{redis_namespace}:airtable:generation:{OPS_BASE}") == b"1"  # replayed


async def test_a_read_cached_before_redis_went_away_stays_a_hit_until_its_base_is_written(
    make_settings: SettingsFactory, emulator: Emulator, private_redis: PrivateRedis
) -> None:
    settings = make_settings(redis_url=private_redis.url)
    async with app_client(with_production_redis_timeout(settings)) as client:
        client.headers.update(bearer())
        assert (await client.get(TASKS_URL, params={"page_size": 5})).headers["x-cache"] == "MISS"
        assert (await client.get(TASKS_URL, params={"page_size": 5})).headers["x-cache"] == "HIT"
        calls_before = len(upstream_log(emulator, OPS_BASE))

        private_redis.kill()
        during = [await client.get(TASKS_URL, params={"page_size": 5}) for _ in range(3)]
        assert [(r.status_code, r.headers["x-cache"]) for r in during] == [(200, "HIT")] * 3
        assert len(upstream_log(emulator, OPS_BASE)) == calls_before  # Airtable was not asked again

        created = await client.post(TASKS_URL, json={"fields": {"Name": "Written while Redis was down"}})
        assert created.status_code == 201
        after_write = await client.get(TASKS_URL, params={"page_size": 5})
        assert after_write.headers["x-cache"] == "MISS"  # the copy from before the write is void


def names(response: httpx.Response) -> set[str]:
    return {record["fields"].get("Name") for record in response.json()["records"]}


@pytest.fixture
def two_token_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with run_emulator(tmp_path_factory.mktemp("emulator"), tokens=("emulator-token", USER_TOKEN)) as emulator:
        yield emulator


@pytest.fixture
def private_database() -> Iterator[tuple[PrivatePostgres, str]]:
    server = PrivatePostgres().start()
    try:
        url = server.create_database("pyairtable_airtable")
        migrations.upgrade(AirtableSettings(database_url=url), "airtable_gateway")
        grant(url, ORG, CRM_BASE)
        yield server, url
    finally:
        server.destroy()


@pytest.fixture
async def database_fault_app(
    make_settings: SettingsFactory, two_token_emulator: Emulator, private_database: tuple[PrivatePostgres, str]
) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    settings = make_settings(
        database_url=private_database[1],
        airtable_api_url=two_token_emulator.url,
        airtable_token="emulator-token",
        token_cache_seconds=0,  # every request would read the database
        db_connect_timeout_seconds=1.0,
        db_statement_timeout_ms=1500,  # production's: a lookup gives up on a hung database after it
    )
    app = create_app(settings)
    async with app_client(app) as client:
        yield app, client


@pytest.mark.parametrize("fault", ["stopped", "hung"])
async def test_cached_reads_are_served_while_the_database_is_down(
    database_fault_app: tuple[Litestar, httpx.AsyncClient],
    private_database: tuple[PrivatePostgres, str],
    two_token_emulator: Emulator,
    fault: str,
) -> None:
    """Stopped: ``pg_ctl stop -m immediate``, every pooled connection gone. Hung: the postmaster
    SIGSTOPped with a new connection needed (the pool emptied), which is never answered."""
    (app, client), server = database_fault_app, private_database[0]
    own, platform_user, newcomer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert (await client.put(f"{API}/token", json={"token": USER_TOKEN}, headers=bearer(own))).status_code == 200
    own_cached = await client.get(CONTACTS_URL, params={"page_size": 2}, headers=bearer(own))
    platform_cached = await client.get(CONTACTS_URL, params={"page_size": 2}, headers=bearer(platform_user))
    assert (own_cached.headers["x-cache"], platform_cached.headers["x-cache"]) == ("MISS", "MISS")

    if fault == "stopped":
        server.stop()
    else:
        server.hang()
        await app.state.engine.dispose()
    try:
        for user, first in ((own, own_cached), (platform_user, platform_cached)):
            hit = await client.get(CONTACTS_URL, params={"page_size": 2}, headers=bearer(user), timeout=10)
            assert (hit.status_code, hit.headers["x-cache"], hit.content) == (200, "HIT", first.content)
        # The platform's token needs no database: an uncached read still goes to Airtable.
        uncached = await client.get(CONTACTS_URL, params={"page_size": 5}, headers=bearer(platform_user), timeout=10)
        assert (uncached.status_code, uncached.headers["x-cache"]) == (200, "MISS")
        # A user this process never saw, and the token endpoints, need the database: 503; so does
        # an organisation whose grant this process never read (never the cached answer).
        for response in (
            await client.get(CONTACTS_URL, params={"page_size": 2}, headers=bearer(newcomer), timeout=10),
            await client.get(
                CONTACTS_URL, params={"page_size": 2}, headers=bearer(platform_user, org=uuid.uuid4()), timeout=10
            ),
            await client.put(f"{API}/token", json={"token": USER_TOKEN}, headers=bearer(newcomer), timeout=10),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["code"] == "database-unavailable"
            assert "retry-after" in response.headers
    finally:
        if fault == "stopped":
            server.start()
        else:
            server.resume()

    async def newcomer_served() -> bool:
        response = await client.get(CONTACTS_URL, params={"page_size": 2}, headers=bearer(newcomer), timeout=10)
        return response.status_code == 200

    await eventually(newcomer_served, "the database to be read again")
    assert (await client.get(CONTACTS_URL, params={"page_size": 7}, headers=bearer(own))).status_code == 200
    tokens = {entry["token"] for entry in upstream_log(two_token_emulator, CRM_BASE)}
    assert len(tokens) == 2  # the user's own token and the platform's, never mixed up
