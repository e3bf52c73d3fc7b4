"""Test infrastructure: real PostgreSQL and Redis, one fresh database per service per run.

Connection settings come from TEST_POSTGRES_URL and TEST_REDIS_URL (local servers by default).
Where they do not answer and Docker is available, testcontainers starts them; otherwise the run
stops with a message saying what to start.
"""

import asyncio
import contextlib
import inspect
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import psycopg
import pytest
import redis as redis_sync
from litestar import Litestar
from psycopg import sql

from shared import migrations
from shared.keys import hs256_kid
from shared.registry import SERVICES
from shared.settings import ServiceSettings, load_settings
from tests import private_servers
from tests.private_servers import PrivateRedis

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# "r" marks a run that holds its run lock (below) while it lives: its leftovers are recognised.
RUN_ID = "r" + uuid.uuid4().hex[:9]
# Databases (``<service>_test_<run>_<n>``) and Redis keys (``test-<run>-...``) of a run, by run id.
RUN_DATABASE = re.compile(r"^[a-z_]+_test_(r[0-9a-f]{9})_[0-9]+$")
RUN_KEY = re.compile(rb"^test-(r[0-9a-f]{9})-")
RUN_LOCK_CLASS = 0x7079  # the first key of the runs' PostgreSQL advisory locks
# "Within 1 s" in an issue: a generous bound for a busy machine, never a timing assertion.
WAIT_SECONDS = 10.0
# How long the services under test wait for a PostgreSQL connection (production: 1 s). On a machine
# running two suites a connect can take longer, and the connect gate would then answer 503 for a
# moment; tests of something else wait this long, and the fault tests keep the production bound.
LOADED_DB_CONNECT_SECONDS = 10.0
# Likewise for a statement (production: 1.5 s, PostgreSQL's statement_timeout, also the Airtable
# gateway's bound on a grant or token lookup): 25 requests at once from each of two suites can
# queue one past it.
LOADED_DB_STATEMENT_TIMEOUT_MS = 10_000
# And for Redis (production: 50 ms, then the per-process fallbacks): a reply held up by a busy event
# loop, a long garbage collection or the other test worker must not send a test's counts, caches or
# revocations to the per-process stand-ins (that would make it a test of something else); the tests
# of a slow or hung Redis set the production bound themselves or use a private redis-server.
LOADED_REDIS_TIMEOUT_SECONDS = 5.0
# Both database bounds, as the services' environment variables.
LOADED_DATABASE_ENVIRON = {
    "DB_CONNECT_TIMEOUT_SECONDS": str(LOADED_DB_CONNECT_SECONDS),
    "DB_STATEMENT_TIMEOUT_MS": str(LOADED_DB_STATEMENT_TIMEOUT_MS),
}


def _postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis_sync.Redis.from_url(url, socket_timeout=3).ping())
    except redis_sync.RedisError:
        return False


def _docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A libpq URL of a PostgreSQL server the tests may create databases on."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    if _postgres_answers(url):
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    pytest.exit(
        f"PostgreSQL does not answer at {url}. Start it (for example "
        "`pg_ctlcluster --skip-systemctl-redirect 15 main start`) or set TEST_POSTGRES_URL.",
        returncode=3,
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if _redis_answers(url):
        yield url
        return
    if _docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        return
    pytest.exit(
        f"Redis does not answer at {url}. Start it (for example `redis-server --daemonize yes`) or set TEST_REDIS_URL.",
        returncode=3,
    )


class DatabaseFactory:
    """Creates uniquely named databases and drops them all at the end of the run."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def create(self, prefix: str) -> str:
        name = f"{prefix}_test_{RUN_ID}_{len(self.created)}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return self.url_for(name)

    def url_for(self, name: str) -> str:
        base, _, _ = self.server_url.rpartition("/")
        return f"{base}/{name}"

    def drop_all(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _run_lock_key(run_id: str) -> int:
    return int(run_id[1:9], 16) - 2**31  # an int4


@pytest.fixture(scope="session", autouse=True)
def run_lock(postgres_url: str, redis_url: str) -> Iterator[None]:
    """Holds this run's advisory lock while it lives, so another run can tell whether the run that
    left databases and Redis keys behind is still going (an aborted one's are dropped at start)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (RUN_LOCK_CLASS, _run_lock_key(RUN_ID)))
        _drop_leftovers_of_ended_runs(conn, postgres_url, redis_url)
        yield


def _run_has_ended(conn: psycopg.Connection[Any], run_id: str) -> bool:
    key = (RUN_LOCK_CLASS, _run_lock_key(run_id))
    ended = bool(conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()[0])  # type: ignore[index]
    if ended:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
    return ended


def _drop_leftovers_of_ended_runs(conn: psycopg.Connection[Any], postgres_url: str, redis_url: str) -> None:
    ended: dict[str, bool] = {}

    def of_an_ended_run(run_id: str) -> bool:
        if run_id not in ended:
            ended[run_id] = run_id != RUN_ID and _run_has_ended(conn, run_id)
        return ended[run_id]

    for (name,) in conn.execute("SELECT datname FROM pg_database").fetchall():
        if (match := RUN_DATABASE.match(name)) and of_an_ended_run(match[1]):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    client = redis_sync.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match="test-r*", count=1000):
            if (match := RUN_KEY.match(key)) and of_an_ended_run(match[1].decode()):
                client.delete(key)
    finally:
        client.close()
    _SERVERS.update(postgres=postgres_url, redis=redis_url)


@pytest.fixture(scope="session")
def databases(postgres_url: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(postgres_url)
    yield factory
    factory.drop_all()


_SERVERS: dict[str, str] = {}  # the servers this run used, for the check when it ends


def _leftovers() -> list[str]:
    """This run's databases and Redis keys that still exist."""
    with psycopg.connect(_SERVERS["postgres"], autocommit=True) as conn:
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database")]
    client = redis_sync.Redis.from_url(_SERVERS["redis"])
    try:
        keys = [key.decode(errors="replace") for key in client.scan_iter(match=f"test-{RUN_ID}-*", count=1000)]
    finally:
        client.close()
    return [name for name in names if (match := RUN_DATABASE.match(name)) and match[1] == RUN_ID] + sorted(keys)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that leaves databases or Redis keys of its own behind fails (after every fixture ended)."""
    if not _SERVERS:
        return
    left = _leftovers()
    if left:
        shown = ", ".join(left[:20]) + (f" and {len(left) - 20} more" if len(left) > 20 else "")
        print(f"\nThe run left databases or Redis keys of its own behind: {shown}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    namespace = f"test-{RUN_ID}-{uuid.uuid4().hex[:8]}"
    yield namespace
    client = redis_sync.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A ``redis-server`` of the test's own, which it may kill, hang and restart (empty)."""
    with private_servers.private_redis() as server:
        yield server


@contextlib.asynccontextmanager
async def app_client(app: Litestar, client_ip: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan and an HTTP client, in the test's own event loop.

    (Litestar's AsyncTestClient runs the app on a second loop in another thread, so a test could
    not use app.state's database and Redis connections.) The lifespan runs in a task of its own
    because pytest-asyncio may finish a fixture in a different task than it started it.
    """
    started, stopping = asyncio.Event(), asyncio.Event()

    async def run_lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stopping.wait()

    lifespan = asyncio.create_task(run_lifespan())
    await asyncio.wait([lifespan, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if lifespan.done():
        lifespan.result()  # start-up failed: raise its error
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        stopping.set()
        await lifespan


def access_claims(**changes: Any) -> dict[str, Any]:
    """Valid access-token claims for a made-up user, as the auth service issues them;
    a change to ``None`` removes that claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": "pyairtable-auth",
        "aud": "pyairtable-api",
        "sub": str(uuid.uuid4()),
        "email": "ada@example.com",
        "roles": ["user"],
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    return changed(values, changes)


def changed(values: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with ``changes`` made: a change to ``None`` removes that key."""
    result = dict(values)
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def signed_access_token(secret: str, **claims: Any) -> str:
    """An access token over ``access_claims(**claims)``, signed with ``secret`` as the auth service
    signs them (HS256, ``typ`` at+jwt, the secret's ``kid``); minted when called, never at import."""
    headers = {"typ": "at+jwt", "kid": hs256_kid(secret)}
    return jwt.encode(access_claims(**claims), secret, algorithm="HS256", headers=headers)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def migrated_database(databases: "DatabaseFactory", settings: type[ServiceSettings], package: str) -> str:
    """A new database of this run with every migration of ``package`` applied (a session's worth:
    each test empties it with :func:`truncate` after use)."""
    url = databases.create(f"pyairtable_{package.split('_')[0]}")
    migrations.upgrade(settings(database_url=url), package)
    return url


def migrated_embedded_environ(databases: DatabaseFactory, data_dir: Path) -> dict[str, str]:
    """An embedded platform's environment with auth and users on new PostgreSQL databases of this
    run, migrated (the other services on SQLite in ``data_dir``)."""
    environ = {"DATA_DIR": str(data_dir), **LOADED_DATABASE_ENVIRON}
    on_postgres = [entry for entry in SERVICES if entry.package in ("auth_service", "user_service")]
    for entry in on_postgres:
        environ[f"{entry.env_prefix}_DATABASE_URL"] = databases.create(entry.database)
    for entry in on_postgres:
        migrations.upgrade(load_settings(entry.settings(), environ), entry.package)
    return environ


def truncate(database_url: str, tables: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {tables} CASCADE")


def database_fixtures(name: str, settings: type[ServiceSettings], package: str, tables: str) -> tuple[Any, Any]:
    """A service's two database fixtures: ``<name>_database``, its database migrated once a session
    (:func:`migrated_database`), and ``clean_<name>_database``, the same emptied of ``tables``
    after each test that used it (:func:`truncate`)."""

    @pytest.fixture(scope="session", name=f"{name}_database")
    def database(databases: DatabaseFactory) -> str:
        return migrated_database(databases, settings, package)

    @pytest.fixture(name=f"clean_{name}_database")
    def clean_database(request: pytest.FixtureRequest) -> Iterator[str]:
        database_url: str = request.getfixturevalue(f"{name}_database")
        yield database_url
        truncate(database_url, tables)

    return database, clean_database


@pytest.fixture
def service_settings(redis_url: str, redis_namespace: str, tmp_path: Path) -> dict[str, Any]:
    """The settings every app under test shares: the test's Redis namespace and data directory, and
    Redis calls, database connects and statements as patient as a loaded machine needs (``LOADED_*``)."""
    return {
        "redis_url": redis_url,
        "redis_namespace": redis_namespace,
        "redis_timeout_seconds": LOADED_REDIS_TIMEOUT_SECONDS,
        "data_dir": str(tmp_path),
        "db_connect_timeout_seconds": LOADED_DB_CONNECT_SECONDS,
        "db_statement_timeout_ms": LOADED_DB_STATEMENT_TIMEOUT_MS,
    }


Settings = TypeVar("Settings", bound=ServiceSettings)


def settings_factory(settings: type[Settings], **defaults: Any) -> Callable[..., Settings]:
    """Builds validated ``settings`` from ``defaults`` and what a test overrides."""

    def build(**overrides: Any) -> Settings:
        built = settings(**{**defaults, **overrides})
        built.validate()
        return built

    return build


@pytest.fixture
def clock() -> Clock:
    return Clock()


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is a problem+json of ``status`` (and ``code``), without a traceback: its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    assert "Traceback" not in response.text
    return body


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy: a bound on waiting for
    something eventually consistent (an event applied, a profile created), never a timing test."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)
