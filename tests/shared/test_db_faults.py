"""PostgreSQL faults answer 503 + Retry-After within about 2 s, and the service recovers by itself.

A private cluster (tests/private_servers.py) is stopped and hung (SIGSTOP on the postmaster);
the machine's shared PostgreSQL is never touched. Bounds on waiting are generous client
timeouts that prove "no hang", never performance claims.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared import migrations
from shared.db import create_engine, ping
from shared.settings import ServiceSettings
from tests import private_servers
from tests.auth_service.conftest import FAST_ARGON2, JWT_SECRET, PASSWORD, bearer, register
from tests.conftest import DatabaseFactory, app_client, eventually
from tests.private_servers import PrivatePostgres

# Below libpq's 2 s connect_timeout floor: only the kernel's own bound can answer in time.
UNDER_LIBPQ_FLOOR_SECONDS = 1.5
CLIENT_BOUND_SECONDS = 10.0


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with private_servers.private_postgres() as server:
        yield server


@pytest.fixture
def auth_on_private_postgres(private_postgres: PrivatePostgres, tmp_path: Path) -> Iterator[Litestar]:
    if not private_postgres.answers():
        private_postgres.start()
    name = f"faults_{uuid.uuid4().hex[:8]}"
    settings = AuthSettings(
        database_url=private_postgres.create_database(name),
        jwt_secret=JWT_SECRET,
        data_dir=str(tmp_path),
        **FAST_ARGON2,
    )
    migrations.upgrade(settings, "auth_service")
    yield create_app(settings)


@pytest.fixture
async def client(auth_on_private_postgres: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(auth_on_private_postgres) as test_client:
        yield test_client


def login(client: httpx.AsyncClient) -> "asyncio.Future[httpx.Response]":
    request = client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    return asyncio.ensure_future(asyncio.wait_for(request, CLIENT_BOUND_SECONDS))


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "database-unavailable"
    assert int(response.headers["retry-after"]) > 0
    assert "127.0.0.1" not in response.text and "postgres" not in response.text


def drop_pooled_connections(server: PrivatePostgres) -> None:
    """The pool's connections end (as after a failover): the next request needs a new one."""
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname LIKE 'faults_%' AND pid <> pg_backend_pid()"
        )


async def test_a_stopped_postgres_is_a_503_with_retry_after_then_served_again_without_restart(
    client: httpx.AsyncClient, private_postgres: PrivatePostgres
) -> None:
    await register(client)
    private_postgres.stop()
    try:
        assert_database_unavailable(await login(client))
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 503
    finally:
        private_postgres.start()

    async def served() -> bool:
        return (await login(client)).status_code == 200

    await eventually(served, "login to work again once PostgreSQL is back")


async def test_a_read_outside_the_session_is_a_503_while_postgres_is_stopped_then_served_again(
    client: httpx.AsyncClient, private_postgres: PrivatePostgres
) -> None:
    """``GET /auth/me`` reads through DirectStatements, on the pool's psycopg connection: its errors
    answer as the session's do, and the pool replaces the connections the stop ended."""
    headers = bearer(await register(client))
    assert (await client.get("/api/v1/auth/me", headers=headers)).status_code == 200
    private_postgres.stop()
    try:
        assert_database_unavailable(await asyncio.wait_for(client.get("/api/v1/auth/me", headers=headers), 10))
    finally:
        private_postgres.start()

    async def served() -> bool:
        return (await client.get("/api/v1/auth/me", headers=headers)).status_code == 200

    await eventually(served, "GET /auth/me to work again once PostgreSQL is back")


async def test_a_hung_postmaster_is_a_503_when_a_new_connection_is_needed(
    client: httpx.AsyncClient, private_postgres: PrivatePostgres
) -> None:
    await register(client)
    drop_pooled_connections(private_postgres)
    private_postgres.hang()
    try:
        assert_database_unavailable(await login(client))
        assert (await client.get("/health")).status_code == 200
    finally:
        private_postgres.resume()

    async def database_ready() -> bool:
        # /ready, not login: every login attempt counts against the per-IP throttle.
        return (await client.get("/ready")).status_code == 200

    await eventually(database_ready, "the database to be ready again once PostgreSQL answers")
    assert (await login(client)).status_code == 200


async def test_the_connect_is_bounded_below_libpqs_two_second_floor(private_postgres: PrivatePostgres) -> None:
    settings = ServiceSettings(database_url=private_postgres.url, db_connect_timeout_seconds=0.3)
    engine = create_engine(settings)
    private_postgres.hang()
    try:
        with pytest.raises(OperationalError):  # not the client bound's TimeoutError
            await asyncio.wait_for(ping(engine), UNDER_LIBPQ_FLOOR_SECONDS)
    finally:
        private_postgres.resume()
        await engine.dispose()


async def test_a_statement_past_the_statement_timeout_is_cancelled(databases: DatabaseFactory) -> None:
    settings = ServiceSettings(database_url=databases.create("pyairtable_statements"), db_statement_timeout_ms=100)
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            with pytest.raises(OperationalError, match="statement timeout"):
                await asyncio.wait_for(connection.execute(text("SELECT pg_sleep(5)")), CLIENT_BOUND_SECONDS)
    finally:
        await engine.dispose()


async def test_a_pooled_connection_whose_backend_was_terminated_is_replaced_not_used(
    databases: DatabaseFactory,
) -> None:
    """After a failover or a restart the pool still holds the old connections: the next request
    gets a new one (no round trip per checkout finds this out: the dropped socket does)."""
    url = databases.create("pyairtable_dropped")
    engine = create_engine(ServiceSettings(database_url=url))
    try:
        async with engine.connect() as connection:
            backend = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", [backend])  # waits until it has exited
        async with engine.connect() as connection:
            replacement = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert replacement != backend
    finally:
        await engine.dispose()
