"""The usage pipeline end to end: the gateway's records arrive and roll up into /usage/me, over
Redis and in the embedded run mode; with Redis gone the gateway still serves and counts drops; when
Redis comes back empty, usage flows again by itself."""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from litestar import Litestar

from analytics_service.app import create_app as create_analytics_app
from analytics_service.config import AnalyticsSettings
from embedded.app import create_app as create_embedded_app
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewaySettings
from shared import migrations
from shared.settings import load_settings
from tests.analytics_service.conftest import API, JWT_SECRET, SettingsFactory, User
from tests.conftest import WAIT_SECONDS, app_client
from tests.gateway.echo import Echo
from tests.metrics import sample
from tests.private_servers import PrivateRedis

AIRTABLE = "/api/v1/airtable"
GENEROUS = {"rate_limit_per_minute": 100_000, "rate_limit_burst": 100_000}


def gateway_settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    settings = GatewaySettings(
        jwt_secret=JWT_SECRET, data_dir=str(tmp_path), request_timeout=5, **GENEROUS, **overrides
    )
    settings.validate()
    return settings


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.1)


async def test_requests_through_the_gateway_roll_up_into_usage_me_over_redis(
    tmp_path: Path, analytics_app: Litestar, redis_url: str, redis_namespace: str
) -> None:
    user = User()
    settings = gateway_settings(tmp_path, redis_url=redis_url, redis_namespace=redis_namespace)
    gateway = create_gateway_app(settings, services={"/api/v1/analytics": analytics_app, AIRTABLE: Echo(AIRTABLE)})

    async with app_client(gateway) as client:
        for path in ("/bases", "/bases/app1/tables", "/bases", "/handler-error"):
            await client.get(f"{AIRTABLE}{path}", headers=user.headers)
        await client.get(f"{AIRTABLE}/bases")  # no token: refused (401) and anonymous, not the user's

        async def rolled_up() -> bool:
            usage = await client.get(f"{API}/usage/me", params={"days": 1}, headers=user.headers)
            assert usage.status_code == 200, usage.text
            return bool(usage.json()["totals"]["airtable_calls"] == 4)

        await eventually(rolled_up)
        totals = (await client.get(f"{API}/usage/me", headers=user.headers)).json()["totals"]

    assert totals["errors"] == 1  # the upstream's 500
    assert totals["api_calls"] >= 5  # the four Airtable calls and the usage reads themselves
    stream = redis_sync.Redis.from_url(redis_url)
    assert stream.xlen(f"{redis_namespace}:usage") >= 1
    pending = stream.xpending(f"{redis_namespace}:usage", "analytics")
    stream.close()
    assert pending["pending"] == 0  # every message acknowledged once committed


async def test_usage_flows_again_by_itself_after_redis_restarts_empty(
    tmp_path: Path, make_settings: SettingsFactory, private_redis: PrivateRedis
) -> None:
    """Redis killed and started again empty: the analytics consumer creates its group again and the
    requests made after the restart are counted, with no restart of any service."""
    user = User()
    analytics = create_analytics_app(make_settings(redis_url=private_redis.url, redis_namespace="restart"))
    gateway = create_gateway_app(
        gateway_settings(tmp_path, redis_url=private_redis.url, redis_namespace="restart"),
        services={"/api/v1/analytics": analytics, AIRTABLE: Echo(AIRTABLE)},
    )
    async with app_client(gateway) as client:

        async def airtable_calls() -> int:
            usage = await client.get(f"{API}/usage/me", params={"days": 1}, headers=user.headers)
            return int(usage.json()["totals"]["airtable_calls"]) if usage.status_code == 200 else -1

        await client.get(f"{AIRTABLE}/bases", headers=user.headers)
        await eventually(lambda: _equals(airtable_calls, 1))

        private_redis.kill()
        private_redis.start()  # empty: the stream and the analytics group are gone
        for _ in range(3):
            assert (await client.get(f"{AIRTABLE}/bases", headers=user.headers)).status_code == 200

        await eventually(lambda: _equals(airtable_calls, 4), within=WAIT_SECONDS)


async def _equals(read: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await read() == expected


@pytest.fixture
def embedded_environ(tmp_path: Path) -> dict[str, str]:
    environ = {"DATA_DIR": str(tmp_path), "JWT_SECRET": JWT_SECRET}
    from auth_service.config import AuthSettings

    for package, settings_cls in (("analytics_service", AnalyticsSettings), ("auth_service", AuthSettings)):
        migrations.upgrade(load_settings(settings_cls, environ), package)
    return environ


async def test_the_embedded_platform_rolls_usage_up_in_process(
    tmp_path: Path, embedded_environ: dict[str, str]
) -> None:
    user = User()
    app = create_embedded_app(gateway_settings(tmp_path, redis_url=""), environ=embedded_environ)

    async with app_client(app) as client:
        for _ in range(3):
            response = await client.post(f"{API}/events", json={"event_type": "page_view"}, headers=user.headers)
            assert response.status_code == 202, response.text

        async def rolled_up() -> bool:
            usage = (await client.get(f"{API}/usage/me", headers=user.headers)).json()
            return bool(usage["totals"]["api_calls"] >= 3)

        await eventually(rolled_up)


async def test_with_redis_gone_requests_still_succeed_and_dropped_records_are_counted(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    url = private_redis.url
    user = User()
    echo = Echo(AIRTABLE)
    gateway = create_gateway_app(
        gateway_settings(tmp_path, redis_url=url, redis_namespace="usage-outage"), services={AIRTABLE: echo}
    )

    async with app_client(gateway) as client:
        assert (await client.get(f"{AIRTABLE}/bases", headers=user.headers)).status_code == 200

        async def published() -> bool:
            return bool(redis_sync.Redis.from_url(url).xlen("usage-outage:usage") == 1)

        await eventually(published)
        dropped_before = sample((await client.get("/metrics")).text, "pyairtable_gateway_usage_dropped_total")

        private_redis.kill()
        for _ in range(20):  # the 10 s guard only turns a hang on the dead Redis into a failure
            response = await asyncio.wait_for(client.get(f"{AIRTABLE}/bases", headers=user.headers), 10)
            assert response.status_code == 200, response.text

        async def dropped() -> bool:
            text = (await client.get("/metrics")).text
            return sample(text, "pyairtable_gateway_usage_dropped_total") >= dropped_before + 20

        await eventually(dropped)
    assert len(echo.seen) == 21


class StuckPublisher:
    """A sink that never answers (a hung Redis)."""

    async def publish(self, records: Any) -> None:
        await asyncio.sleep(3600)


async def test_a_full_buffer_drops_and_a_hung_sink_times_out_without_blocking_record() -> None:
    from gateway.usage import DROPPED, UsageEmitter

    emitter = UsageEmitter(StuckPublisher(), capacity=3, flush_seconds=3600, timeout=0.05)
    scope: Any = {"headers": [(b"content-length", b"12")]}
    before = DROPPED._value.get()
    for _ in range(5):  # record() is synchronous: it cannot wait on the sink
        emitter.record("u", "POST", AIRTABLE, 201, 0.01, "rid", scope)
    assert DROPPED._value.get() == before + 2  # the buffer holds 3
    assert [record.bytes_in for record in emitter.buffer] == [12, 12, 12]

    await emitter.flush()  # the sink hangs: the flush gives up after its timeout, records counted
    assert DROPPED._value.get() == before + 5
    assert not emitter.buffer


class CancellationSwallowingPublisher:
    """A sink that, like redis-py on Python 3.11 at times, loses a cancellation that reaches it."""

    def __init__(self) -> None:
        self.publishing = asyncio.Event()

    async def publish(self, records: Any) -> None:
        self.publishing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


async def test_the_emitter_shuts_down_even_when_its_sink_swallows_cancellation() -> None:
    from gateway.usage import UsageEmitter

    sink = CancellationSwallowingPublisher()
    emitter = UsageEmitter(sink, flush_seconds=0.01, timeout=0.05)
    emitter.start()
    emitter.record("u", "GET", AIRTABLE, 200, 0.01, "rid", {"headers": []})
    await asyncio.wait_for(sink.publishing.wait(), 10)

    # close() returns although the sink never gives the cancellation back (the flush loop stops on
    # its flag); the 30 s guard only turns a hang into a failure.
    await asyncio.wait_for(emitter.close(), 30)
