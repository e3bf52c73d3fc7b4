"""Dependency faults with real processes: auth, users and analytics on a private ``redis-server``,
the user service on a private PostgreSQL cluster; both are hung, killed and started again.

Redis is an accelerator: while it is down the platform's own work goes on (registration, sign-in,
refresh, profiles, analytics events), revocation is unknowable and said to be, and once it returns
revocations are enforced again — those that waited for it included. A PostgreSQL fault is a
503 + Retry-After on that service's routes only, and they are served again without a restart.

Deadlines are generous client bounds that prove "no hang", never performance claims.
"""

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import DatabaseFactory, assert_problem
from tests.e2e.processes import (
    FAST_ARGON2,
    Processes,
    Service,
    metric,
    start_service,
    wait_for,
)
from tests.private_servers import PrivatePostgres, PrivateRedis

CLIENT_BOUND_SECONDS = 10.0
WAIT_SECONDS = 20.0
eventually = functools.partial(wait_for, timeout=WAIT_SECONDS)
PASSWORD = "a long enough passphrase"
# Production's bounds, for the service whose PostgreSQL the tests hang or stop (the others keep
# the patience a loaded machine needs: tests/e2e/processes.py environment()).
PRODUCTION_DATABASE_BOUNDS = {"DB_CONNECT_TIMEOUT_SECONDS": "1.0", "DB_STATEMENT_TIMEOUT_MS": "1500"}


class Platform:
    def __init__(self, auth: Service, users: Service, analytics: Service, redis: PrivateRedis, pg: PrivatePostgres):
        self.auth, self.users, self.analytics = auth, users, analytics
        self.redis, self.postgres = redis, pg
        self.client = httpx.Client(timeout=CLIENT_BOUND_SECONDS)

    def register(self, email: str) -> dict[str, Any]:
        response = self.client.post(
            f"{self.auth.url}/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def login(self, email: str) -> httpx.Response:
        return self.client.post(f"{self.auth.url}/api/v1/auth/login", json={"email": email, "password": PASSWORD})

    def refresh(self, tokens: dict[str, Any]) -> httpx.Response:
        return self.client.post(f"{self.auth.url}/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})

    def logout(self, tokens: dict[str, Any]) -> httpx.Response:
        return self.client.post(f"{self.auth.url}/api/v1/auth/logout", headers=bearer(tokens))

    def profile(self, tokens: dict[str, Any]) -> httpx.Response:
        return self.client.get(f"{self.users.url}/api/v1/users/me", headers=bearer(tokens))

    def update_profile(self, tokens: dict[str, Any], display_name: str) -> httpx.Response:
        return self.client.patch(
            f"{self.users.url}/api/v1/users/me", json={"display_name": display_name}, headers=bearer(tokens)
        )

    def event(self, tokens: dict[str, Any]) -> httpx.Response:
        return self.client.post(
            f"{self.analytics.url}/api/v1/analytics/events", json={"event_type": "page_view"}, headers=bearer(tokens)
        )

    def ready(self, service: Service) -> httpx.Response:
        return self.client.get(f"{service.url}/ready")


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def start_faultable(
    processes: Processes,
    package: str,
    prefix: str,
    data_dir: Path,
    database_url: str,
    redis: PrivateRedis,
    *,
    faulted_database: bool = False,
) -> Service:
    """A service, migrated then served, on its database and the private Redis (one namespace); on
    the private PostgreSQL the tests hang or stop (``faulted_database``), with production's
    bounds on a connect and a statement."""
    return start_service(
        processes,
        package,
        package,
        prefix,
        data_dir,
        database_url,
        REDIS_URL=redis.url,
        REDIS_NAMESPACE="faults",
        OUTBOX_POLL_SECONDS="0.2",
        **FAST_ARGON2,
        **(PRODUCTION_DATABASE_BOUNDS if faulted_database else {}),
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, databases: DatabaseFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("faults")
    redis = PrivateRedis().start()
    postgres = PrivatePostgres().start()
    processes = Processes(data_dir)
    try:
        users_database = postgres.create_database("users_faults")
        started = [
            start_faultable(processes, "auth_service", "AUTH", data_dir, databases.create("auth_faults"), redis),
            start_faultable(processes, "user_service", "USERS", data_dir, users_database, redis, faulted_database=True),
            start_faultable(
                processes, "analytics_service", "ANALYTICS", data_dir, databases.create("an_faults"), redis
            ),
        ]
        for service in started:
            service.wait_healthy(60)
        yield Platform(*started, redis, postgres)
    finally:
        processes.stop_all()
        for service in processes.started:  # shown by pytest when a test failed
            print(f"--- {service.name} (exit {service.process.returncode}) ---\n{service.log_tail()[-2000:]}")
        redis.stop()
        postgres.destroy()


def test_with_redis_hung_then_killed_the_services_keep_working_and_enforce_revocations_once_it_returns(
    platform: Platform,
) -> None:
    before = platform.register("before@example.com")
    assert platform.profile(before).status_code == 200

    platform.redis.hang()
    try:  # every answer comes within the bound: Redis costs a 50 ms timeout, then its breaker opens
        assert platform.login("before@example.com").status_code == 200
        assert platform.profile(before).status_code == 200
        assert platform.event(before).status_code == 202
    finally:
        platform.redis.resume()

    platform.redis.kill()
    during = platform.register("during@example.com")
    assert platform.login("before@example.com").status_code == 200
    refreshed = platform.refresh(during)
    assert refreshed.status_code == 200, refreshed.text
    tokens = refreshed.json()
    assert platform.profile(tokens).status_code == 200
    updated = platform.update_profile(tokens, "Written while Redis was down")
    assert updated.status_code == 200, updated.text
    assert updated.json()["display_name"] == "Written while Redis was down"
    assert platform.event(tokens).status_code == 202
    for service in (platform.auth, platform.users, platform.analytics):
        ready = platform.ready(service)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["redis"]["status"] == "degraded"
    assert metric(platform.users.url, "pyairtable_revocation_unknown_total") >= 1

    # Signing out cannot revoke the access token everywhere now: the session ends, and it says so.
    problem = assert_problem(platform.logout(tokens), 503)
    assert problem["code"] == "revocation-incomplete"
    assert platform.refresh(tokens).status_code == 401
    assert platform.profile(tokens).status_code == 200  # the documented policy: accepted by signature

    platform.redis.start()  # empty, as after a crash

    def revocation_enforced() -> bool:
        platform.ready(platform.auth)  # readiness probes write the revocation that waited
        return platform.profile(tokens).status_code == 401

    eventually(revocation_enforced, "the waiting revocation to be enforced by the user service")
    fresh = platform.login("before@example.com").json()
    assert platform.logout(fresh).status_code == 204
    assert_problem(platform.profile(fresh), 401)
    for service in (platform.auth, platform.users, platform.analytics):
        assert platform.ready(service).json()["checks"]["redis"]["status"] == "ok"


def drop_pooled_connections(postgres: PrivatePostgres) -> None:
    """The user service's pooled connections end: its next request needs a new one."""
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = 'users_faults' AND pid <> pg_backend_pid()"
        )


def assert_database_unavailable(response: httpx.Response) -> None:
    problem = assert_problem(response, 503)
    assert problem["code"] == "database-unavailable"
    assert int(response.headers["retry-after"]) > 0


def test_postgres_hung_or_stopped_is_a_503_on_that_service_only_and_it_recovers_without_restart(
    platform: Platform,
) -> None:
    tokens = platform.register("pg@example.com")
    assert platform.profile(tokens).status_code == 200

    drop_pooled_connections(platform.postgres)
    platform.postgres.hang()
    try:
        assert_database_unavailable(platform.profile(tokens))
        assert platform.login("pg@example.com").status_code == 200  # other services: untouched
        assert platform.event(tokens).status_code == 202
        assert platform.client.get(f"{platform.users.url}/health").status_code == 200
    finally:
        platform.postgres.resume()
    eventually(lambda: platform.profile(tokens).status_code == 200, "profiles to be served again")

    platform.postgres.stop()
    try:
        assert_database_unavailable(platform.update_profile(tokens, "Not while the database is down"))
        assert platform.login("pg@example.com").status_code == 200
        assert platform.event(tokens).status_code == 202
    finally:
        platform.postgres.start()
    eventually(lambda: platform.profile(tokens).status_code == 200, "profiles to be served again")
    assert platform.profile(tokens).json()["display_name"] != "Not while the database is down"
