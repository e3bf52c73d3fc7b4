"""Redis is an accelerator: killed or hung, the services keep working and say what they cannot do.

Each test runs its own ``redis-server`` (tests/private_servers.py) that it kills, hangs and starts
again; the machine's shared Redis is never touched. Bounds on waiting are generous client
timeouts that prove "no hang", never performance claims.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import msgspec
import pytest
import redis as redis_sync
from redis.exceptions import ResponseError

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared.security import REVOCATIONS_PENDING, RevocationIncomplete, RevocationList
from shared.settings import ServiceSettings
from shared.stores import STORE_DEGRADED, FallbackStore, MemoryStore, StoreUnavailable, create_redis, create_store
from tests.auth_service.conftest import PASSWORD, Clock, bearer, register
from tests.conftest import access_claims, app_client, eventually
from tests.metrics import forget, local_sample
from tests.private_servers import PrivateRedis

GENEROUS_SECONDS = 5.0  # far above the 50 ms timeout: a bound that proves "no hang"
FAILURES = 3


def store_settings(server: PrivateRedis) -> ServiceSettings:
    return ServiceSettings(
        redis_url=server.url,
        redis_namespace=f"stores-{uuid.uuid4().hex[:8]}",
        redis_breaker_failures=FAILURES,
        redis_breaker_reset_seconds=0.5,
    )


@pytest.fixture
async def store(private_redis: PrivateRedis) -> AsyncIterator[FallbackStore]:
    settings = store_settings(private_redis)
    created = create_store(settings, create_redis(settings))
    assert isinstance(created, FallbackStore)
    try:
        yield created
    finally:
        await created.close()


def in_redis(server: PrivateRedis, key: str) -> bytes | None:
    client = redis_sync.Redis.from_url(server.url, socket_timeout=1)
    try:
        value: Any = client.get(key)
        return value if isinstance(value, bytes) else None
    finally:
        client.close()


async def within_bound(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GENEROUS_SECONDS)


async def test_with_redis_killed_the_store_counts_in_process_then_resumes_sharing(
    store: FallbackStore, private_redis: PrivateRedis
) -> None:
    assert await store.incr("before", 60) == 1
    forget(STORE_DEGRADED)
    private_redis.kill()

    counts = [await within_bound(store.incr("attempts", 60)) for _ in range(FAILURES + 2)]
    assert counts == list(range(1, FAILURES + 3))  # a per-process throttle still limits
    await store.set("lock", b"1", 60)
    assert await store.get("lock") == b"1"
    assert await store.ttl("lock") is not None
    assert store.shared.breaker.is_open
    assert local_sample("pyairtable_store_degraded") == 1
    with pytest.raises(StoreUnavailable):
        await store.shared.get("lock")  # what must be shared or nothing says so

    forget(STORE_DEGRADED)
    private_redis.start()  # empty, as after a crash
    await eventually(lambda: _incr_reaches_redis(store, private_redis), "shared counting to resume")
    assert not store.shared.breaker.is_open
    assert local_sample("pyairtable_store_degraded") == 0
    assert await store.get("lock") is None  # the stand-in's state went with the outage


async def _incr_reaches_redis(store: FallbackStore, server: PrivateRedis) -> bool:
    await store.incr("after", 60)
    return in_redis(server, f"{store.shared.namespace}:after") is not None


async def test_a_hung_redis_costs_a_timeout_then_is_skipped_until_it_answers(
    store: FallbackStore, private_redis: PrivateRedis
) -> None:
    await store.set("kept", b"shared", 60)
    private_redis.hang()
    try:
        hits = [await within_bound(store.incr("hits", 60)) for _ in range(FAILURES + 3)]
        assert hits == list(range(1, FAILURES + 4))
        assert store.shared.breaker.is_open
        assert await within_bound(store.get("kept")) is None  # the stand-in never held it
    finally:
        private_redis.resume()
    assert await eventually(lambda: store.get("kept"), "Redis to be read again") == b"shared"


async def test_an_error_answer_from_a_live_redis_never_opens_the_breaker(
    store: FallbackStore, private_redis: PrivateRedis
) -> None:
    client = redis_sync.Redis.from_url(private_redis.url)
    client.rpush(f"{store.shared.namespace}:a-list", "x")
    client.close()
    for _ in range(FAILURES * 3):
        with pytest.raises(ResponseError):
            await store.incr("a-list", 60)
    assert not store.shared.breaker.is_open
    await store.set("plain", b"1", 60)
    assert in_redis(private_redis, f"{store.shared.namespace}:plain") == b"1"


async def test_the_stand_in_holds_a_bounded_number_of_keys(store: FallbackStore, private_redis: PrivateRedis) -> None:
    store.local.max_keys = 100
    private_redis.kill()
    for n in range(1000):
        await store.set(f"k{n}", b"v", 60)
    assert store.local.size <= 100
    assert await store.get("k999") == b"v"
    assert await store.get("k0") is None


async def test_the_embedded_store_never_pushes_out_a_live_key() -> None:
    """It holds the revocations: a flood of other keys must not evict one."""
    memory = MemoryStore()
    await memory.set("revoked:sid:first", b"1", 600)
    for n in range(20_000):
        await memory.set(f"flood{n}", b"v", 600)
    assert await memory.get("revoked:sid:first") == b"1"


async def test_unknowable_revocations_accept_signature_valid_tokens_and_say_so(
    store: FallbackStore, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    revocations = RevocationList(store)
    claims = access_claims()
    await revocations.revoke_session(claims["sid"], 60)
    assert await revocations.is_revoked(claims)
    private_redis.kill()
    before = local_sample("pyairtable_revocation_unknown_total")
    with caplog.at_level(logging.INFO, logger="shared.security"):
        checks = [await within_bound(revocations.is_revoked(access_claims())) for _ in range(3)]
        private_redis.start()
        await eventually(lambda: _answers(store), "Redis to answer")
        assert not await revocations.is_revoked(access_claims())
    assert checks == [False, False, False]
    assert local_sample("pyairtable_revocation_unknown_total") == before + 3
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("revocation store unavailable: signature-valid tokens accepted until it returns") == 1
    assert "revocation store back: revoked tokens refused again" in messages


async def test_a_revocation_redis_could_not_take_is_enforced_here_and_written_when_it_returns(
    store: FallbackStore, private_redis: PrivateRedis
) -> None:
    here = RevocationList(store)
    claims = access_claims()
    forget(REVOCATIONS_PENDING)
    private_redis.kill()
    with pytest.raises(RevocationIncomplete) as incomplete:
        await here.revoke_token(claims["iss"], claims["jti"], claims["exp"])
    assert (incomplete.value.status_code, incomplete.value.code) == (503, "revocation-incomplete")
    assert await here.is_revoked(claims)  # this process refuses it at once
    assert local_sample("pyairtable_revocations_pending") == 1

    forget(REVOCATIONS_PENDING)
    private_redis.start()
    await eventually(lambda: _written(here), "the pending revocation to be written")
    elsewhere = RevocationList(FallbackStore(store.shared))  # another process's list on the same Redis
    assert await elsewhere.is_revoked(claims)
    assert local_sample("pyairtable_revocations_pending") == 0


async def _answers(store: FallbackStore) -> bool:
    try:
        await store.shared.ping()
    except StoreUnavailable:
        return False
    return True


async def _written(revocations: RevocationList) -> bool:
    try:
        await revocations.write_pending()
    except StoreUnavailable:
        return False
    return True


# -- the auth service, in process, on a Redis that dies -----------------------------------------


@pytest.fixture
def redis_auth_settings(auth_settings: AuthSettings, private_redis: PrivateRedis) -> AuthSettings:
    return msgspec.structs.replace(
        auth_settings, redis_url=private_redis.url, redis_breaker_failures=FAILURES, redis_breaker_reset_seconds=0.5
    )


@pytest.fixture
async def auth_client(redis_auth_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(redis_auth_settings, clock=clock)) as client:
        yield client


async def test_with_redis_killed_registration_login_refresh_and_reads_keep_working(
    auth_client: httpx.AsyncClient, private_redis: PrivateRedis
) -> None:
    await register(auth_client, "before@example.com")
    unknown_before = local_sample("pyairtable_revocation_unknown_total")
    forget(STORE_DEGRADED)
    private_redis.kill()

    tokens = await register(auth_client, "during@example.com")
    login = await auth_client.post("/api/v1/auth/login", json={"email": "before@example.com", "password": PASSWORD})
    assert login.status_code == 200, login.text
    refreshed = await auth_client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    me = await auth_client.get("/api/v1/auth/me", headers=bearer(refreshed.json()))
    assert me.status_code == 200, me.text

    ready = await auth_client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"]["status"] == "degraded"
    metrics = (await auth_client.get("/metrics")).text
    assert "pyairtable_store_degraded 1.0" in metrics
    assert local_sample("pyairtable_revocation_unknown_total") > unknown_before, "the unknowable revocation is counted"


async def test_with_redis_down_the_login_throttle_still_limits_per_process(
    redis_auth_settings: AuthSettings, clock: Clock, private_redis: PrivateRedis
) -> None:
    settings = msgspec.structs.replace(redis_auth_settings, ip_attempts_per_minute=3)
    async with app_client(create_app(settings, clock=clock)) as client:
        private_redis.kill()
        statuses = [
            (
                await client.post(
                    "/api/v1/auth/login", json={"email": f"u{n}@example.com", "password": "wrong-password"}
                )
            ).status_code
            for n in range(5)
        ]
    assert statuses == [401, 401, 401, 429, 429]


async def test_logout_with_redis_down_ends_the_session_and_says_what_it_could_not_do(
    auth_client: httpx.AsyncClient, private_redis: PrivateRedis, redis_auth_settings: AuthSettings
) -> None:
    tokens = await register(auth_client)
    private_redis.kill()

    logout = await auth_client.post("/api/v1/auth/logout", headers=bearer(tokens))
    assert logout.status_code == 503, logout.text
    assert logout.headers["content-type"].startswith("application/problem+json")
    assert logout.json()["code"] == "revocation-incomplete"
    assert "retry-after" in logout.headers
    refresh = await auth_client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 401  # the session is revoked in the database: the logout stood
    assert (await auth_client.get("/api/v1/auth/me", headers=bearer(tokens))).status_code == 401

    private_redis.start()
    await revoked_elsewhere(auth_client, redis_auth_settings, [tokens], "the session's revocation to reach Redis")


def _session_of(access_token: str) -> str:
    session: str = jwt.decode(access_token, options={"verify_signature": False})["sid"]
    return session


async def revoked_elsewhere(
    auth_client: httpx.AsyncClient, settings: AuthSettings, sessions: list[dict[str, Any]], what: str
) -> None:
    """Wait until another process's revocation list on the same Redis sees every one of
    ``sessions`` revoked."""
    other_service = RevocationList(create_store(settings, create_redis(settings)))

    async def written_and_seen() -> bool:
        await auth_client.get("/ready")  # readiness probes write what waited for Redis
        return all(
            [
                await other_service.is_revoked({**access_claims(), "sid": _session_of(tokens["access_token"])})
                for tokens in sessions
            ]
        )

    try:
        await eventually(written_and_seen, what)
    finally:
        await other_service.store.close()


async def test_a_global_logout_with_redis_down_keeps_every_session_revocation_to_write(
    auth_client: httpx.AsyncClient, private_redis: PrivateRedis, redis_auth_settings: AuthSettings
) -> None:
    first = await register(auth_client)
    second = (
        await auth_client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    ).json()
    private_redis.kill()

    logout = await auth_client.post("/api/v1/auth/logout?scope=global", headers=bearer(first))
    assert logout.status_code == 503 and logout.json()["code"] == "revocation-incomplete"
    for tokens in (first, second):
        assert (await auth_client.get("/api/v1/auth/me", headers=bearer(tokens))).status_code == 401

    private_redis.start()
    await revoked_elsewhere(
        auth_client, redis_auth_settings, [first, second], "both sessions' revocations to reach Redis"
    )
