"""Idempotency-Key on POST and PATCH through the gateway (RELIABILITY E2), kept in Redis: a repeat
is answered from the first answer and never reaches the upstream twice; another body is a 422, a
repeat in flight a 409, another caller's key is theirs, a 5xx is not kept; credentials (the auth
routes, answers with tokens or cookies) are never kept, and a repeat never re-arms the lock."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as redis_async
from litestar import Litestar, Response, post
from litestar.datastructures import Cookie, State
from litestar.types import Receive, Scope, Send

from gateway.app import create_app
from tests.auth_service.conftest import PASSWORD, Clock
from tests.conftest import app_client, eventually
from tests.gateway.conftest import (
    AUTH,
    CLOSED_REDIS,
    USERS,
    SettingsFactory,
    access_token,
    assert_problem,
    bearer,
    register,
)
from tests.gateway.echo import Echo
from tests.gateway.stored_tokens import assert_no_token_in, stored_bytes


class DiscreetEcho(Echo):
    """The echo, but like a real service it does not repeat the caller's credentials in its answer
    (an answer that does is never kept: see ``test_an_answer_repeating_the_callers_token_is_not_kept``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        headers = [(name, value) for name, value in scope["headers"] if name != b"authorization"]
        await super().__call__({**scope, "headers": headers}, receive, send)  # type: ignore[arg-type]


@pytest.fixture
def slow_echo() -> Echo:
    return DiscreetEcho(USERS, slow_seconds=0.3)


@pytest.fixture
async def client(make_settings: SettingsFactory, slow_echo: Echo) -> AsyncIterator[httpx.AsyncClient]:
    app: Litestar = create_app(make_settings(request_timeout=5), services={USERS: slow_echo})
    async with app_client(app) as client:
        yield client


def keyed(key: str, token: str | None = None) -> dict[str, str]:
    return {**bearer(token or user_token()), "Idempotency-Key": key}


USER_ID = str(uuid.uuid4())  # one caller for the module: idempotency keys are kept per user


def user_token() -> str:
    """A token of that caller, minted when the test runs (one minted at import expires mid-run)."""
    return access_token(sub=USER_ID)


RECORDS = "/api/v1/records"  # a second upstream (an EXTRA_ROUTES one)


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
        assert (
            await client.post(f"{USERS}/records", json={"name": "Ada"}, headers=bearer(user_token()))
        ).status_code == 200
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
    headers = [("Authorization", f"Bearer {user_token()}"), ("Idempotency-Key", key)]
    response = await client.post(f"{USERS}/records", json={}, headers=httpx.Headers(headers, encoding="utf-8"))

    assert_problem(response, 400, "invalid-idempotency-key")
    assert slow_echo.seen == []


async def test_keys_work_with_the_in_memory_store_of_the_embedded_mode(make_settings: SettingsFactory) -> None:
    echo = DiscreetEcho(USERS)
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
        plain_post = await client.post(f"{USERS}/records", json={"n": 1}, headers=bearer(user_token()))
    assert_problem(keyed_post, 503, "store-unavailable")
    assert keyed_post.headers["retry-after"] == "2"
    assert plain_post.status_code == 200, plain_post.text
    assert len(echo.seen) == 1


# -- credentials are never kept or replayed (issue 11, item 3) -----------------------------------


async def test_auth_routes_ignore_the_key_so_a_rotated_refresh_token_sent_again_revokes_the_family(
    platform_client: httpx.AsyncClient, clock: Clock
) -> None:
    """Were the refresh kept, its repeat past the grace window would get the new pair again instead
    of being seen as the theft it is."""
    key = {"Idempotency-Key": "refresh-key"}
    registered = await platform_client.post(
        f"{AUTH}/register", json={"email": "ada@example.com", "password": PASSWORD}, headers=key
    )
    assert registered.status_code == 201, registered.text
    again = await platform_client.post(
        f"{AUTH}/register", json={"email": "ada@example.com", "password": PASSWORD}, headers=key
    )
    assert again.status_code == 409 and "idempotent-replayed" not in again.headers  # the service answered it

    old = registered.json()["refresh_token"]
    rotated = await platform_client.post(f"{AUTH}/refresh", json={"refresh_token": old}, headers=key)
    assert rotated.status_code == 200, rotated.text
    clock.advance(seconds=60)  # past the auth service's reuse grace window

    replayed = await platform_client.post(f"{AUTH}/refresh", json={"refresh_token": old}, headers=key)

    assert_problem(replayed, 401)
    assert "idempotent-replayed" not in replayed.headers
    # The whole family is revoked: the pair the first refresh gave is dead too.
    successor = await platform_client.post(f"{AUTH}/refresh", json={"refresh_token": rotated.json()["refresh_token"]})
    assert_problem(successor, 401)


async def test_keyed_logins_each_reach_the_auth_service(platform_client: httpx.AsyncClient) -> None:
    await register(platform_client)
    credentials = {"email": "ada@example.com", "password": PASSWORD}
    logins = [
        await platform_client.post(f"{AUTH}/login", json=credentials, headers={"Idempotency-Key": "login-key"})
        for _ in range(2)
    ]
    assert [login.status_code for login in logins] == [200, 200], [login.text for login in logins]
    assert all("idempotent-replayed" not in login.headers for login in logins)
    assert logins[0].json()["refresh_token"] != logins[1].json()["refresh_token"]  # two sessions, two tokens


@pytest.mark.parametrize("path", ["/auth/login", "/login"])
async def test_keyed_legacy_logins_each_reach_the_auth_service(
    make_settings: SettingsFactory, auth_app: Litestar, path: str
) -> None:
    app: Litestar = create_app(make_settings(require_api_key=False, request_timeout=10), services={AUTH: auth_app})
    async with app_client(app) as client:
        await register(client)
        credentials = {"email": "ada@example.com", "password": PASSWORD}
        logins = [await client.post(path, json=credentials, headers={"Idempotency-Key": "legacy"}) for _ in range(2)]
    assert [login.status_code for login in logins] == [200, 200], [login.text for login in logins]
    assert all("idempotent-replayed" not in login.headers for login in logins)
    assert logins[0].json()["access_token"] != logins[1].json()["access_token"]


async def test_the_store_holds_no_usable_token(
    make_settings: SettingsFactory, auth_app: Litestar, redis_url: str, redis_namespace: str
) -> None:
    """Every keyed request that carries or returns a token, then every key and value of the
    namespace (gateway and auth service alike) scanned for any of those tokens or their signatures."""
    echo = Echo(USERS)  # repeats the caller's Authorization header in its answer
    app: Litestar = create_app(
        make_settings(request_timeout=10), services={AUTH: auth_app, USERS: echo, RECORDS: DiscreetEcho(RECORDS)}
    )
    async with app_client(app) as client:
        tokens = await register(client)
        secrets_seen = [tokens["access_token"], tokens["refresh_token"]]
        for n, (path, body) in enumerate(
            [
                (f"{AUTH}/login", {"email": "ada@example.com", "password": PASSWORD}),
                (f"{AUTH}/refresh", {"refresh_token": tokens["refresh_token"]}),
            ]
        ):
            answer = await client.post(path, json=body, headers={"Idempotency-Key": f"scan-{n}"})
            assert answer.status_code == 200, answer.text
            secrets_seen += [answer.json()["access_token"], answer.json()["refresh_token"]]
        access = secrets_seen[-2]
        for prefix in (USERS, RECORDS):
            kept = await client.post(f"{prefix}/x", json={"n": 1}, headers={**bearer(access), "Idempotency-Key": "e"})
            assert kept.status_code == 200, kept.text
        logout = await client.post(f"{AUTH}/logout", headers={**bearer(access), "Idempotency-Key": "scan-out"})
        assert logout.status_code == 204, logout.text

    stored = stored_bytes(redis_url, redis_namespace)
    # The discreet echo's answer was kept: the scan does see the idempotency store.
    assert any(b":idempotency:" in key and not key.endswith(b":lock") for key, _ in stored)
    assert_no_token_in(stored, secrets_seen)


async def test_an_answer_repeating_the_callers_token_is_not_kept(make_settings: SettingsFactory) -> None:
    echo = Echo(USERS)  # answers with every header it got, Authorization included
    app: Litestar = create_app(make_settings(), services={USERS: echo})
    async with app_client(app) as client:
        token = user_token()
        answers = [await client.post(f"{USERS}/records", json={}, headers=keyed("echoed", token)) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert token in answers[0].text and "idempotent-replayed" not in answers[1].headers
    assert len(echo.seen) == 2


async def test_an_answer_carrying_a_token_is_not_kept_and_a_repeat_is_forwarded_again(
    client: httpx.AsyncClient, slow_echo: Echo
) -> None:
    for member in ("access_token", "refresh_token", "id_token"):
        body = {member: "eyJ-a-token-the-upstream-returns"}  # the echo answers with what it got
        answers = [await client.post(f"{USERS}/records", json=body, headers=keyed(f"tok-{member}")) for _ in range(2)]
        assert [answer.status_code for answer in answers] == [200, 200]
        assert all("idempotent-replayed" not in answer.headers for answer in answers)
    assert len(slow_echo.seen) == 6


async def test_an_answer_that_sets_a_cookie_is_not_kept(make_settings: SettingsFactory) -> None:
    sessions: list[int] = []

    @post(f"{USERS}/session", sync_to_thread=False)
    def open_session() -> Response[dict[str, int]]:
        sessions.append(len(sessions))
        return Response({"n": sessions[-1]}, cookies=[Cookie(key="session", value=f"secret-{sessions[-1]}")])

    upstream = Litestar([open_session], state=State({"readiness_checks": {}}))
    app: Litestar = create_app(make_settings(), services={USERS: upstream})
    async with app_client(app) as client:
        answers = [await client.post(f"{USERS}/session", headers=keyed("cookie-key")) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [201, 201]
    assert [answer.cookies["session"] for answer in answers] == ["secret-0", "secret-1"]
    assert "idempotent-replayed" not in answers[1].headers


# -- the in-flight lock's expiry is set once (issue 11) -------------------------------------------


async def test_repeats_while_the_first_is_in_flight_do_not_push_the_lock_expiry_back(
    make_settings: SettingsFactory, redis_url: str, redis_namespace: str
) -> None:
    """A gateway that died mid-request leaves its lock behind; a client that keeps retrying must get
    the key back when that lock expires, so a 409 must never re-arm it."""
    echo = DiscreetEcho(USERS, slow_seconds=3.0)  # in flight for the whole test, on a busy machine too
    app: Litestar = create_app(make_settings(request_timeout=5), services={USERS: echo})
    redis = redis_async.Redis.from_url(redis_url)
    try:
        async with app_client(app) as client:
            first = asyncio.create_task(client.post(f"{USERS}/slow", json={}, headers=keyed("lock-key")))
            locks = await eventually(lambda: lock_keys(redis, redis_namespace), "the first request's lock")
            # As if its gateway had died long ago: the lock has a moment left to live.
            await redis.pexpire(locks[0], 2_000)
            for _ in range(5):
                assert_problem(await client.post(f"{USERS}/slow", json={}, headers=keyed("lock-key")), 409)
            remaining = await redis.pttl(locks[0])
            assert 0 < remaining <= 2_000, remaining
            assert (await first).status_code == 200
    finally:
        await redis.aclose()
    assert len(echo.seen) == 1


async def lock_keys(redis: redis_async.Redis, namespace: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{namespace}:idempotency:*:lock")]


async def test_a_lock_left_by_a_gateway_that_died_holds_the_key_until_it_expires(
    make_settings: SettingsFactory, redis_url: str, redis_namespace: str
) -> None:
    echo = DiscreetEcho(USERS, slow_seconds=1.0)
    settings = make_settings(request_timeout=5, rate_limit_per_minute=10_000, rate_limit_burst=10_000)
    app: Litestar = create_app(settings, services={USERS: echo})
    redis = redis_async.Redis.from_url(redis_url)
    try:
        async with app_client(app) as client:
            # Learn where this caller's key lives, then leave only a lock there, as a gateway killed
            # mid-request would (no answer kept, nobody to release the lock).
            first = asyncio.create_task(client.post(f"{USERS}/slow", json={}, headers=keyed("orphan")))
            [lock] = await eventually(lambda: lock_keys(redis, redis_namespace), "the first request's lock")
            assert (await first).status_code == 200
            await redis.delete(lock.removesuffix(b":lock"))
            await redis.set(lock, 1, px=1_500)

            refused = await client.post(f"{USERS}/slow", json={}, headers=keyed("orphan"))
            answered = await eventually(
                lambda: forwarded(client, keyed("orphan")), "the key back once the orphaned lock expired"
            )
    finally:
        await redis.aclose()
    assert_problem(refused, 409, "idempotency-key-in-use")
    assert answered.status_code == 200 and "idempotent-replayed" not in answered.headers
    assert len(echo.seen) == 2, "the first request, then the one after the lock expired"


async def forwarded(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response | None:
    response = await client.post(f"{USERS}/slow", json={}, headers=headers)
    return response if response.status_code != 409 else None


async def test_an_answer_over_the_kept_size_is_passed_on_but_not_kept(make_settings: SettingsFactory) -> None:
    echo = DiscreetEcho(USERS)  # its answer repeats the request body: over 1 MiB here
    app: Litestar = create_app(make_settings(max_body_size=4 * 1024 * 1024), services={USERS: echo})
    big = {"text": "x" * (1024 * 1024 + 1)}
    async with app_client(app) as client:
        answers = [await client.post(f"{USERS}/records", json=big, headers=keyed("large")) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert all(len(answer.content) > 1024 * 1024 for answer in answers), "passed on whole"
    assert "idempotent-replayed" not in answers[1].headers, "not kept, so the repeat is forwarded again"
    assert len(echo.seen) == 2
