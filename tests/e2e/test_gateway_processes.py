"""The gateway as a real process in front of real upstream processes, driven over HTTP on loopback.

Each test starts what it needs on free ports (in parallel where it can) and stops all of it when it
ends. Time limits are generous deadlines that prove "no hang", never performance claims.
See shared/RELIABILITY.md, sections C (rate limiting) and D (dependency faults).
"""

import hashlib
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from tests.conftest import LOADED_REDIS_TIMEOUT_SECONDS, assert_problem
from tests.e2e.processes import (
    FAST_ARGON2,
    Processes,
    Service,
    Stack,
    access_token,
    arrivals,
    environment,
    free_port,
    metric,
    wait_for,
)
from tests.e2e.upstreams import blob

CREDENTIALS = {"email": "ada@example.com", "password": "a long enough passphrase"}
GENEROUS = {"RATE_LIMIT_PER_MINUTE": "10000", "RATE_LIMIT_BURST": "10000"}


def bearer(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or access_token()}"}


# 1. Gateway + auth service: sign-in through the gateway, logout revokes at the gateway at once.


def test_sign_in_through_the_gateway_and_logout_revokes_the_token_at_the_gateway(stack: Stack) -> None:
    auth = stack.auth()
    gateway = stack.gateway_in_front({"AUTH_SERVICE_URL": auth})

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        registered = client.post("/api/v1/auth/register", json=CREDENTIALS)
        assert registered.status_code == 201, registered.text
        logged_in = client.post("/api/v1/auth/login", json=CREDENTIALS)
        assert logged_in.status_code == 200, logged_in.text
        token = logged_in.json()["access_token"]

        me = client.get("/api/v1/auth/me", headers={**bearer(token), "X-Request-ID": "e2e-me-request-1"})
        assert me.status_code == 200, me.text
        assert me.json()["email"] == CREDENTIALS["email"]
        assert me.headers["x-request-id"] == "e2e-me-request-1"
        assert "ratelimit" in me.headers

        logout = client.post("/api/v1/auth/logout", headers=bearer(token))
        assert logout.status_code == 204, logout.text
        refused = client.get("/api/v1/auth/me", headers=bearer(token))
        assert_problem(refused, 401)
        assert "www-authenticate" in refused.headers

        # With the auth service gone the gateway still refuses the revoked token itself (401),
        # while the other session's token, not revoked, is let through to a dead upstream (502).
        stack.processes.stop(auth)
        assert_problem(client.get("/api/v1/auth/me", headers=bearer(token)), 401)
        other_session = registered.json()["access_token"]
        assert_problem(client.get("/api/v1/auth/me", headers=bearer(other_session)), 502)


# 2. Headers and bodies through the gateway to an echo upstream.


def test_identity_headers_never_reach_the_upstream_and_bodies_stream_through(
    tmp_path: Path, processes: Processes
) -> None:
    echo = processes.upstream("echo")
    gateway = processes.gateway_in_front(
        tmp_path,
        {"USER_SERVICE_URL": echo},
        MAX_BODY_SIZE="8000000",
        **GENEROUS,
    )
    token = access_token()
    spoofed = [
        ("Authorization", f"Bearer {token}"),
        ("X-Request-ID", "e2e-echo-request-1"),
        ("X-User-ID", "00000000-0000-0000-0000-000000000001"),
        ("X_User_Id", "00000000-0000-0000-0000-000000000001"),
        ("x-user-id", "00000000-0000-0000-0000-000000000002"),
        ("X-User-Roles", "admin"),
        ("X-User-Email", "root@example.com"),
        ("X-Tenant-ID", "someone-else"),
        ("X-Forwarded-User", "root"),
        ("X-Authenticated-Userid", "root"),
        ("X-Auth-Request-User", "root"),
        ("Remote-User", "root"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9"),
        ("X-Real-IP", "203.0.113.9"),
        ("Connection", "close, X-User-ID, X-Hop-Only"),
        ("X-Hop-Only", "hop"),
        ("X-Kept", "kept"),
    ]
    query = "a=1&b=%2F%20x&a=2&empty=&q=caf%C3%A9&p=a+b&s=%3D%26&t=~%7E&u=%5B%5D&flag"

    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        echoed = client.get(f"/api/v1/users/echo/%41b%7Ec?{query}", headers=spoofed)
        assert echoed.status_code == 200, echoed.text
        seen = echoed.json()
        names = [name.replace("_", "-") for name, _ in seen["headers"]]
        headers = dict(seen["headers"])
        leaked = [n for n in names if n.startswith(("x-user", "x-auth", "x-forwarded-user")) or n == "remote-user"]
        assert not leaked, seen["headers"]
        assert "x-tenant-id" not in names and "x-hop-only" not in names and "forwarded" not in names
        assert "x-real-ip" not in names
        assert headers["authorization"] == f"Bearer {token}"
        assert headers["x-request-id"] == "e2e-echo-request-1"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-kept"] == "kept"
        assert seen["query"] == query
        assert seen["raw_path"] == "/api/v1/users/echo/%41b%7Ec"  # the path authorised is the path forwarded
        assert echoed.headers["x-request-id"] == "e2e-echo-request-1"

        # A HEAD answer has a head and no body: it leaves on its own (gateway/transport/serving.py), complete.
        head = client.head("/api/v1/users/echo/x", headers=bearer(token))
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0
        assert client.get("/api/v1/users/echo/x", headers=bearer(token)).status_code == 200

        size = 5 * 1024 * 1024
        big = client.get(f"/api/v1/users/blob?size={size}", headers=bearer(token))
        assert big.status_code == 200
        assert len(big.content) == size
        assert big.content == blob(size)

        payload = os.urandom(500_000)
        uploaded = client.post("/api/v1/users/upload", content=payload, headers=bearer(token)).json()
        assert (uploaded["body_length"], uploaded["body_sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())

        chunks = [payload[i : i + 30_000] for i in range(0, len(payload), 30_000)]
        streamed = client.post("/api/v1/users/upload", content=iter(chunks), headers=bearer(token)).json()
        assert (streamed["body_length"], streamed["body_sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())


# 3. Upstream down: 502 fast, then the breaker answers 503 itself, then recovery.


def test_upstream_down_gives_502_then_the_breaker_503_then_recovers(tmp_path: Path, processes: Processes) -> None:
    down_port = free_port()
    users = processes.upstream("echo", down_port, wait_stdin=True)  # imported, not listening yet
    things = processes.upstream("echo")
    gateway = processes.gateway_with_breaker(tmp_path, down_port, things, reset_seconds="2")
    things.wait_healthy()
    gateway.wait_healthy()

    with httpx.Client(base_url=gateway.url, headers=bearer(), timeout=10) as client:
        for method in ("GET", "POST", "GET"):
            failed = client.request(method, "/api/v1/users/x", json={"n": 1} if method == "POST" else None)
            # Refused, not waited on: waiting out REQUEST_TIMEOUT would be a 504 upstream-timeout.
            assert_problem(failed, 502, "upstream-unavailable")

        tripped = client.get("/api/v1/users/x")
        assert_problem(tripped, 503)
        assert 1 <= int(tripped.headers["retry-after"]) <= 2
        assert_problem(client.post("/api/v1/users/x", json={}), 503)
        assert client.get("/api/v1/things/x").status_code == 200  # the other route is unaffected

        users.release()
        users.wait_healthy(10)
        statuses = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            response = client.get("/api/v1/users/x")
            statuses.append(response.status_code)
            if response.status_code == 200:
                break
            assert_problem(response, 503)
            time.sleep(0.1)
        assert statuses[-1] == 200, statuses
        # Every 503 was the gateway's own answer; the breaker closed on the gateway's own /ready
        # probe (not counted) or on the one request let through (tests/e2e/test_breaker_processes.py).
        assert arrivals(users.url) == 1
        assert all(client.get("/api/v1/users/x").status_code == 200 for _ in range(5))
        assert arrivals(users.url) == 6


# 4. A slow upstream: 504 in time, and what is (not) retried.


def test_slow_upstream_gives_504_in_time_and_nothing_is_retried(tmp_path: Path, processes: Processes) -> None:
    closed_port = free_port()
    slow = processes.upstream("slow", sleep=3.0)
    gateway = processes.gateway(
        "gateway",
        tmp_path,
        EXTRA_ROUTES=f"/api/v1/slow={slow.url},/api/v1/gone=http://127.0.0.1:{closed_port}",
        CONNECT_TIMEOUT="1",
        REQUEST_TIMEOUT="0.5",
        BREAKER_FAILURES="100",
        **GENEROUS,
    )
    slow.wait_healthy()
    gateway.wait_healthy()

    with httpx.Client(base_url=gateway.url, headers=bearer(), timeout=10) as client, ThreadPoolExecutor(2) as pool:
        pending = pool.submit(client.post, "/api/v1/slow/work", json={"charge": 1})
        time.sleep(0.1)
        fast = client.get("/api/v1/slow/fast")  # same upstream, while a slow call is in flight
        assert fast.status_code == 200
        # The upstream answers after 3 s; the gateway's own 504 means it gave up at REQUEST_TIMEOUT.
        assert_problem(pending.result(timeout=10), 504, "upstream-timeout")
        assert arrivals(slow.url) == 2  # the POST once (never retried) and the fast GET

        assert_problem(client.get("/api/v1/slow/work"), 504, "upstream-timeout")
        time.sleep(0.3)
        assert arrivals(slow.url) == 3  # a timed-out GET is not retried either: only connect failures are

        assert_problem(client.get("/api/v1/gone/x"), 502, "upstream-unavailable")  # GET: retried once on connect
        assert_problem(client.post("/api/v1/gone/x", json={}), 502, "upstream-unavailable")


def test_a_stalled_request_body_gets_408_and_the_gateway_serves_on(tmp_path: Path, processes: Processes) -> None:
    """A slow POST over a real socket: part of the body, then nothing. It is cut off after
    CLIENT_BODY_TIMEOUT with a 408 problem while the gateway keeps serving everyone else (the head
    deadline is tested in tests/gateway/test_serving.py)."""
    echo = processes.upstream("echo")
    gateway = processes.gateway_in_front(
        tmp_path,
        {"USER_SERVICE_URL": echo},
        CLIENT_BODY_TIMEOUT="0.5",
        **GENEROUS,
    )
    host, port = gateway.url.removeprefix("http://").split(":")

    def read_all(sock: socket.socket) -> bytes:
        received = b""
        while piece := sock.recv(65536):
            received += piece
        return received

    with socket.create_connection((host, int(port)), timeout=5) as stalled_body:
        stalled_body.sendall(
            b"POST /api/v1/users/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + access_token().encode()
            + b"\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 1000
        )
        answer = read_all(stalled_body)  # the server closes the connection after its answer (or the 5 s guard)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request-timeout"' in answer

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/api/v1/users/echo/x", headers=bearer()).status_code == 200


# 5. Two gateways, one Redis namespace, one limit.


def test_two_gateways_sharing_a_redis_namespace_enforce_one_limit(stack: Stack) -> None:
    echo = stack.processes.upstream("echo")
    # A Redis reply slower than the limiter's 50 ms production bound on a loaded machine would be
    # counted by that gateway alone: the tests' patient bound keeps this test about the shared counter.
    limits = {
        "RATE_LIMIT_PER_MINUTE": "10",
        "RATE_LIMIT_BURST": "10",
        "RATE_LIMIT_REDIS_TIMEOUT": str(LOADED_REDIS_TIMEOUT_SECONDS),
    }
    first = stack.gateway("gateway-1", USER_SERVICE_URL=echo.url, **limits)
    second = stack.gateway("gateway-2", USER_SERVICE_URL=echo.url, **limits)
    for service in (echo, first, second):
        service.wait_healthy()

    headers = bearer()
    remaining = []
    for i in range(10):
        response = httpx.get(f"{(first, second)[i % 2].url}/api/v1/users/x", headers=headers, timeout=5)
        assert response.status_code == 200, (i, response.text)
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
    assert remaining == list(range(9, -1, -1))  # one counter, whichever gateway answered

    for gateway in (first, second):
        refused = httpx.get(f"{gateway.url}/api/v1/users/x", headers=headers, timeout=5)
        assert assert_problem(refused, 429)["code"] == "quota-exceeded"
        assert int(refused.headers["retry-after"]) >= 1
    assert arrivals(echo.url) == 10


# 6. Redis killed mid-run and restarted.


def start_redis(processes: Processes, port: int) -> Service:
    command = ["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    return processes.start(f"redis-{port}", command, environment(processes.logs), port)


def wait_for_redis(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if redis_sync.Redis.from_url(url, socket_timeout=0.5).ping():
                return
        except redis_sync.RedisError:
            time.sleep(0.05)
    pytest.fail(f"redis-server at {url} never answered")


def redis_ready(base_url: str) -> bool:
    return bool(httpx.get(f"{base_url}/ready", timeout=5).json()["checks"]["redis"]["status"] == "ok")


def test_redis_hung_then_killed_falls_back_to_local_limits_and_recovers(tmp_path: Path, processes: Processes) -> None:
    redis_port = free_port()
    assert redis_port != 6379  # never the machine's shared Redis
    url = f"redis://127.0.0.1:{redis_port}/0"
    namespace = "e2e-redis-outage"
    redis_server = start_redis(processes, redis_port)
    echo = processes.upstream("echo")
    gateway = processes.gateway(
        "gateway",
        tmp_path,
        USER_SERVICE_URL=echo.url,
        REDIS_URL=url,
        REDIS_NAMESPACE=namespace,
        RATE_LIMIT_PER_MINUTE="10",
        RATE_LIMIT_BURST="10",
        TRUSTED_PROXIES="127.0.0.1",  # so each phase can be a client of its own (X-Forwarded-For)
    )
    wait_for_redis(url)
    echo.wait_healthy()
    gateway.wait_healthy()
    token = access_token()

    def get(client_ip: str) -> httpx.Response:
        headers = {**bearer(token), "X-Forwarded-For": client_ip}
        return httpx.get(f"{gateway.url}/api/v1/users/x", headers=headers, timeout=5)

    def degraded() -> float:
        return metric(gateway.url, "pyairtable_gateway_ratelimit_degraded")

    for _ in range(3):
        assert get("198.51.100.1").status_code == 200
    assert redis_sync.Redis.from_url(url).exists(f"{namespace}:rl:default:198.51.100.1")
    assert degraded() == 0

    # Redis hangs (SIGSTOP): the first requests wait on its timeouts, then after at most 5 errors
    # the limiter's breaker opens and no request waits on Redis any more (RELIABILITY C5, C6).
    os.killpg(redis_server.process.pid, signal.SIGSTOP)
    for _ in range(5):
        assert get("198.51.100.2").status_code == 200
    assert degraded() == 1
    waited_before = metric(gateway.url, "pyairtable_gateway_ratelimit_redis_failures_total")
    local_before = metric(gateway.url, "pyairtable_gateway_ratelimit_local_decisions_total")
    for _ in range(5):
        assert get("198.51.100.3").status_code == 200
    # With the breaker open the five were limited by the process alone, and at most one (a probe,
    # if the breaker's reset period passed meanwhile) tried the hung Redis.
    assert metric(gateway.url, "pyairtable_gateway_ratelimit_local_decisions_total") == local_before + 5
    assert metric(gateway.url, "pyairtable_gateway_ratelimit_redis_failures_total") <= waited_before + 1

    # Redis killed (SIGKILL, while stopped): per-process limits, never unlimited, never a 5xx.
    processes.stop(redis_server, signal.SIGKILL)
    statuses = []
    for _ in range(15):
        statuses.append(get("198.51.100.4").status_code)
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses
    assert statuses.count(200) <= 10
    ready = httpx.get(f"{gateway.url}/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"]["status"] == "degraded"
    assert degraded() == 1

    # Redis back on the same port: shared limiting resumes within ~10 s.
    start_redis(processes, redis_port)
    wait_for_redis(url)
    deadline = time.monotonic() + 30  # the breaker probes every few seconds; this only guards a hang
    while degraded() != 0:
        assert time.monotonic() < deadline, "shared limiting never resumed"
        assert get("198.51.100.4").status_code in (200, 429)
        time.sleep(0.25)
    assert get("198.51.100.5").status_code == 200
    assert redis_sync.Redis.from_url(url).exists(f"{namespace}:rl:default:198.51.100.5")
    # The readiness check reads Redis through the store's own breaker, which closes on its next
    # probe (up to REDIS_BREAKER_RESET_SECONDS later than the limiter's): waited for, not raced.
    wait_for(lambda: redis_ready(gateway.url), "/ready to report Redis ok again")


# 7. `make run`: the embedded platform on one port.


def test_make_run_serves_auth_docs_and_readiness_on_one_port(tmp_path: Path, processes: Processes) -> None:
    port = free_port()
    env = environment(tmp_path / "data", PORT=str(port), **FAST_ARGON2)
    platform = processes.start("platform", ["make", "--no-print-directory", "run"], env, port)
    platform.wait_healthy(60)

    with httpx.Client(base_url=platform.url, timeout=10) as client:
        assert client.post("/api/v1/auth/register", json=CREDENTIALS).status_code == 201
        logged_in = client.post("/api/v1/auth/login", json=CREDENTIALS)
        assert logged_in.status_code == 200, logged_in.text
        me = client.get("/api/v1/auth/me", headers=bearer(logged_in.json()["access_token"]))
        assert me.status_code == 200 and me.json()["email"] == CREDENTIALS["email"]

        paths = client.get("/api/v1/openapi.json").json()["paths"]
        assert {"/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/me"} <= set(paths)
        ready = client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["upstream:auth"]["status"] == "ok"
