"""Idempotency-Key on POST and PATCH through the gateway (RELIABILITY E2), kept in Redis: a repeat
is answered from the first answer and never reaches the upstream twice; another body is a 422, a
repeat in flight a 409, another caller's key is theirs, a 5xx is not kept."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from gateway.app import create_app
from tests.conftest import app_client
from tests.gateway.conftest import CLOSED_REDIS, USERS, SettingsFactory, access_token, assert_problem, bearer
from tests.gateway.echo import Echo


@pytest.fixture
def slow_echo() -> Echo:
    return Echo(USERS, slow_seconds=0.3)


@pytest.fixture
async def client(make_settings: SettingsFactory, slow_echo: Echo) -> AsyncIterator[httpx.AsyncClient]:
    app: Litestar = create_app(make_settings(request_timeout=5), services={USERS: slow_echo})
    async with app_client(app) as client:
        yield client


def keyed(key: str, token: str | None = None) -> dict[str, str]:
    return {**bearer(token or TOKEN), "Idempotency-Key": key}


TOKEN = access_token()


async def test_a_repeat_gets_the_first_answer_and_the_upstream_sees_one_request(
    client: httpx.AsyncClient, slow_echo: Echo
) -> None:
    first = await client.post(f"{USERS}/records?x=1", json={"name": "Ada"}, headers=keyed("key-1"))
    again = await client.post(f"{USERS}/records?x=1", json={"name": "Ada"}, headers=keyed("key-1"))

    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # each answer has its own
    assert "x-ratelimit-remaining" in again.headers
    assert len(slow_echo.seen) == 1


async def test_patch_is_keyed_too_and_other_methods_ignore_the_key(client: httpx.AsyncClient, slow_echo: Echo) -> None:
    for _ in range(2):
        assert (await client.patch(f"{USERS}/me", json={"a": 1}, headers=keyed("key-p"))).status_code == 200
        assert (await client.put(f"{USERS}/me", json={"a": 1}, headers=keyed("key-put"))).status_code == 200
    assert [seen.method for seen in slow_echo.seen] == ["PATCH", "PUT", "PUT"]


async def test_without_a_key_every_post_is_forwarded(client: httpx.AsyncClient, slow_echo: Echo) -> None:
    for _ in range(2):
        assert (await client.post(f"{USERS}/records", json={"name": "Ada"}, headers=bearer(TOKEN))).status_code == 200
    assert len(slow_echo.seen) == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [(f"{USERS}/records?x=1", {"name": "Grace"}), (f"{USERS}/records?x=2", {"name": "Ada"}), (f"{USERS}/other", {})],
)
async def test_the_same_key_with_another_request_is_422(
    client: httpx.AsyncClient, slow_echo: Echo, path: str, body: dict[str, str]
) -> None:
    assert (await client.post(f"{USERS}/records?x=1", json={"name": "Ada"}, headers=keyed("key-2"))).status_code == 200

    reused = await client.post(path, json=body, headers=keyed("key-2"))

    assert_problem(reused, 422, "idempotency-key-reused")
    assert len(slow_echo.seen) == 1


async def test_ten_repeats_at_once_make_one_request(client: httpx.AsyncClient, slow_echo: Echo) -> None:
    answers = await asyncio.gather(
        *(client.post(f"{USERS}/slow", json={"n": 1}, headers=keyed("key-3")) for _ in range(10))
    )

    assert len(slow_echo.seen) == 1
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 409}, statuses
    for answer in answers:
        if answer.status_code == 409:
            assert_problem(answer, 409, "idempotency-key-in-use")
            assert answer.headers["retry-after"] == "1"
    after = await client.post(f"{USERS}/slow", json={"n": 1}, headers=keyed("key-3"))
    assert after.headers["idempotent-replayed"] == "true"
    assert len(slow_echo.seen) == 1


async def test_a_key_belongs_to_its_caller(client: httpx.AsyncClient, slow_echo: Echo) -> None:
    other = access_token(sub="00000000-0000-0000-0000-0000000000b2")  # another user
    mine = await client.post(f"{USERS}/records", json={"name": "Ada"}, headers=keyed("shared-key"))
    theirs = await client.post(f"{USERS}/records", json={"name": "Ada"}, headers=keyed("shared-key", other))

    assert mine.status_code == theirs.status_code == 200
    assert "idempotent-replayed" not in theirs.headers
    assert len(slow_echo.seen) == 2


@pytest.mark.parametrize("path", [f"{USERS}/status/500", f"{USERS}/status/503", f"{USERS}/crash"])
async def test_a_5xx_is_not_kept_so_a_repeat_tries_again(client: httpx.AsyncClient, slow_echo: Echo, path: str) -> None:
    for _ in range(2):
        failed = await client.post(path, json={}, headers=keyed("key-4"))
        assert failed.status_code >= 500
        assert "idempotent-replayed" not in failed.headers
    assert len(slow_echo.seen) == 2


async def test_a_4xx_is_kept_like_any_answer(client: httpx.AsyncClient, slow_echo: Echo) -> None:
    first = await client.post(f"{USERS}/status/409", json={}, headers=keyed("key-5"))
    again = await client.post(f"{USERS}/status/409", json={}, headers=keyed("key-5"))
    assert first.status_code == again.status_code == 409
    assert again.headers["idempotent-replayed"] == "true"
    assert len(slow_echo.seen) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "caf\u00e9"])
async def test_a_malformed_key_is_400(client: httpx.AsyncClient, slow_echo: Echo, key: str) -> None:
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Idempotency-Key", key)]
    response = await client.post(f"{USERS}/records", json={}, headers=httpx.Headers(headers, encoding="utf-8"))

    assert_problem(response, 400, "invalid-idempotency-key")
    assert slow_echo.seen == []


async def test_keys_work_with_the_in_memory_store_of_the_embedded_mode(make_settings: SettingsFactory) -> None:
    echo = Echo(USERS)
    app: Litestar = create_app(make_settings(redis_url=""), services={USERS: echo})
    async with app_client(app) as client:
        first = await client.post(f"{USERS}/records", json={"n": 1}, headers=keyed("key-m"))
        again = await client.post(f"{USERS}/records", json={"n": 1}, headers=keyed("key-m"))
        reused = await client.post(f"{USERS}/records", json={"n": 2}, headers=keyed("key-m"))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert_problem(reused, 422, "idempotency-key-reused")
    assert len(echo.seen) == 1


async def test_with_the_store_down_a_keyed_request_is_503_and_others_pass(make_settings: SettingsFactory) -> None:
    """The gateway cannot promise what a key asks for without its store: it says so, and does nothing."""
    echo = Echo(USERS)
    app: Litestar = create_app(make_settings(redis_url=CLOSED_REDIS), services={USERS: echo})
    async with app_client(app) as client:
        keyed_post = await client.post(f"{USERS}/records", json={"n": 1}, headers=keyed("key-down"))
        plain_post = await client.post(f"{USERS}/records", json={"n": 1}, headers=bearer(TOKEN))
    assert_problem(keyed_post, 503, "store-unavailable")
    assert keyed_post.headers["retry-after"] == "2"
    assert plain_post.status_code == 200, plain_post.text
    assert len(echo.seen) == 1
