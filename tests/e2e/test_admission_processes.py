"""Admission in the distributed mode: the gateway and the auth service as real processes on
PostgreSQL and Redis, driven over HTTP on loopback (issue 11, items 3 and 5).

* Idempotency-Key never touches credentials: a keyed refresh sent again past the grace window is
  the reuse it is (401, the family revoked), and Redis holds none of the tokens.
* The in-flight lock of a gateway that died mid-request expires: a client that keeps retrying gets
  its key back, not a 409 forever.
* Rate limits count one client once: ten addresses of one IPv6 /64 share one budget, an IPv4
  address and its IPv4-mapped form too.

Time limits are generous deadlines that prove "no hang", never performance claims.
"""

import contextlib
import signal
import threading
import time

import httpx
import redis as redis_sync

from tests.conftest import assert_problem
from tests.e2e.processes import Stack, access_token, arrivals
from tests.gateway.stored_tokens import assert_no_token_in, stored_bytes

CREDENTIALS = {"email": "ada@example.com", "password": "a long enough passphrase"}
GENEROUS = {"RATE_LIMIT_PER_MINUTE": "10000", "RATE_LIMIT_BURST": "10000"}
GRACE_SECONDS = 1.0


def test_a_keyed_refresh_sent_again_past_the_grace_window_revokes_the_family_and_redis_holds_no_token(
    stack: Stack,
) -> None:
    auth = stack.auth(AUTH_REFRESH_REUSE_GRACE=str(GRACE_SECONDS))
    gateway = stack.gateway_in_front({"AUTH_SERVICE_URL": auth})

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        key = {"Idempotency-Key": "the-client-retries-with-this-key"}
        registered = client.post("/api/v1/auth/register", json=CREDENTIALS, headers={"Idempotency-Key": "register"})
        assert registered.status_code == 201, registered.text
        first = registered.json()
        rotated = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}, headers=key)
        assert rotated.status_code == 200, rotated.text
        second = rotated.json()
        assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {second['access_token']}"}).is_success

        time.sleep(GRACE_SECONDS + 0.5)  # past the grace window in which a lost answer may be asked again
        replayed = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}, headers=key)

        assert_problem(replayed, 401)
        assert "idempotent-replayed" not in replayed.headers
        successor = client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert_problem(successor, 401)  # the whole family is revoked ...
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {second['access_token']}"})
        assert_problem(me, 401)  # ... its access token too, at the gateway

    tokens = [first[name] for name in ("access_token", "refresh_token")]
    tokens += [second[name] for name in ("access_token", "refresh_token")]
    stored = stored_bytes(stack.redis_url, stack.namespace)
    assert stored, "the scan found nothing: wrong namespace?"
    assert_no_token_in(stored, tokens)


def test_a_gateway_that_died_mid_request_leaves_a_lock_that_expires_for_a_retrying_client(stack: Stack) -> None:
    slow = stack.processes.upstream("slow", sleep=3.0)
    settings = {
        "USER_SERVICE_URL": slow.url,
        "CONNECT_TIMEOUT": "0.5",
        "REQUEST_TIMEOUT": "5",  # the lock lives 0.5 + 5 + 5 s: as long as a forward can take, and a margin
        **GENEROUS,
    }
    doomed = stack.gateway("gateway-1", **settings)
    slow.wait_healthy()
    doomed.wait_healthy()
    headers = {"Authorization": f"Bearer {access_token()}", "Idempotency-Key": "retried-after-a-crash"}

    def first_attempt() -> None:
        with contextlib.suppress(httpx.HTTPError):  # its gateway dies under it
            httpx.post(f"{doomed.url}/api/v1/users/slow", json={"n": 1}, headers=headers, timeout=20)

    attempt = threading.Thread(target=first_attempt)
    attempt.start()
    deadline = time.monotonic() + 10
    while arrivals(slow.url) < 1:
        assert time.monotonic() < deadline, "the first attempt never reached the upstream"
        time.sleep(0.05)
    stack.processes.stop(doomed, signal.SIGKILL)
    attempt.join()

    replacement = stack.gateway("gateway-2", **settings)
    replacement.wait_healthy()
    statuses = []
    deadline = time.monotonic() + 40
    with httpx.Client(base_url=replacement.url, timeout=20) as client:
        while not statuses or statuses[-1] == 409:
            assert time.monotonic() < deadline, f"the key stayed locked: {statuses}"
            retry = client.post("/api/v1/users/slow", json={"n": 1}, headers=headers)
            statuses.append(retry.status_code)
            if retry.status_code == 409:
                assert_problem(retry, 409)
                time.sleep(float(retry.headers["retry-after"]) / 2)

    assert statuses[0] == 409, statuses  # the dead gateway's lock was still held ...
    assert statuses[-1] == 200, statuses  # ... and expired although the client kept asking
    assert set(statuses) == {409, 200}, statuses
    assert arrivals(slow.url) == 2


def test_ten_addresses_of_one_ipv6_64_share_one_budget(stack: Stack) -> None:
    echo = stack.processes.upstream("echo")
    gateway = stack.gateway_in_front(
        {"USER_SERVICE_URL": echo},
        RATE_LIMIT_PER_MINUTE="5",
        RATE_LIMIT_BURST="5",
        TRUSTED_PROXIES="127.0.0.1",  # so each request can be a client of its own (X-Forwarded-For)
    )
    token = access_token()

    def statuses(addresses: list[str]) -> list[int]:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            return [
                client.get(
                    "/api/v1/users/x", headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
                ).status_code
                for address in addresses
            ]

    assert statuses([f"2001:db8:7:7::{n:x}" for n in range(1, 11)]) == [200] * 5 + [429] * 5
    assert statuses(["2001:db8:7:8::1"]) == [200]  # the next /64 is someone else
    assert statuses(["198.51.100.7", "::ffff:198.51.100.7"] * 3) == [200] * 5 + [429]
    client = redis_sync.Redis.from_url(stack.redis_url)
    try:
        assert client.exists(f"{stack.namespace}:rl:default:2001:db8:7:7::/64")
        assert client.exists(f"{stack.namespace}:rl:default:198.51.100.7")
    finally:
        client.close()
