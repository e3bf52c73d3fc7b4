"""What a Redis or PostgreSQL fault costs one service's requests: latencies measured, not asserted.

    python -m bench.service_dependency_faults [--requests 40]

The auth service in process (its lifespan, an httpx client over ASGI) on a private ``redis-server``
and a private PostgreSQL cluster (tests/private_servers.py; the machine's shared servers are never
touched). ``GET /api/v1/auth/me`` with a token — one revocation read in Redis, one row read in
PostgreSQL — is timed:

* with both up (baseline); with Redis hung (SIGSTOP), then killed; and how long after Redis is
  started again (empty) the service reads revocations from it again;
* with the postmaster hung (SIGSTOP) and the pool's connections dropped (a new connection is
  needed), and with PostgreSQL stopped (``pg_ctl stop -m immediate``): the time to the 503; and
  how long after PostgreSQL is back the first 200 comes.
"""

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import psycopg

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared import migrations
from tests.conftest import app_client
from tests.private_servers import PrivatePostgres, PrivateRedis

PASSWORD = "a long enough passphrase"
FAST_ARGON2 = {"argon2_time_cost": 2, "argon2_memory_kib": 19456, "argon2_parallelism": 1}


async def timed(call: Callable[[], Awaitable[httpx.Response]]) -> tuple[float, int]:
    started = time.perf_counter()
    response = await call()
    return (time.perf_counter() - started) * 1000, response.status_code


def summary(name: str, samples: list[tuple[float, int]]) -> None:
    millis = sorted(ms for ms, _ in samples)
    statuses = sorted({status for _, status in samples})
    p95 = millis[max(0, round(len(millis) * 0.95) - 1)]
    print(
        f"{name:<44} n={len(millis):<3} median {statistics.median(millis):7.1f} ms"
        f"  p95 {p95:7.1f} ms  max {millis[-1]:7.1f} ms  statuses {statuses}"
    )


async def until(check: Callable[[], Awaitable[bool]], limit: float = 30.0) -> float:
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > limit:
            raise RuntimeError("gave up")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def run(requests: int, settings: AuthSettings, redis: PrivateRedis, postgres: PrivatePostgres) -> None:
    async with app_client(create_app(settings)) as client:
        body = {"email": "bench@example.com", "password": PASSWORD}
        tokens = (await client.post("/api/v1/auth/register", json=body)).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}

        def me() -> Awaitable[httpx.Response]:
            return client.get("/api/v1/auth/me", headers=headers)

        async def series() -> list[tuple[float, int]]:
            return [await timed(me) for _ in range(requests)]

        summary("baseline (Redis and PostgreSQL up)", await series())
        redis.hang()
        hung = await series()
        summary("Redis hung: first 5 requests", hung[:5])
        summary("Redis hung: the rest", hung[5:])
        redis.resume()
        redis.kill()
        summary("Redis killed", await series())
        redis.start()
        store = client._transport.app.state.store  # type: ignore[attr-defined]

        async def shared_again() -> bool:
            await me()
            return not store.shared.breaker.is_open

        print(f"{'Redis restarted: revocations read again after':<44} {await until(shared_again):.2f} s")

        def drop_connections() -> None:
            with psycopg.connect(postgres.url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = 'bench_faults' AND pid <> pg_backend_pid()"
                )

        async def served() -> bool:
            return (await me()).status_code == 200

        for fault in ("hung postmaster, new connection", "stopped (immediate)"):
            drop_connections()
            if fault.startswith("hung"):
                postgres.hang()
            else:
                postgres.stop()
            summary(f"PostgreSQL {fault}", [await timed(me) for _ in range(5)])
            if fault.startswith("hung"):
                postgres.resume()
            else:
                postgres.start()
            print(f"{'  back: first 200 after':<44} {await until(served):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    requests = parser.parse_args().requests
    logging.disable(logging.WARNING)  # the services' warnings about the faults this run makes
    redis, postgres = PrivateRedis().start(), PrivatePostgres().start()
    try:
        settings = AuthSettings(
            database_url=postgres.create_database("bench_faults"),
            redis_url=redis.url,
            redis_namespace=f"bench-{uuid.uuid4().hex[:8]}",
            jwt_secret="bench-dependency-faults-" + "x" * 32,
            data_dir=tempfile.mkdtemp(prefix="pyairtable-bench-"),
            **FAST_ARGON2,
        )
        migrations.upgrade(settings, "auth_service")  # alembic runs its own event loop: before ours
        asyncio.run(run(requests, settings, redis, postgres))
    finally:
        redis.stop()
        postgres.destroy()


if __name__ == "__main__":
    main()
