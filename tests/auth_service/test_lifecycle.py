"""Password reset, email verification and address changes, each driven through the HTTP API with
the mail read from a real SMTP server (STARTTLS, password) in process."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import msgspec
import pytest

from auth_service.app import create_app
from auth_service.config import AuthSettings
from tests.auth_service.conftest import PASSWORD, Clock, bearer, mail_to, register, without_request_id
from tests.conftest import app_client
from tests.mail_server import Inbox, html_of, text_of, token_in
from tests.private_servers import PrivateRedis

AUTH = "/api/v1/auth"
NEW_PASSWORD = "a brand new passphrase"
CHECK_INBOX = {"detail": "If an account has this address, a message is on its way to it."}


@pytest.fixture
async def client(mail_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(mail_settings, clock=clock)) as test_client:
        yield test_client


@pytest.fixture
async def strict_client(mail_settings: AuthSettings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    """The service with REQUIRE_VERIFIED_EMAIL=true."""
    settings = msgspec.structs.replace(mail_settings, require_verified_email=True)
    async with app_client(create_app(settings, clock=clock)) as test_client:
        yield test_client


def claims(tokens: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return decoded


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post(f"{AUTH}/login", json={"email": email, "password": password})


# -- verification -------------------------------------------------------------------------------


async def test_registration_mails_a_verification_link_that_works_once(client: httpx.AsyncClient, inbox: Inbox) -> None:
    tokens = await register(client, "ada@example.com")
    assert tokens["user"]["email_verified"] is False
    assert claims(tokens)["email_verified"] is False

    mail = await mail_to(inbox, "ada@example.com")
    assert mail["Subject"] == "Confirm your email address"
    assert mail["From"] == "PyAirtable <no-reply@localhost>"
    assert mail["Message-ID"].endswith("@localhost>")
    assert "https://app.example.com/verify-email?token=" in text_of(mail)
    assert "ada@example.com" in html_of(mail)
    token = token_in(mail)
    assert len(token) >= 43  # 256 random bits, base64url

    verified = await client.post(f"{AUTH}/email/verify", json={"token": token})
    again = await client.post(f"{AUTH}/email/verify", json={"token": token})

    assert verified.status_code == 200, verified.text
    assert verified.json()["email_verified"] is True
    assert again.status_code == 400
    assert again.json()["code"] == "invalid-token"
    me = await client.get(f"{AUTH}/me", headers=bearer(tokens))
    assert me.json()["email_verified"] is True
    assert claims((await login(client, "ada@example.com")).json())["email_verified"] is True


async def test_a_verification_link_expires(client: httpx.AsyncClient, inbox: Inbox, clock: Clock) -> None:
    await register(client, "ada@example.com")
    token = token_in(await mail_to(inbox, "ada@example.com"))

    clock.advance(hours=24, seconds=1)
    response = await client.post(f"{AUTH}/email/verify", json={"token": token})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid-token"


async def test_resend_voids_the_older_link_and_answers_alike_for_every_address(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    await register(client, "ada@example.com")
    first = token_in(await mail_to(inbox, "ada@example.com"))
    await register(client, "bob@example.com")
    bob = token_in(await mail_to(inbox, "bob@example.com"))
    assert (await client.post(f"{AUTH}/email/verify", json={"token": bob})).status_code == 200

    answers = [
        await client.post(f"{AUTH}/email/verify/resend", json={"email": address})
        for address in ("ada@example.com", "nobody@example.com", "bob@example.com")
    ]

    assert {answer.status_code for answer in answers} == {202}
    assert all(without_request_id(answer.json()) == CHECK_INBOX for answer in answers)
    second = token_in(await mail_to(inbox, "ada@example.com", 2))
    assert (await client.post(f"{AUTH}/email/verify", json={"token": first})).status_code == 400
    assert (await client.post(f"{AUTH}/email/verify", json={"token": second})).status_code == 200
    assert inbox.to("nobody@example.com") == []
    assert len(inbox.to("bob@example.com")) == 1  # verified already: nothing to resend


async def test_resend_is_throttled_per_address(mail_settings: AuthSettings, clock: Clock, inbox: Inbox) -> None:
    settings = msgspec.structs.replace(mail_settings, mail_per_address_per_hour=2)
    async with app_client(create_app(settings, clock=clock)) as client:
        answers = [
            await client.post(f"{AUTH}/email/verify/resend", json={"email": "nobody@example.com"}) for _ in range(3)
        ]
        other = await client.post(f"{AUTH}/email/verify/resend", json={"email": "someone@example.com"})

    assert [answer.status_code for answer in answers] == [202, 202, 429]
    assert answers[2].json()["code"] == "too-many-attempts"
    assert int(answers[2].headers["retry-after"]) > 0
    assert other.status_code == 202


async def test_login_waits_for_a_verified_address_when_required(strict_client: httpx.AsyncClient, inbox: Inbox) -> None:
    registered = await strict_client.post(f"{AUTH}/register", json={"email": "ada@example.com", "password": PASSWORD})
    assert registered.status_code == 202
    assert "access_token" not in registered.json()

    wrong = await login(strict_client, "ada@example.com", "not the password")
    unverified = await login(strict_client, "ada@example.com")
    token = token_in(await mail_to(inbox, "ada@example.com"))
    await strict_client.post(f"{AUTH}/email/verify", json={"token": token})
    verified = await login(strict_client, "ada@example.com")

    assert wrong.status_code == 401  # the password is checked first: a 403 proves nothing to a guesser
    assert unverified.status_code == 403
    assert unverified.json()["code"] == "email-unverified"
    assert verified.status_code == 200
    assert claims(verified.json())["email_verified"] is True


async def test_registration_does_not_reveal_a_taken_address_when_verification_is_required(
    strict_client: httpx.AsyncClient, inbox: Inbox
) -> None:
    first = await strict_client.post(f"{AUTH}/register", json={"email": "ada@example.com", "password": PASSWORD})
    again = await strict_client.post(f"{AUTH}/register", json={"email": "ada@example.com", "password": NEW_PASSWORD})

    assert first.status_code == again.status_code == 202
    assert without_request_id(first.json()) == without_request_id(again.json())
    told = await mail_to(inbox, "ada@example.com", 2)
    assert told["Subject"] == "You already have an account"
    assert "https://app.example.com/forgot-password" in text_of(told)
    assert (await login(strict_client, "ada@example.com", NEW_PASSWORD)).status_code == 401


# -- password reset -----------------------------------------------------------------------------


async def test_a_reset_link_sets_the_password_once_and_ends_every_session(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    first = await register(client, "ada@example.com")
    second = (await login(client, "ada@example.com")).json()

    forgot = await client.post(f"{AUTH}/password/forgot", json={"email": "ADA@example.com "})
    mail = await mail_to(inbox, "ada@example.com", 2)  # the first is the verification
    assert mail["Subject"] == "Reset your password"
    token = token_in(mail)
    reset = await client.post(f"{AUTH}/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
    reused = await client.post(f"{AUTH}/password/reset", json={"token": token, "new_password": "yet another one!"})

    assert forgot.status_code == 202
    assert without_request_id(forgot.json()) == CHECK_INBOX
    assert reset.status_code == 204, reset.text
    assert reused.status_code == 400
    assert reused.json()["code"] == "invalid-token"
    for tokens in (first, second):
        assert (await client.get(f"{AUTH}/me", headers=bearer(tokens))).status_code == 401
        refreshed = await client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 401
    assert (await login(client, "ada@example.com")).status_code == 401
    signed_in = await login(client, "ada@example.com", NEW_PASSWORD)
    assert signed_in.status_code == 200
    assert claims(signed_in.json())["email_verified"] is True  # the link came to the address


async def test_a_reset_link_expires_after_30_minutes(client: httpx.AsyncClient, inbox: Inbox, clock: Clock) -> None:
    await register(client, "ada@example.com")
    await client.post(f"{AUTH}/password/forgot", json={"email": "ada@example.com"})
    token = token_in(await mail_to(inbox, "ada@example.com", 2))

    clock.advance(minutes=30, seconds=1)
    response = await client.post(f"{AUTH}/password/reset", json={"token": token, "new_password": NEW_PASSWORD})

    assert response.status_code == 400
    assert (await login(client, "ada@example.com")).status_code == 200


async def test_a_newer_reset_link_or_a_password_change_voids_the_older(client: httpx.AsyncClient, inbox: Inbox) -> None:
    tokens = await register(client, "ada@example.com")
    for _ in range(3):
        await client.post(f"{AUTH}/password/forgot", json={"email": "ada@example.com"})
    older = token_in(await mail_to(inbox, "ada@example.com", 2))
    newer = token_in(await mail_to(inbox, "ada@example.com", 3))
    newest = token_in(await mail_to(inbox, "ada@example.com", 4))

    voided = await client.post(f"{AUTH}/password/reset", json={"token": older, "new_password": NEW_PASSWORD})
    await client.post(
        f"{AUTH}/password", headers=bearer(tokens), json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )
    after_change = await client.post(f"{AUTH}/password/reset", json={"token": newest, "new_password": "other pass!"})

    assert voided.status_code == 400
    assert after_change.status_code == 400
    assert newer != newest
    assert (await login(client, "ada@example.com", NEW_PASSWORD)).status_code == 200


async def test_a_weak_new_password_leaves_the_link_usable(client: httpx.AsyncClient, inbox: Inbox) -> None:
    await register(client, "ada@example.com")
    await client.post(f"{AUTH}/password/forgot", json={"email": "ada@example.com"})
    token = token_in(await mail_to(inbox, "ada@example.com", 2))

    weak = await client.post(f"{AUTH}/password/reset", json={"token": token, "new_password": "short"})
    strong = await client.post(f"{AUTH}/password/reset", json={"token": token, "new_password": NEW_PASSWORD})

    assert weak.status_code == 422
    assert weak.json()["code"] == "weak-password"
    assert strong.status_code == 204


async def test_forgot_answers_alike_for_known_unknown_locked_and_unverified_addresses(
    client: httpx.AsyncClient, inbox: Inbox, strict_client: httpx.AsyncClient
) -> None:
    await register(client, "known@example.com")
    await register(client, "locked@example.com")
    for _ in range(6):
        await login(client, "locked@example.com", "wrong password!")
    assert (await login(client, "locked@example.com")).status_code == 429
    await strict_client.post(f"{AUTH}/register", json={"email": "unverified@example.com", "password": PASSWORD})
    addresses = ["known@example.com", "nobody@example.com", "locked@example.com", "unverified@example.com"]

    answers = [await client.post(f"{AUTH}/password/forgot", json={"email": address}) for address in addresses]

    assert [answer.status_code for answer in answers] == [202] * 4
    assert [without_request_id(answer.json()) for answer in answers] == [CHECK_INBOX] * 4
    assert {answer.headers["content-type"] for answer in answers} == {"application/json"}
    for address in ("known@example.com", "locked@example.com", "unverified@example.com"):
        assert (await mail_to(inbox, address, 2))["Subject"] == "Reset your password"
    assert inbox.to("nobody@example.com") == []
    # The reset unlocks the account its owner proved to hold.
    token = token_in(inbox.to("locked@example.com")[1])
    await client.post(f"{AUTH}/password/reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert (await login(client, "locked@example.com", NEW_PASSWORD)).status_code == 200


async def test_forgot_is_throttled_per_address_and_per_ip(mail_settings: AuthSettings, clock: Clock) -> None:
    settings = msgspec.structs.replace(mail_settings, mail_per_address_per_hour=2, ip_attempts_per_minute=4)
    async with app_client(create_app(settings, clock=clock)) as client:
        same_address = [
            await client.post(f"{AUTH}/password/forgot", json={"email": "nobody@example.com"}) for _ in range(3)
        ]
        other_addresses = [
            await client.post(f"{AUTH}/password/forgot", json={"email": f"n{i}@example.com"}) for i in range(2)
        ]

    assert [answer.status_code for answer in same_address] == [202, 202, 429]
    assert [answer.status_code for answer in other_addresses] == [202, 429]  # the fifth from this IP
    assert other_addresses[1].json()["code"] == "too-many-attempts"


# -- change of address --------------------------------------------------------------------------


async def test_a_new_address_takes_effect_once_verified_and_the_old_one_is_told(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    tokens = await register(client, "ada@example.com")
    asked = await client.put(
        f"{AUTH}/email", headers=bearer(tokens), json={"current_password": PASSWORD, "new_email": "Ada@Lovelace.org"}
    )
    assert asked.status_code == 202
    assert asked.json()["email"] == "ada@example.com"
    assert (await client.get(f"{AUTH}/me", headers=bearer(tokens))).json()["email"] == "ada@example.com"

    mail = await mail_to(inbox, "ada@lovelace.org")
    assert mail["Subject"] == "Confirm your new email address"
    verified = await client.post(f"{AUTH}/email/verify", json={"token": token_in(mail)})

    assert verified.status_code == 200
    assert verified.json()["email"] == "ada@lovelace.org"
    assert verified.json()["email_verified"] is True
    notice = await mail_to(inbox, "ada@example.com", 2)
    assert notice["Subject"] == "Your account's email address was changed"
    assert "ada@lovelace.org" in text_of(notice)
    assert (await login(client, "ada@lovelace.org")).status_code == 200
    assert (await login(client, "ada@example.com")).status_code == 401


async def test_a_new_address_taken_meanwhile_is_refused(client: httpx.AsyncClient, inbox: Inbox) -> None:
    tokens = await register(client, "ada@example.com")
    await client.put(
        f"{AUTH}/email", headers=bearer(tokens), json={"current_password": PASSWORD, "new_email": "new@example.com"}
    )
    token = token_in(await mail_to(inbox, "new@example.com"))
    await register(client, "new@example.com")

    response = await client.post(f"{AUTH}/email/verify", json={"token": token})

    assert response.status_code == 409
    assert response.json()["code"] == "email-taken"
    assert (await client.get(f"{AUTH}/me", headers=bearer(tokens))).json()["email"] == "ada@example.com"


# -- Redis is an accelerator --------------------------------------------------------------------


async def test_with_redis_down_forgot_still_answers_and_the_link_comes_once_it_returns(
    mail_settings: AuthSettings, clock: Clock, inbox: Inbox, private_redis: PrivateRedis
) -> None:
    settings = msgspec.structs.replace(
        mail_settings, redis_url=private_redis.url, redis_breaker_failures=2, redis_breaker_reset_seconds=0.5
    )
    async with app_client(create_app(settings, clock=clock)) as client:
        await register(client, "ada@example.com")
        await mail_to(inbox, "ada@example.com")
        private_redis.kill()

        forgot = await client.post(f"{AUTH}/password/forgot", json={"email": "ada@example.com"})
        assert forgot.status_code == 202, forgot.text
        assert without_request_id(forgot.json()) == CHECK_INBOX

        private_redis.start()
        token = token_in(await mail_to(inbox, "ada@example.com", 2))
        reset = await client.post(f"{AUTH}/password/reset", json={"token": token, "new_password": NEW_PASSWORD})

    assert reset.status_code == 204, reset.text
