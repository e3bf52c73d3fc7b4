"""API keys across gateway replicas: a real auth-service process and two gateway processes in
front of an echo upstream. A revoked key stops working on both: on the replica that reads the
auth service's Redis through the revocation mark, on the replica without Redis through its key
cache (API_KEY_CACHE_SECONDS: 4 s, at most 5). No timing assertion: ``eventually`` bounds the wait."""

import time
from pathlib import Path

import httpx

from tests.conftest import WAIT_SECONDS, DatabaseFactory
from tests.e2e.processes import Processes, assert_problem, start_auth_service

AUTH = "/api/v1/auth"
USERS = "/api/v1/users"
POLLING = {"RATE_LIMIT_PER_MINUTE": "1000", "RATE_LIMIT_BURST": "500"}  # a key polled until refused
CREDENTIALS = {"email": "ada@example.com", "password": "a long enough passphrase"}


def eventually_refused(gateway_url: str, key: str) -> float:
    """Seconds until the gateway refused the key (reported, never asserted)."""
    started = time.monotonic()
    deadline = started + WAIT_SECONDS
    while True:
        answer = httpx.get(f"{gateway_url}{USERS}/me", headers={"X-API-Key": key}, timeout=5)
        if answer.status_code == 401:
            assert_problem(answer, 401)
            return time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert time.monotonic() < deadline, f"{gateway_url} still accepts the revoked key"
        time.sleep(0.1)


def test_a_revoked_key_is_refused_by_every_gateway_replica(
    tmp_path: Path, processes: Processes, databases: DatabaseFactory, redis_url: str, redis_namespace: str
) -> None:
    auth = start_auth_service(processes, tmp_path, databases.create("auth"), redis_url, redis_namespace)
    echo = processes.upstream("echo")
    with_redis = processes.gateway(
        "gateway-redis",
        tmp_path,
        AUTH_SERVICE_URL=auth.url,
        USER_SERVICE_URL=echo.url,
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=redis_namespace,
        REQUIRE_API_KEY="false",
        **POLLING,
    )
    without_redis = processes.gateway(
        "gateway-no-redis",
        tmp_path,
        AUTH_SERVICE_URL=auth.url,
        USER_SERVICE_URL=echo.url,
        REQUIRE_API_KEY="false",
        **POLLING,
    )
    auth.wait_healthy(60)
    echo.wait_healthy()
    with_redis.wait_healthy()
    without_redis.wait_healthy()

    with httpx.Client(base_url=with_redis.url, timeout=10) as client:
        registered = client.post(f"{AUTH}/register", json=CREDENTIALS)
        assert registered.status_code == 201, registered.text
        owner = {"Authorization": f"Bearer {registered.json()['access_token']}"}
        created = client.post(f"{AUTH}/api-keys", json={"name": "ci", "scopes": ["users:read"]}, headers=owner)
        assert created.status_code == 201, created.text
        key = created.json()["key"]

        for gateway in (with_redis, without_redis):
            accepted = httpx.get(f"{gateway.url}{USERS}/me", headers={"X-API-Key": key}, timeout=10)
            assert accepted.status_code == 200, (gateway.name, accepted.text)

        revoked = client.delete(f"{AUTH}/api-keys/{created.json()['id']}", headers=owner)
        assert revoked.status_code == 204, revoked.text

    waited = {gateway.name: eventually_refused(gateway.url, key) for gateway in (with_redis, without_redis)}
    print(f"revoked key refused after: {waited}")


def test_with_the_auth_service_down_a_known_key_degrades_and_an_unknown_one_is_a_503(
    tmp_path: Path, processes: Processes, databases: DatabaseFactory, redis_url: str, redis_namespace: str
) -> None:
    auth = start_auth_service(processes, tmp_path, databases.create("auth"), redis_url, redis_namespace)
    echo = processes.upstream("echo")
    # Every request asks the auth service again: with it gone, only a kept, unexpired token can serve.
    gateway = processes.gateway(
        "gateway",
        tmp_path,
        AUTH_SERVICE_URL=auth.url,
        USER_SERVICE_URL=echo.url,
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=redis_namespace,
        REQUIRE_API_KEY="false",
        API_KEY_CACHE_SECONDS="0",
    )
    auth.wait_healthy(60)
    echo.wait_healthy()
    gateway.wait_healthy()

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        registered = client.post(f"{AUTH}/register", json=CREDENTIALS)
        assert registered.status_code == 201, registered.text
        owner = {"Authorization": f"Bearer {registered.json()['access_token']}"}
        keys = [
            client.post(f"{AUTH}/api-keys", json={"name": name, "scopes": ["users:read"]}, headers=owner).json()["key"]
            for name in ("used", "never used")
        ]
        assert client.get(f"{USERS}/me", headers={"X-API-Key": keys[0]}).status_code == 200

        processes.stop(auth)

        assert client.get(f"{USERS}/me", headers={"X-API-Key": keys[0]}).status_code == 200
        refused = client.get(f"{USERS}/me", headers={"X-API-Key": keys[1]})
        assert_problem(refused, 503)
        assert client.get(f"{USERS}/me", headers=owner).status_code == 200  # tokens are checked locally
