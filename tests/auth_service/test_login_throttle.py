"""The account lock-out holds for attempts sent in parallel as for attempts sent one by one
(RELIABILITY B5), on Redis and on the in-process store the service falls back to."""

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared.stores import MemoryStore
from tests.auth_service.conftest import PASSWORD, Clock, bearer, register
from tests.conftest import app_client

LOGIN = "/api/v1/auth/login"
SOURCES = [f"127.0.0.{n}" for n in range(2, 7)]
WRONG = "not the password at all"
ALLOWED_FAILURES = 5  # LOGIN_FAILURES_BEFORE_LOCKOUT's default


@pytest.fixture(params=["redis", "memory"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def throttled_app(auth_settings: AuthSettings, clock: Clock, store_kind: str) -> Litestar:
    """The service with its real per-IP limit (10 a minute): five sources send five each."""
    settings = msgspec.structs.replace(auth_settings, ip_attempts_per_minute=10)
    return create_app(settings, clock=clock, store=MemoryStore() if store_kind == "memory" else None)


@contextlib.asynccontextmanager
async def clients_from(app: Litestar, addresses: list[str]) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One client per source address, all talking to the one running app."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 50000)), base_url="http://t")
            )
            for ip in addresses
        ]
        yield clients


async def within_one_window() -> None:
    """The per-IP limit's window is the clock's minute: start early in one, so that a burst slowed
    down by a busy machine still lands in it whole."""
    if time.time() % 60 > 45:
        await asyncio.sleep(60.5 - time.time() % 60)


def verifications(app: Litestar) -> int:
    computations: int = app.state.passwords.computations
    return computations


def comparable(response: httpx.Response) -> dict[str, Any]:
    """The body minus what differs between any two answers (request id) and what a lock-out
    may change (the status and its title)."""
    return comparable_body(response.json())


def comparable_body(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("request_id", "status", "title")}


async def guesses_then_the_password(clients: list[httpx.AsyncClient], email: str) -> list[httpx.Response]:
    """24 wrong guesses at once, spread over the clients' source addresses, and the right
    password as soon as five of them are answered, while the rest are still in flight: "24
    wrong, then the right one". (Among the first five counted it would be verified and let in,
    as it would be sent one by one.)"""

    def send(i: int, password: str) -> "asyncio.Future[httpx.Response]":
        return asyncio.ensure_future(clients[i % len(clients)].post(LOGIN, json={"email": email, "password": password}))

    wrong = [send(i, WRONG) for i in range(24)]
    for answered in itertools.islice(asyncio.as_completed(wrong), ALLOWED_FAILURES):
        await answered
    right = send(24, PASSWORD)
    return [await answer for answer in [*wrong, right]]


@pytest.mark.parametrize("email", ["ada@example.com", "nobody@example.com"], ids=["real", "unknown"])
async def test_25_parallel_guesses_from_5_addresses_verify_at_most_the_allowance_and_never_log_in(
    throttled_app: Litestar, email: str
) -> None:
    async with app_client(throttled_app) as client, clients_from(throttled_app, SOURCES) as clients:
        await register(client)
        wrong = (await client.post(LOGIN, json={"email": "ada@example.com", "password": WRONG})).json()
        assert wrong["status"] == 401
        await throttled_app.state.throttle.succeeded("ada@example.com")  # that probe is not the attacker's
        before = verifications(throttled_app)

        answers = await guesses_then_the_password(clients, email)
        verified = verifications(throttled_app) - before
        afterwards = await clients[0].post(LOGIN, json={"email": email, "password": PASSWORD})

    assert verified <= ALLOWED_FAILURES
    assert {a.status_code for a in answers} <= {401, 429}
    assert answers[-1].status_code == 429  # the right password: refused unchecked
    refused = [a for a in answers if a.status_code == 429]
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    assert all(comparable(a) == comparable_body(wrong) for a in answers)
    assert afterwards.status_code == 429  # the account stays locked
    assert 1 <= int(afterwards.headers["retry-after"]) <= 900


async def test_an_attempt_while_the_account_is_being_verified_is_refused_without_a_hash(
    throttled_app: Litestar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="auth_service.security")
    async with app_client(throttled_app) as client:
        await register(client)
        before = verifications(throttled_app)
        async with throttled_app.state.throttle.verification("ada@example.com"):
            concurrent = await client.post(LOGIN, json={"email": "ADA@example.com", "password": PASSWORD})
        hashed_meanwhile = verifications(throttled_app) - before
        later = await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})

    assert concurrent.status_code == 429
    assert concurrent.headers["retry-after"] == "1"
    assert concurrent.json()["code"] == "invalid-credentials"
    assert hashed_meanwhile == 0
    assert [r.getMessage() for r in caplog.records if getattr(r, "outcome", None) == "locked"] == [
        "login refused: account locked"
    ]
    assert later.status_code == 200  # the slot is free again and the success cleared the count


async def test_changing_the_password_is_throttled_like_a_login(throttled_app: Litestar) -> None:
    async with app_client(throttled_app) as client:
        tokens = await register(client)
        change = {"current_password": WRONG, "new_password": "another long passphrase"}
        statuses = [
            (await client.post("/api/v1/auth/password", json=change, headers=bearer(tokens))).status_code
            for _ in range(ALLOWED_FAILURES + 1)
        ]
        before = verifications(throttled_app)
        right = {**change, "current_password": PASSWORD}
        locked = await client.post("/api/v1/auth/password", json=right, headers=bearer(tokens))

    assert statuses == [401] * ALLOWED_FAILURES + [429]
    assert locked.status_code == 429 and "retry-after" in locked.headers
    assert verifications(throttled_app) == before


async def test_50_parallel_sprays_from_one_address_get_10_verifications(throttled_app: Litestar) -> None:
    async with app_client(throttled_app) as client:
        await within_one_window()
        before = verifications(throttled_app)
        answers = await asyncio.gather(
            *(client.post(LOGIN, json={"email": f"user{i}@example.com", "password": WRONG}) for i in range(50))
        )
        verified = verifications(throttled_app) - before

    assert sorted(a.status_code for a in answers) == [401] * 10 + [429] * 40
    assert {a.json()["code"] for a in answers if a.status_code == 429} == {"too-many-attempts"}
    assert verified == 10  # IP_ATTEMPTS_PER_MINUTE: counted before anything else


async def test_sprays_from_many_addresses_of_one_ipv6_64_share_one_budget(throttled_app: Litestar) -> None:
    """An IPv6 subscriber holds a whole /64: twenty of its addresses, written every which way,
    are one client to the per-IP limit, as they are to the gateway's."""
    addresses = [f"2001:db8:0:7::{n:x}" for n in range(1, 11)]
    addresses += [f"2001:0db8:0000:0007:0000:0000:0001:{n:04x}" for n in range(10)]
    async with app_client(throttled_app), clients_from(throttled_app, addresses) as clients:
        await within_one_window()
        answers = [
            await client.post(LOGIN, json={"email": f"v6user{i}@example.com", "password": WRONG})
            for i, client in enumerate(clients)
        ]

    assert [a.status_code for a in answers] == [401] * 10 + [429] * 10
