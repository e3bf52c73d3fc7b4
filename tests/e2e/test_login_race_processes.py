"""The account lock-out against a raced burst, in the distributed mode: the gateway and the auth
service as real processes on PostgreSQL and Redis, guesses from five source addresses.

RELIABILITY B5 (and issue 11): 25 logins sent at once (24 wrong passwords, then the right one)
used to be verified all 25 (the lock was checked before the hash, the failure recorded after).
"""

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx

from tests.conftest import assert_problem
from tests.e2e.processes import Stack, metric

LOGIN = "/api/v1/auth/login"
OWNER = {"email": "ada@example.com", "password": "a long enough passphrase"}
WRONG = "not the passphrase at all"
SOURCES = [f"127.0.0.{n}" for n in range(2, 7)]
ALLOWED_FAILURES = 5  # LOGIN_FAILURES_BEFORE_LOCKOUT's default
VERIFICATIONS = 'pyairtable_auth_password_hash_computations_total{operation="verify"}'


def client_from(source: str, base_url: str) -> httpx.Client:
    """A client whose connections leave from ``source`` (any 127/8 address is local)."""
    return httpx.Client(base_url=base_url, timeout=30, transport=httpx.HTTPTransport(local_address=source))


def guesses_then_the_password(base_url: str) -> list[httpx.Response]:
    """24 wrong guesses released together, round-robin over the five sources, and the right
    password as soon as five of them are answered, while the rest are still in flight: "24
    wrong, then the right one". (Among the first five counted it would be verified and let in,
    as it would be sent one by one.)"""
    clients = [client_from(SOURCES[i % len(SOURCES)], base_url) for i in range(25)]
    start = threading.Barrier(24)

    def guess(i: int) -> httpx.Response:
        start.wait()
        return clients[i].post(LOGIN, json={"email": OWNER["email"], "password": WRONG})

    try:
        with ThreadPoolExecutor(25) as pool:
            wrong = [pool.submit(guess, i) for i in range(24)]
            for _ in itertools.islice(as_completed(wrong), ALLOWED_FAILURES):
                pass
            right = pool.submit(clients[24].post, LOGIN, json=OWNER)
            return [answer.result() for answer in [*wrong, right]]
    finally:
        for client in clients:
            client.close()


def test_25_parallel_guesses_from_5_addresses_get_at_most_5_verifications_and_no_login(stack: Stack) -> None:
    # It believes the gateway's X-Forwarded-For: that is how it tells the clients' addresses apart.
    auth = stack.auth(TRUSTED_PROXIES="127.0.0.1/32")
    gateway = stack.gateway_in_front(
        {"AUTH_SERVICE_URL": auth},
        RATE_LIMIT_PER_MINUTE="10000",
        RATE_LIMIT_BURST="10000",
    )
    with httpx.Client(base_url=gateway.url, timeout=30) as owner:
        assert owner.post("/api/v1/auth/register", json=OWNER).status_code == 201
        wrong = assert_problem(owner.post(LOGIN, json={**OWNER, "password": WRONG}), 401)
        assert owner.post(LOGIN, json=OWNER).status_code == 200  # and the failure is forgotten
    before = metric(auth.url, VERIFICATIONS)  # the owner's two logins made the series

    answers = guesses_then_the_password(gateway.url)
    verified = metric(auth.url, VERIFICATIONS) - before
    with client_from(SOURCES[0], gateway.url) as late:
        afterwards = late.post(LOGIN, json=OWNER)

    assert verified <= ALLOWED_FAILURES
    assert not [a for a in answers if a.status_code == 200]
    problems = [assert_problem(a, a.status_code) for a in answers]
    # Every refusal is the account's (the wrong-password body), none the per-IP limit's: the
    # five sources were told apart, five attempts each under IP_ATTEMPTS_PER_MINUTE (10).
    assert {p["status"] for p in problems} <= {401, 429}
    assert {(p["code"], p["detail"]) for p in problems} == {(wrong["code"], wrong["detail"])}
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)
    assert_problem(afterwards, 429)  # the right password, after the burst: still locked out
    assert 1 <= int(afterwards.headers["retry-after"]) <= 900
