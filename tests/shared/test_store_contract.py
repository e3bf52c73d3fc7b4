"""One contract, two stores: the embedded mode's in-process store and the Redis one (through the
fallback every service uses) answer every operation alike, so what a test proves with one holds for
the other. Redis here is the shared test server, inside the test's own namespace."""

from collections.abc import AsyncIterator

import pytest

from shared.settings import ServiceSettings
from shared.stores import KeyValueStore, MemoryStore, create_redis, create_store
from tests.conftest import LOADED_REDIS_TIMEOUT_SECONDS, eventually

SHORT_TTL = 0.2  # seconds: a key that is waited out (with eventually(), never a fixed sleep)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str, redis_namespace: str) -> AsyncIterator[KeyValueStore]:
    if request.param == "memory":
        created: KeyValueStore = MemoryStore()
    else:
        # A reply slower than production's 50 ms on a loaded machine would send that one call to
        # the per-process stand-in: the contract is the shared store's.
        settings = ServiceSettings(
            redis_url=redis_url, redis_namespace=redis_namespace, redis_timeout_seconds=LOADED_REDIS_TIMEOUT_SECONDS
        )
        created = create_store(settings, create_redis(settings))
    try:
        yield created
    finally:
        await created.close()


async def test_a_missing_key_reads_as_nothing(store: KeyValueStore) -> None:
    assert await store.get("missing") is None
    assert await store.ttl("missing") is None
    assert await store.get_many(["missing", "also-missing"]) == [None, None]
    assert await store.get_many([]) == []
    await store.delete("missing")  # deleting nothing is fine


async def test_a_value_set_reads_back_as_bytes_in_order(store: KeyValueStore) -> None:
    await store.set("text", "héllo", 60)
    await store.set("bytes", b"\x00\xff", 60)
    assert await store.get("text") == "héllo".encode()
    assert await store.get_many(["bytes", "missing", "text"]) == [b"\x00\xff", None, "héllo".encode()]


async def test_set_replaces_the_value_and_its_expiry(store: KeyValueStore) -> None:
    await store.set("k", b"first", 3600)
    await store.set("k", b"second", 60)
    assert await store.get("k") == b"second"
    remaining = await store.ttl("k")
    assert remaining is not None and 0 < remaining <= 60


async def test_delete_removes_the_key(store: KeyValueStore) -> None:
    await store.set("k", b"v", 60)
    await store.delete("k")
    assert await store.get("k") is None
    assert await store.ttl("k") is None


async def test_delete_removes_every_key_named_at_once(store: KeyValueStore) -> None:
    await store.set("a", b"1", 60)
    await store.set("b", b"2", 60)
    await store.set("c", b"3", 60)
    await store.delete("a", "b", "missing")
    assert await store.get_many(["a", "b", "c"]) == [None, None, b"3"]


async def test_incr_counts_from_one_and_rearms_the_expiry(store: KeyValueStore) -> None:
    assert [await store.incr("n", 3600) for _ in range(3)] == [1, 2, 3]
    assert await store.get("n") == b"3"
    assert await store.incr("n", 60) == 4
    remaining = await store.ttl("n")
    assert remaining is not None and 0 < remaining <= 60, "each incr sets the expiry it is given"


async def test_incr_continues_a_number_set_as_text(store: KeyValueStore) -> None:
    await store.set("n", "41", 60)
    assert await store.incr("n", 60) == 42


async def test_a_key_is_gone_once_its_time_is_up(store: KeyValueStore) -> None:
    await store.set("short", b"v", SHORT_TTL)
    await store.incr("short-count", SHORT_TTL)
    await store.set("long", b"v", 3600)
    await eventually(lambda: _both_gone(store), "the short-lived keys expired")
    assert await store.get("long") == b"v"
    assert await store.incr("short-count", 60) == 1, "an expired counter starts again"


async def _both_gone(store: KeyValueStore) -> bool:
    return await store.get_many(["short", "short-count"]) == [None, None]


async def test_ping_answers_and_the_shared_view_is_the_same_data(store: KeyValueStore) -> None:
    await store.ping()
    await store.set("k", b"v", 60)
    assert await store.shared.get("k") == b"v"
