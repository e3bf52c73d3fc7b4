"""Hostile input against the distributed mode: the gateway and the auth service as real processes
on PostgreSQL and Redis (issue 11: a NUL in a login's email was a 500, and five of them opened the
gateway's breaker, taking sign-in offline for everybody)."""

import httpx

from tests.conftest import assert_problem
from tests.e2e.processes import Stack, metric

NUL_LOGIN = b'{"email": "a\\u0000b@example.com", "password": "a long enough passphrase"}'
VICTIM = {"email": "victim@example.com", "password": "a long enough passphrase"}
BREAKER = 'pyairtable_gateway_upstream_breaker_state{upstream="auth"}'
# The gateway's own per-address limit would answer the attacker's later requests itself: let all
# of them reach the auth service.
GENEROUS = {"AUTH_RATE_LIMIT_PER_MINUTE": "10000", "AUTH_RATE_LIMIT_BURST": "10000"}


def client_from(address: str, base_url: str) -> httpx.Client:
    """A client whose connections come from ``address`` (its own rate-limit budget at the gateway)."""
    return httpx.Client(base_url=base_url, timeout=10, transport=httpx.HTTPTransport(local_address=address))


def test_nul_logins_from_one_client_never_lock_another_out(stack: Stack) -> None:
    auth = stack.auth()
    gateway = stack.gateway_in_front({"AUTH_SERVICE_URL": auth}, **GENEROUS)
    json_body = {"content-type": "application/json"}

    with client_from("127.0.0.2", gateway.url) as attacker, client_from("127.0.0.3", gateway.url) as victim:
        assert victim.post("/api/v1/auth/register", json=VICTIM).status_code == 201
        victim_logins = []
        for attempt in range(20):
            refused = attacker.post("/api/v1/auth/login", content=NUL_LOGIN, headers=json_body)
            problem = assert_problem(refused, 422)
            assert problem["errors"][0]["key"] == "email", problem
            if attempt % 5 == 4:
                victim_logins.append(victim.post("/api/v1/auth/login", json=VICTIM).status_code)
        victim_logins.append(victim.post("/api/v1/auth/login", json=VICTIM).status_code)

    assert victim_logins == [200] * 5
    assert metric(gateway.url, BREAKER) == 0  # closed throughout: a client's bad value is not a fault
    log = auth.log.read_text(errors="replace")
    assert "unhandled error" not in log
    assert "a\\u0000b@example.com" not in log and "a\x00b@example.com" not in log
