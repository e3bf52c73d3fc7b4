"""Registration and sign-in through the HTTP API."""

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from litestar import Litestar

from auth_service.throttle import _account, _lock_key
from tests.auth_service.conftest import PASSWORD, bearer, register, without_request_id
from tests.conftest import app_client

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


async def test_register_returns_user_and_token_pair(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        json={"email": "  Ada@Example.COM ", "password": PASSWORD, "first_name": "Ada", "last_name": "Lovelace"},
    )

    assert response.status_code == 201
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["first_name"] == "Ada"
    assert body["user"]["roles"] == ["user"]
    assert len(body["refresh_token"]) >= 43  # 256 random bits, base64url
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "HS256"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == body["user"]["id"]
    assert {"iss", "aud", "sub", "email", "roles", "jti", "iat", "nbf", "exp"} <= claims.keys()
    assert claims["exp"] - claims["iat"] == 900


async def test_registering_a_taken_email_is_a_conflict(client: httpx.AsyncClient) -> None:
    await register(client, "ada@example.com")

    response = await client.post(REGISTER, json={"email": "ADA@example.com", "password": PASSWORD})

    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "email-taken"


@pytest.mark.parametrize(
    ("email", "password", "code"),
    [
        ("ada@example.com", "short", "weak-password"),
        ("ada@example.com", "x" * 129, "validation-error"),
        ("ada@example.com", "ADA@example.com", "weak-password"),
        ("not-an-email", PASSWORD, "invalid-email"),
        ("ada@", PASSWORD, "invalid-email"),
        ("a b@example.com", PASSWORD, "invalid-email"),
    ],
)
async def test_register_rejects_bad_input_with_422(
    client: httpx.AsyncClient, auth_app: Litestar, email: str, password: str, code: str
) -> None:
    response = await client.post(REGISTER, json={"email": email, "password": password})

    assert response.status_code == 422
    assert response.json()["code"] == code
    assert auth_app.state.passwords.computations == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "ada@example.com", "password": 12345678901}, "password"),
        ({"email": 5, "password": PASSWORD}, "email"),
    ],
)
async def test_login_with_a_number_for_a_text_field_is_a_422_naming_it(
    client: httpx.AsyncClient, auth_app: Litestar, body: dict[str, object], field: str
) -> None:
    await register(client)
    computed = auth_app.state.passwords.computations

    response = await client.post(LOGIN, json=body)

    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation-error"
    assert [error["key"] for error in problem["errors"]] == [field]
    assert auth_app.state.passwords.computations == computed


async def test_a_64_character_passphrase_is_accepted(client: httpx.AsyncClient) -> None:
    passphrase = "correct horse battery staple " * 2 + "abcdef"
    assert len(passphrase) == 64
    tokens = await register(client, "long@example.com", passphrase)

    response = await client.post(LOGIN, json={"email": "long@example.com", "password": passphrase})

    assert response.status_code == 200
    assert response.json()["user"]["id"] == tokens["user"]["id"]


async def test_a_huge_password_is_refused_without_hashing(client: httpx.AsyncClient, auth_app: Litestar) -> None:
    response = await client.post(REGISTER, json={"email": "big@example.com", "password": "p" * 1_000_000})

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert auth_app.state.passwords.computations == 0


async def test_a_body_over_the_size_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        content=b'{"email": "a@example.com", "password": "' + b"p" * 2_000_000 + b'"}',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, content=b"{not json", headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json()["status"] == 400


async def test_login_returns_a_new_token_pair(client: httpx.AsyncClient) -> None:
    registered = await register(client)

    response = await client.post(LOGIN, json={"email": " ADA@example.com", "password": PASSWORD})

    assert response.status_code == 200
    body = response.json()
    assert body["user"]["id"] == registered["user"]["id"]
    assert body["user"]["last_login_at"] is not None
    assert body["refresh_token"] != registered["refresh_token"]
    me = await client.get("/api/v1/auth/me", headers=bearer(body))
    assert me.json()["last_login_at"] == body["user"]["last_login_at"]


async def test_wrong_password_and_unknown_email_look_the_same(client: httpx.AsyncClient, auth_app: Litestar) -> None:
    await register(client)
    before = auth_app.state.passwords.computations

    wrong = await client.post(LOGIN, json={"email": "ada@example.com", "password": "not the password"})
    unknown = await client.post(LOGIN, json={"email": "nobody@example.com", "password": "not the password"})

    assert wrong.status_code == unknown.status_code == 401
    assert without_request_id(wrong.json()) | {"instance": None} == without_request_id(unknown.json()) | {
        "instance": None
    }
    assert wrong.json()["detail"] == "Invalid email or password."
    # The unknown email is verified against a dummy hash: both cost one argon2 verification.
    assert auth_app.state.passwords.computations - before == 2


async def test_account_is_locked_after_five_failures_and_computes_no_hash(
    client: httpx.AsyncClient, auth_app: Litestar
) -> None:
    await register(client)
    for _ in range(5):
        response = await client.post(LOGIN, json={"email": "ada@example.com", "password": "wrong password"})
        assert response.status_code == 401
    before = auth_app.state.passwords.computations

    locked = await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})

    assert locked.status_code == 429
    assert 1 <= int(locked.headers["retry-after"]) <= 900
    assert locked.json()["code"] == "invalid-credentials"
    assert auth_app.state.passwords.computations == before


async def test_unknown_emails_are_locked_out_like_real_ones(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        await client.post(LOGIN, json={"email": "ghost@example.com", "password": "wrong password"})

    response = await client.post(LOGIN, json={"email": "ghost@example.com", "password": "wrong password"})

    assert response.status_code == 429
    assert "retry-after" in response.headers


async def test_lockout_grows_exponentially_and_is_capped(client: httpx.AsyncClient, auth_app: Litestar) -> None:
    throttle, store = auth_app.state.throttle, auth_app.state.store
    lock = _lock_key(_account("victim@example.com"))
    waits = []
    for _ in range(12):
        await store.delete(lock)  # as if the previous lock had run out
        async with throttle.verification("victim@example.com"):
            pass  # a wrong password: the attempt stays a failure
        waits.append(await store.ttl(lock))

    assert waits[:4] == [None, None, None, None]
    locked = [w for w in waits if w is not None]
    assert locked[0] <= 30 < locked[1] <= 60 < locked[2] <= 120
    assert max(locked) <= 900 and locked[-1] > 450


async def test_a_successful_login_resets_the_failure_count(client: httpx.AsyncClient) -> None:
    await register(client)
    for _ in range(4):
        await client.post(LOGIN, json={"email": "ada@example.com", "password": "wrong password"})
    assert (await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})).status_code == 200

    for _ in range(4):
        response = await client.post(LOGIN, json={"email": "ada@example.com", "password": "wrong password"})
        assert response.status_code == 401


async def test_per_ip_throttle_refuses_spraying_without_hashing(
    auth_settings: object, clock: object, redis_url: str
) -> None:
    import msgspec

    from auth_service.app import create_app

    settings = msgspec.structs.replace(auth_settings, ip_attempts_per_minute=10)  # type: ignore[type-var]
    app = create_app(settings, clock=clock)  # type: ignore[arg-type]
    async with app_client(app) as client:
        statuses = [
            (await client.post(LOGIN, json={"email": f"user{i}@example.com", "password": "wrong password"})).status_code
            for i in range(50)
        ]
        hashes = app.state.passwords.computations

    answered = statuses.count(401)
    assert answered + statuses.count(429) == 50
    # 10 a minute; when a minute ends during the run, its next 10 are let through as well.
    assert 10 <= answered <= 20
    assert hashes == answered  # throttled attempts never reach argon2


async def test_login_rehashes_a_hash_with_weaker_parameters(client: httpx.AsyncClient, auth_app: Litestar) -> None:
    from sqlalchemy import select, update

    from auth_service.models import User

    await register(client)
    weak = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PASSWORD)
    stronger = PasswordHasher(time_cost=3, memory_cost=19456, parallelism=1)
    auth_app.state.passwords.hasher = stronger
    async with auth_app.state.sessionmaker() as session, session.begin():
        await session.execute(update(User).values(password_hash=weak))

    response = await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})

    assert response.status_code == 200
    async with auth_app.state.sessionmaker() as session:
        stored = await session.scalar(select(User.password_hash))
    assert stored != weak and stored.startswith("$argon2id$v=19$m=19456,t=3,p=1$")
    assert not stronger.check_needs_rehash(stored)


async def test_stored_hashes_are_argon2id_with_unique_salts(client: httpx.AsyncClient, auth_app: Litestar) -> None:
    from sqlalchemy import select

    from auth_service.models import User

    for i in range(3):
        await register(client, f"same{i}@example.com", PASSWORD)

    async with auth_app.state.sessionmaker() as session:
        hashes = list(await session.scalars(select(User.password_hash)))
    assert len(set(hashes)) == 3
    assert all(h.startswith("$argon2id$v=19$m=19456,t=2,p=1$") for h in hashes)
    assert PASSWORD not in "".join(hashes)


async def test_hashing_runs_off_the_event_loop_thread(client: httpx.AsyncClient, auth_app: Litestar) -> None:
    import threading

    threads: list[threading.Thread] = []

    class RecordingHasher(PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            threads.append(threading.current_thread())
            return super().hash(password, salt=salt)

        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            threads.append(threading.current_thread())
            return super().verify(hash, password)

    auth_app.state.passwords.hasher = RecordingHasher(time_cost=2, memory_cost=19456, parallelism=1)

    await register(client)
    await client.post(LOGIN, json={"email": "ada@example.com", "password": PASSWORD})
    await client.post(LOGIN, json={"email": "nobody@example.com", "password": PASSWORD})

    assert len(threads) == 3
    assert threading.current_thread() not in threads
