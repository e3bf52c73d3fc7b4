"""``python -m gateway serve`` with GATEWAY_WORKERS=2: two worker processes on one port that act as
one gateway — one rate limit, one revocation list, one /metrics — a killed worker replaced, and
SIGTERM to the gateway stopping them all.

Which worker holds a connection is read from /proc (the accepted socket among each worker's file
descriptors), so every check below sends requests to both workers on purpose; nothing in the
gateway tells a client which process answered.
"""

import http.client
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import jwt
import pytest
import redis as redis_sync

from tests.conftest import WAIT_SECONDS
from tests.e2e.processes import (
    JWT_SECRET,
    PYTHON,
    REPO,
    Processes,
    Service,
    access_token,
    environment,
    wait_for,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker sockets from /proc")

BURST = 4  # requests a user may send at once; at one a minute, none comes back during the test
CONNECTIONS_TRIED = 200  # new connections opened, at most, until each worker holds two


def worker_pids(gateway: Service) -> list[int]:
    """The gateway's worker processes: its children started by multiprocessing's spawn."""
    pid = gateway.process.pid
    with suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children if b"spawn_main" in _cmdline(int(child))]
    return []


def _cmdline(pid: int) -> bytes:
    with suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def alive(pid: int) -> bool:
    with suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def holder(connection: http.client.HTTPConnection, server_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end of ``connection`` (accepted, as a request was answered)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == server_port and int(fields[2].split(":")[1], 16) == client_port:
            inode = fields[9]
    for pid in pids:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    return None


def get(connection: http.client.HTTPConnection, path: str, token: str | None = None) -> tuple[int, bytes]:
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    response = connection.getresponse()
    return response.status, response.read()


@pytest.fixture
def gateway(tmp_path: Path, processes: Processes, redis_url: str, redis_namespace: str) -> Iterator[Service]:
    echo = processes.upstream("echo")
    gateway = processes.gateway(
        "gateway",
        tmp_path,
        GATEWAY_WORKERS="2",
        USER_SERVICE_URL=echo.url,
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=redis_namespace,
        RATE_LIMIT_KEY="user",  # one bucket per token below: the checks do not share a limit
        RATE_LIMIT_PER_MINUTE="1",
        RATE_LIMIT_BURST=str(BURST),
    )
    echo.wait_healthy()
    gateway.wait_healthy(60)
    wait_for(lambda: len(worker_pids(gateway)) == 2, "two workers", timeout=60)
    yield gateway


def connections_to_each_worker(gateway: Service, pids: list[int]) -> dict[int, list[http.client.HTTPConnection]]:
    """Two kept-alive connections per worker: new connections until the kernel has given each worker two."""
    held: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in pids}
    for _ in range(CONNECTIONS_TRIED):
        if all(len(connections) >= 2 for connections in held.values()):
            break
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=WAIT_SECONDS)
        assert get(connection, "/health")[0] == 200
        pid = holder(connection, gateway.port, pids)
        if pid is not None and len(held[pid]) < 2:
            held[pid].append(connection)
        else:
            connection.close()
    assert all(len(connections) >= 2 for connections in held.values()), {p: len(c) for p, c in held.items()}
    return held


def proxied_total(text: str, status: int) -> float:
    match = re.search(rf'^pyairtable_gateway_requests_total{{[^}}]*status="{status}"[^}}]*}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_two_workers_serve_one_port_as_one_gateway(gateway: Service, redis_url: str, redis_namespace: str) -> None:
    pids = worker_pids(gateway)
    held = connections_to_each_worker(gateway, pids)
    first, second = ([held[pid][0], held[pid][1]] for pid in pids)
    path = "/api/v1/users/me"

    # One rate limit: each worker answers two of the user's burst of four, then both refuse.
    limited = access_token()
    answers = [get(connection, path, limited)[0] for connection in (*first, *second)]
    assert answers == [200] * BURST
    assert get(first[0], path, limited)[0] == 429
    assert get(second[0], path, limited)[0] == 429

    # One revocation list: a token revoked in Redis (as the auth service does) is refused by both.
    revoked = access_token()
    assert get(first[1], path, revoked)[0] == 200
    assert get(second[1], path, revoked)[0] == 200
    jti = jwt.decode(revoked, JWT_SECRET, algorithms=["HS256"], audience="pyairtable-api")["jti"]
    with redis_sync.Redis.from_url(redis_url) as client:
        client.set(f"{redis_namespace}:revoked:jti:pyairtable-auth:{jti}", b"1", ex=600)
    assert get(first[1], path, revoked)[0] == 401
    assert get(second[1], path, revoked)[0] == 401

    # One /metrics: whichever worker is asked counts every worker's requests (mirrored each second).
    def both_count_everything() -> bool:
        texts = [get(connection, "/metrics")[1].decode() for connection in (first[0], second[0])]
        return all((proxied_total(t, 200), proxied_total(t, 429), proxied_total(t, 401)) == (6, 2, 2) for t in texts)

    wait_for(both_count_everything, "both workers' /metrics to count all ten requests")

    # A killed worker is replaced, and its requests still count.
    os.kill(pids[0], signal.SIGKILL)
    replaced = wait_for(
        lambda: (now := worker_pids(gateway)) and len(now) == 2 and pids[0] not in now and now,
        "a new worker in place of the killed one",
        timeout=60,
    )
    fresh = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=WAIT_SECONDS)
    assert get(fresh, path, access_token())[0] == 200
    wait_for(lambda: proxied_total(get(fresh, "/metrics")[1].decode(), 200) == 7, "the count of 200s to reach 7")
    for connection in (*first, *second, fresh):
        connection.close()

    # SIGTERM to the gateway (the supervisor alone) stops every worker, then the gateway itself.
    os.kill(gateway.process.pid, signal.SIGTERM)
    assert gateway.process.wait(timeout=60) == 0
    assert not [pid for pid in replaced if alive(pid)]


def test_the_embedded_platform_refuses_several_workers_it_is_one_process(tmp_path: Path) -> None:
    env = environment(tmp_path, GATEWAY_WORKERS="2", REDIS_URL="redis://127.0.0.1:6379/0")
    done = subprocess.run(
        [PYTHON, "-m", "embedded", "serve"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "GATEWAY_WORKERS: the embedded platform runs in one process" in done.stderr
