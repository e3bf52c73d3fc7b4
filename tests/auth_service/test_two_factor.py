"""Two-factor sign-in: TOTP (RFC 6238) on the test's own clock, recovery codes, replay, throttling,
disabling and the administrator's reset, against the real service, PostgreSQL and Redis."""

import asyncio
import base64
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import png  # type: ignore[import-untyped]
import psycopg
import pyotp
import pytest
import zxingcpp
from litestar import Litestar

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared import migrations
from tests.auth_service.conftest import PASSWORD, Clock, admin_headers, bearer, register
from tests.conftest import app_client, eventually
from tests.mail_server import Inbox
from tests.private_servers import PrivateRedis

AUTH = "/api/v1/auth"
LOGIN = {"email": "ada@example.com", "password": PASSWORD}
ALLOWED_FAILURES = 5  # LOGIN_FAILURES_BEFORE_LOCKOUT's default


def code_at(secret: str, clock: Clock) -> str:
    return pyotp.TOTP(secret).at(clock.now)


def decode_qr_png(data_uri: str) -> list[str]:
    """The texts of the QR codes in a PNG data URI, read back with a real decoder."""
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    width, height, rows, info = png.Reader(bytes=base64.b64decode(data_uri[len(prefix) :])).asDirect()
    assert info["greyscale"] and info["planes"] == 1
    top = (1 << info["bitdepth"]) - 1
    pixels = bytes(value * 255 // top for row in rows for value in row)
    return [found.text for found in zxingcpp.read_barcodes(memoryview(pixels).cast("B", (height, width)))]


async def enrol(client: httpx.AsyncClient, tokens: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"{AUTH}/2fa/enroll", json={"password": PASSWORD}, headers=bearer(tokens))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def turn_on(client: httpx.AsyncClient, clock: Clock) -> tuple[dict[str, Any], str, list[str]]:
    """Ada, registered, with two-factor on: her tokens, TOTP secret and recovery codes. The clock
    has moved on a step, so the confirmation's code is spent and the next one is fresh."""
    tokens = await register(client)
    secret, codes = await enable(client, tokens, clock)
    return tokens, secret, codes


async def enable(client: httpx.AsyncClient, tokens: dict[str, Any], clock: Clock) -> tuple[str, list[str]]:
    secret = (await enrol(client, tokens))["secret"]
    confirmed = await client.post(f"{AUTH}/2fa/confirm", json={"code": code_at(secret, clock)}, headers=bearer(tokens))
    assert confirmed.status_code == 200, confirmed.text
    clock.advance(seconds=30)
    return secret, confirmed.json()["recovery_codes"]


async def challenge(client: httpx.AsyncClient, query: str = "") -> str:
    response = await client.post(f"{AUTH}/login{query}", json=LOGIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mfa_required"] is True
    assert "access_token" not in body and "refresh_token" not in body
    value: str = body["challenge"]
    return value


async def second_step(client: httpx.AsyncClient, challenge_: str, code: str) -> httpx.Response:
    return await client.post(f"{AUTH}/login/mfa", json={"challenge": challenge_, "code": code})


async def test_enrolment_gives_a_secret_its_uri_and_a_qr_code_of_it(client: httpx.AsyncClient) -> None:
    tokens = await register(client)

    enrolment = await enrol(client, tokens)

    uri = enrolment["otpauth_uri"]
    assert uri.startswith("otpauth://totp/PyAirtable:ada%40example.com?")
    assert pyotp.parse_uri(uri).secret == enrolment["secret"]
    assert decode_qr_png(enrolment["qr_code"]) == [uri]
    status = (await client.get(f"{AUTH}/2fa", headers=bearer(tokens))).json()
    assert status == {"enabled": False, "pending": True, "recovery_codes_left": 0}


async def test_until_confirmed_the_password_alone_still_signs_in(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    await enrol(client, tokens)

    response = await client.post(f"{AUTH}/login", json=LOGIN)

    assert response.status_code == 200
    assert "access_token" in response.json()


async def test_enrolment_asks_for_the_password(client: httpx.AsyncClient) -> None:
    tokens = await register(client)

    response = await client.post(f"{AUTH}/2fa/enroll", json={"password": "not the password"}, headers=bearer(tokens))

    assert response.status_code == 401
    assert (await client.get(f"{AUTH}/2fa", headers=bearer(tokens))).json()["pending"] is False


async def test_a_wrong_first_code_does_not_turn_two_factor_on(client: httpx.AsyncClient, clock: Clock) -> None:
    tokens = await register(client)
    secret = (await enrol(client, tokens))["secret"]
    wrong = pyotp.TOTP(secret).at(clock.now, counter_offset=5)

    response = await client.post(f"{AUTH}/2fa/confirm", json={"code": wrong}, headers=bearer(tokens))

    assert response.status_code == 401
    assert response.json()["code"] == "invalid-code"
    assert (await client.get(f"{AUTH}/2fa", headers=bearer(tokens))).json()["enabled"] is False


async def test_confirmation_gives_ten_different_recovery_codes(client: httpx.AsyncClient, clock: Clock) -> None:
    tokens, _, codes = await turn_on(client, clock)

    assert len(set(codes)) == 10
    status = (await client.get(f"{AUTH}/2fa", headers=bearer(tokens))).json()
    assert status == {"enabled": True, "pending": False, "recovery_codes_left": 10}
    again = await client.post(f"{AUTH}/2fa/enroll", json={"password": PASSWORD}, headers=bearer(tokens))
    assert again.status_code == 409
    assert again.json()["code"] == "two-factor-enabled"


async def test_sign_in_takes_the_password_then_a_code(client: httpx.AsyncClient, clock: Clock) -> None:
    _, secret, _ = await turn_on(client, clock)

    signed_in = await second_step(client, await challenge(client), code_at(secret, clock))

    assert signed_in.status_code == 200, signed_in.text
    body = signed_in.json()
    assert body["user"]["email"] == "ada@example.com"
    assert (await client.get(f"{AUTH}/me", headers=bearer(body))).status_code == 200
    refreshed = await client.post(f"{AUTH}/refresh", json={"refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200


async def test_a_wrong_password_gets_no_challenge(client: httpx.AsyncClient, clock: Clock) -> None:
    await turn_on(client, clock)

    response = await client.post(f"{AUTH}/login", json={**LOGIN, "password": "not the password"})

    assert response.status_code == 401
    assert "challenge" not in response.json()


async def test_codes_of_the_neighbouring_steps_are_accepted_and_no_further(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    _, secret, _ = await turn_on(client, clock)
    clock.advance(seconds=60)  # the confirmation's step is three behind: the two before are unused
    totp = pyotp.TOTP(secret)

    too_old = await second_step(client, await challenge(client), totp.at(clock.now, counter_offset=-2))
    previous = await second_step(client, await challenge(client), totp.at(clock.now, counter_offset=-1))
    clock.advance(seconds=30)
    next_one = await second_step(client, await challenge(client), totp.at(clock.now, counter_offset=1))

    assert too_old.status_code == 401
    assert previous.status_code == 200, previous.text
    assert next_one.status_code == 200, next_one.text


async def test_a_code_works_once(client: httpx.AsyncClient, clock: Clock) -> None:
    _, secret, _ = await turn_on(client, clock)
    code = code_at(secret, clock)
    assert (await second_step(client, await challenge(client), code)).status_code == 200

    replayed = await second_step(client, await challenge(client), code)

    assert replayed.status_code == 401
    assert replayed.json()["code"] == "invalid-code"
    clock.advance(seconds=30)
    assert (await second_step(client, await challenge(client), code_at(secret, clock))).status_code == 200


async def test_one_code_sent_on_several_challenges_at_once_signs_in_once(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    _, secret, _ = await turn_on(client, clock)
    challenges = [await challenge(client) for _ in range(5)]
    code = code_at(secret, clock)

    answers = await asyncio.gather(*(second_step(client, c, code) for c in challenges))

    assert [a.status_code for a in answers].count(200) == 1


async def test_a_challenge_does_not_take_the_code_of_an_authenticator_not_yet_confirmed(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    tokens, secret, _ = await turn_on(client, clock)
    pending = await challenge(client)
    disabled = await client.post(
        f"{AUTH}/2fa/disable", json={"password": PASSWORD, "code": code_at(secret, clock)}, headers=bearer(tokens)
    )
    assert disabled.status_code == 204
    clock.advance(seconds=30)
    new_secret = (await enrol(client, tokens))["secret"]

    response = await second_step(client, pending, code_at(new_secret, clock))

    assert response.status_code == 401


async def test_a_challenge_works_once_and_expires(client: httpx.AsyncClient, clock: Clock) -> None:
    _, secret, _ = await turn_on(client, clock)
    used = await challenge(client)
    assert (await second_step(client, used, code_at(secret, clock))).status_code == 200
    clock.advance(seconds=30)

    reused = await second_step(client, used, code_at(secret, clock))
    stale = await challenge(client)
    clock.advance(seconds=301)  # MFA_CHALLENGE_TTL's default is 300
    expired = await second_step(client, stale, code_at(secret, clock))
    made_up = await second_step(client, "not-a-challenge", code_at(secret, clock))

    for response in (reused, expired, made_up):
        assert response.status_code == 401
        assert response.json()["code"] == "invalid-challenge"


async def test_a_wrong_code_leaves_the_challenge_for_a_retry(client: httpx.AsyncClient, clock: Clock) -> None:
    _, secret, _ = await turn_on(client, clock)
    pending = await challenge(client)

    typo = await second_step(client, pending, pyotp.TOTP(secret).at(clock.now, counter_offset=7))
    retried = await second_step(client, pending, code_at(secret, clock))

    assert typo.status_code == 401
    assert retried.status_code == 200


async def test_a_recovery_code_signs_in_once(client: httpx.AsyncClient, clock: Clock) -> None:
    tokens, _, codes = await turn_on(client, clock)

    first = await second_step(client, await challenge(client), codes[0].upper().replace("-", " "))
    again = await second_step(client, await challenge(client), codes[0])
    another = await second_step(client, await challenge(client), codes[1])

    assert first.status_code == 200, first.text
    assert again.status_code == 401
    assert another.status_code == 200
    assert (await client.get(f"{AUTH}/2fa", headers=bearer(tokens))).json()["recovery_codes_left"] == 8


async def test_renewed_recovery_codes_replace_the_earlier_ones(client: httpx.AsyncClient, clock: Clock) -> None:
    tokens, secret, old_codes = await turn_on(client, clock)
    renew = f"{AUTH}/2fa/recovery-codes"

    wrong_password = await client.post(
        renew, json={"password": "not the password", "code": code_at(secret, clock)}, headers=bearer(tokens)
    )
    renewed = await client.post(renew, json={"password": PASSWORD, "code": old_codes[0]}, headers=bearer(tokens))

    assert wrong_password.status_code == 401
    assert renewed.status_code == 200, renewed.text
    new_codes = renewed.json()["recovery_codes"]
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    assert (await second_step(client, await challenge(client), old_codes[1])).status_code == 401
    assert (await second_step(client, await challenge(client), new_codes[0])).status_code == 200


async def test_a_recovery_code_of_another_account_is_refused(client: httpx.AsyncClient, clock: Clock) -> None:
    await turn_on(client, clock)
    grace = await register(client, "grace@example.com")
    grace_secret = (await enrol(client, grace))["secret"]
    confirmed = await client.post(
        f"{AUTH}/2fa/confirm", json={"code": code_at(grace_secret, clock)}, headers=bearer(grace)
    )
    graces_code = confirmed.json()["recovery_codes"][0]

    response = await second_step(client, await challenge(client), graces_code)

    assert response.status_code == 401


async def test_wrong_codes_lock_the_second_factor_out_and_a_right_password_does_not_unlock_it(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    _, secret, _ = await turn_on(client, clock)
    wrong = pyotp.TOTP(secret).at(clock.now, counter_offset=9)

    failures = []
    for _ in range(ALLOWED_FAILURES):
        failures.append((await second_step(client, await challenge(client), wrong)).status_code)
    locked = await second_step(client, await challenge(client), code_at(secret, clock))

    assert failures == [401] * ALLOWED_FAILURES
    assert locked.status_code == 429
    assert locked.json()["code"] == "too-many-attempts"
    assert int(locked.headers["Retry-After"]) >= 1
    # The lock-out is the second factor's: the password still gets its challenge, no further.
    assert (await second_step(client, await challenge(client), code_at(secret, clock))).status_code == 429


async def test_the_lock_out_holds_for_codes_sent_in_parallel(client: httpx.AsyncClient, clock: Clock) -> None:
    _, secret, _ = await turn_on(client, clock)
    challenges = [await challenge(client) for _ in range(20)]
    wrong = pyotp.TOTP(secret).at(clock.now, counter_offset=9)

    answers = await asyncio.gather(*(second_step(client, c, wrong) for c in challenges))

    statuses = [a.status_code for a in answers]
    assert statuses.count(401) <= ALLOWED_FAILURES
    assert set(statuses) <= {401, 429}


async def test_disable_needs_the_password_and_a_code(client: httpx.AsyncClient, clock: Clock) -> None:
    tokens, secret, _ = await turn_on(client, clock)
    disable = f"{AUTH}/2fa/disable"

    wrong_password = await client.post(
        disable, json={"password": "not the password", "code": code_at(secret, clock)}, headers=bearer(tokens)
    )
    wrong_code = await client.post(disable, json={"password": PASSWORD, "code": "000000"}, headers=bearer(tokens))
    disabled = await client.post(
        disable, json={"password": PASSWORD, "code": code_at(secret, clock)}, headers=bearer(tokens)
    )

    assert wrong_password.status_code == 401
    assert wrong_code.status_code == 401
    assert disabled.status_code == 204, disabled.text
    assert (await client.get(f"{AUTH}/2fa", headers=bearer(tokens))).json()["enabled"] is False
    login = await client.post(f"{AUTH}/login", json=LOGIN)
    assert "access_token" in login.json()
    again = await client.post(disable, json={"password": PASSWORD, "code": "123456"}, headers=bearer(tokens))
    assert again.status_code == 409


async def test_a_recovery_code_can_disable(client: httpx.AsyncClient, clock: Clock) -> None:
    tokens, _, codes = await turn_on(client, clock)

    disabled = await client.post(
        f"{AUTH}/2fa/disable", json={"password": PASSWORD, "code": codes[3]}, headers=bearer(tokens)
    )

    assert disabled.status_code == 204


async def test_an_administrator_resets_two_factor(client: httpx.AsyncClient, clock: Clock) -> None:
    tokens, _, _ = await turn_on(client, clock)
    path = f"{AUTH}/users/{tokens['user']['id']}/2fa"

    by_the_user = await client.delete(path, headers=bearer(tokens))
    by_an_admin = await client.delete(path, headers=admin_headers())
    unknown = await client.delete(f"{AUTH}/users/{uuid.uuid4()}/2fa", headers=admin_headers())

    assert by_the_user.status_code == 403
    assert by_an_admin.status_code == 204, by_an_admin.text
    assert unknown.status_code == 404
    login = await client.post(f"{AUTH}/login", json=LOGIN)
    assert "access_token" in login.json()
    # And the user may enrol again.
    assert (await enrol(client, tokens))["secret"]


async def test_the_legacy_lifetime_survives_the_second_step(auth_settings: AuthSettings, clock: Clock) -> None:
    settings = msgspec.structs.replace(auth_settings, jwt_expires_in="24h")
    async with app_client(create_app(settings, clock=clock)) as client:
        _, secret, _ = await turn_on(client, clock)

        signed_in = await second_step(client, await challenge(client, "?lifetime=legacy"), code_at(secret, clock))

    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["expires_in"] == 86400


async def test_the_secret_is_stored_encrypted_and_never_logged(
    client: httpx.AsyncClient, clock: Clock, auth_settings: AuthSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        tokens, secret, codes = await turn_on(client, clock)
        await second_step(client, await challenge(client), code_at(secret, clock))
        await second_step(client, await challenge(client), codes[0])

    with psycopg.connect(auth_settings.database_url) as conn:
        stored = conn.execute("SELECT secret FROM two_factor").fetchone()
        hashes = [row[0] for row in conn.execute("SELECT code_hash FROM recovery_codes")]
    assert stored is not None
    assert secret.encode() not in bytes(stored[0])
    assert base64.b32decode(secret) not in bytes(stored[0])
    assert not set(codes) & set(hashes)
    logged = " ".join(str(vars(record)) for record in caplog.records)
    assert "two-factor turned on" in logged
    for value in (secret, *codes, tokens["access_token"]):
        assert value not in logged


async def test_a_secret_does_not_decrypt_under_another_key(
    auth_settings: AuthSettings, clock: Clock, auth_app: Litestar, client: httpx.AsyncClient
) -> None:
    _, secret, _ = await turn_on(client, clock)
    other = msgspec.structs.replace(auth_settings, totp_encryption_key="another key, at least 32 bytes long!")
    async with app_client(create_app(other, clock=clock)) as elsewhere:
        response = await second_step(elsewhere, await challenge(elsewhere), code_at(secret, clock))

    assert response.status_code == 503
    assert response.json()["code"] == "two-factor-unavailable"


async def test_production_without_a_key_refuses_enrolment(auth_settings: AuthSettings, clock: Clock) -> None:
    settings = msgspec.structs.replace(auth_settings, environment="production", totp_encryption_key="")
    async with app_client(create_app(settings, clock=clock)) as client:
        tokens = await register(client)
        response = await client.post(f"{AUTH}/2fa/enroll", json={"password": PASSWORD}, headers=bearer(tokens))

    assert response.status_code == 503
    assert response.json()["code"] == "two-factor-unavailable"


@pytest.mark.parametrize(
    "body",
    [
        {"challenge": "", "code": "123456"},
        {"challenge": "x" * 600, "code": "123456"},
        {"challenge": "abc", "code": "1" * 65},
        {"challenge": "abc"},
        {"challenge": "abc", "code": 123456},
        {"challenge": "abc", "code": "12\x0034"},
    ],
)
async def test_malformed_second_steps_are_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post(f"{AUTH}/login/mfa", json=body)

    assert response.status_code == 422, response.text


async def test_turning_two_factor_off_is_told_to_the_address(
    mail_settings: AuthSettings, clock: Clock, inbox: Inbox
) -> None:
    async with app_client(create_app(mail_settings, clock=clock)) as client:
        tokens, secret, _ = await turn_on(client, clock)
        disabled = await client.post(
            f"{AUTH}/2fa/disable", json={"password": PASSWORD, "code": code_at(secret, clock)}, headers=bearer(tokens)
        )
        assert disabled.status_code == 204
        by_the_user = await eventually(lambda: told_of_two_factor_off(inbox), "the mail of the user's disable")
        await enable(client, tokens, clock)
        reset = await client.delete(f"{AUTH}/users/{tokens['user']['id']}/2fa", headers=admin_headers())
        assert reset.status_code == 204
        await eventually(lambda: len(told_of_two_factor_off(inbox)) == 2, "the mail of the admin's reset")

    assert "by you" in by_the_user[0].get_body(("plain",)).get_content()
    assert "by an administrator" in told_of_two_factor_off(inbox)[1].get_body(("plain",)).get_content()
    assert secret not in str(told_of_two_factor_off(inbox)[0])


def told_of_two_factor_off(inbox: Inbox) -> list[Any]:
    return [m for m in inbox.to("ada@example.com") if m["Subject"] == "Two-factor sign-in was turned off"]


async def test_with_redis_down_two_factor_sign_in_still_works(
    auth_settings: AuthSettings, clock: Clock, private_redis: PrivateRedis
) -> None:
    settings = msgspec.structs.replace(
        auth_settings, redis_url=private_redis.url, redis_breaker_failures=2, redis_breaker_reset_seconds=0.5
    )
    async with app_client(create_app(settings, clock=clock)) as client:
        _, secret, _ = await turn_on(client, clock)
        private_redis.kill()

        signed_in = await second_step(client, await challenge(client), code_at(secret, clock))
        replayed = await second_step(client, await challenge(client), code_at(secret, clock))

    assert signed_in.status_code == 200, signed_in.text
    assert replayed.status_code == 401  # the used step lives in PostgreSQL, not in Redis


@pytest.fixture
def sqlite_settings(auth_settings: AuthSettings, tmp_path: Path) -> AuthSettings:
    """The auth service on a migrated SQLite file and the in-process store, as the embedded mode runs it."""
    settings = msgspec.structs.replace(
        auth_settings, database_url=f"sqlite:///{tmp_path}/auth.sqlite3", redis_url="", data_dir=str(tmp_path)
    )
    migrations.upgrade(settings, "auth_service")
    return settings


async def test_two_factor_works_on_sqlite_as_the_embedded_mode_runs_it(
    sqlite_settings: AuthSettings, clock: Clock, tmp_path: Path
) -> None:
    async with app_client(create_app(sqlite_settings, clock=clock)) as client:
        _, secret, codes = await turn_on(client, clock)

        signed_in = await second_step(client, await challenge(client), code_at(secret, clock))
        replayed = await second_step(client, await challenge(client), code_at(secret, clock))
        recovered = await second_step(client, await challenge(client), codes[0])

    assert (signed_in.status_code, replayed.status_code, recovered.status_code) == (200, 401, 200)
    assert (tmp_path / "totp_key").exists()  # development: the key generated into DATA_DIR
