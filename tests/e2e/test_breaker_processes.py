"""The gateway's breakers with real processes: an upstream process killed (SIGKILL) and started
again on its port, and a live upstream that answers 503 (issue 12, item 3).

Deadlines here are generous bounds that turn a hang into a failure, never performance claims;
the recovery time measured is printed (docs/RELIABILITY.md, "Breakers").
"""

import signal
import time
from pathlib import Path

import httpx

from tests.conftest import assert_problem
from tests.e2e.processes import Processes, access_token, arrivals, free_port, wait_for


def test_an_upstream_killed_and_restarted_is_refused_fast_then_used_again_once_ready(
    tmp_path: Path, processes: Processes
) -> None:
    port = free_port()
    users = processes.upstream("echo", port)
    things = processes.upstream("echo")
    # The breaker's longest open period, 30 s: recovery must not wait for it.
    gateway = processes.gateway_with_breaker(tmp_path, port, things, reset_seconds="30")
    for service in (users, things, gateway):
        service.wait_healthy()

    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {access_token()}"}, timeout=5) as client:
        # A live service's own 503s are passed on and never open the breaker.
        for _ in range(10):
            answer = client.get("/api/v1/users/status/503")
            assert answer.status_code == 503
            assert answer.json()["path"] == "/api/v1/users/status/503"  # the upstream's answer, not ours
        assert client.get("/api/v1/users/x").status_code == 200
        assert arrivals(users.url) == 11

        # Killed: 502 (connection refused), then the breaker answers 503 itself; other routes serve.
        processes.stop(users, signal.SIGKILL)
        statuses, slowest = [], 0.0
        while not statuses or statuses[-1] != 503:
            sent_at = time.monotonic()
            answer = client.get("/api/v1/users/x")
            slowest = max(slowest, time.monotonic() - sent_at)
            problem = assert_problem(answer, answer.status_code)
            assert (answer.status_code, problem["code"]) in {
                (502, "upstream-unavailable"),
                (503, "upstream-circuit-open"),
            }, problem
            statuses.append(answer.status_code)
            assert len(statuses) <= 10, statuses
        # Three refusals open it (BREAKER_FAILURES); a half-open probe, should a second pass between
        # two requests on a loaded machine, would add one more 502.
        assert statuses[:3] == [502, 502, 502] and set(statuses[3:-1]) <= {502}, statuses
        print(f"while down: {statuses}, the slowest answer took {slowest * 1000:.1f} ms")
        assert client.get("/api/v1/things/x").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text  # the things upstream is reachable
        assert "breaker open" in ready.json()["checks"]["upstream:users"]["error"]

        # Started again on its port: used again as soon as it answers, not after the open period.
        restarted = processes.upstream("echo", port)
        restarted.wait_healthy()
        healthy_at = time.monotonic()
        wait_for(lambda: client.get("/api/v1/users/x").status_code == 200, "the users route to serve again")
        print(f"users route served again {time.monotonic() - healthy_at:.2f} s after the upstream was healthy")
        assert all(client.get("/api/v1/users/x").status_code == 200 for _ in range(5))
        assert client.get("/ready").json()["checks"]["upstream:users"] == {"status": "ok", "error": None}
        assert client.get("/api/v1/things/x").status_code == 200
