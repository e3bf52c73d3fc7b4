"""Two-factor sign-in through the gateway in front of the real auth service: the second step is
public under the strict ``auth`` policy, and the older platform's login says what it cannot do."""

from typing import Any

import httpx
import pyotp
from litestar import Litestar

from gateway.app import create_app
from tests.auth_service.conftest import Clock
from tests.conftest import app_client
from tests.gateway.conftest import AUTH, PASSWORD, USERS, SettingsFactory, assert_problem, bearer
from tests.gateway.echo import Echo
from tests.gateway.test_ratelimit import rate_limit

API_KEY = "legacy-clients-key-0123456789"
LOGIN = {"email": "ada@example.com", "password": PASSWORD}


async def ada_with_two_factor(client: httpx.AsyncClient, clock: Clock) -> str:
    """Ada registered through the gateway, two-factor on; her TOTP secret (the clock a step on)."""
    registered = await client.post(f"{AUTH}/register", json=LOGIN)
    assert registered.status_code == 201, registered.text
    headers = bearer(registered.json()["access_token"])
    enrolled = await client.post(f"{AUTH}/2fa/enroll", json={"password": PASSWORD}, headers=headers)
    assert enrolled.status_code == 201, enrolled.text
    secret: str = enrolled.json()["secret"]
    code = pyotp.TOTP(secret).at(clock.now)
    confirmed = await client.post(f"{AUTH}/2fa/confirm", json={"code": code}, headers=headers)
    assert confirmed.status_code == 200, confirmed.text
    clock.advance(seconds=30)
    return secret


async def test_the_second_step_is_public_under_the_auth_policy(
    make_settings: SettingsFactory, auth_app: Litestar, clock: Clock
) -> None:
    settings = make_settings(request_timeout=10.0, auth_rate_limit_per_minute=20, auth_rate_limit_burst=20)
    async with app_client(create_app(settings, services={AUTH: auth_app, USERS: Echo(USERS)})) as client:
        secret = await ada_with_two_factor(client, clock)
        first = await client.post(f"{AUTH}/login", json=LOGIN)
        challenge: dict[str, Any] = first.json()

        second = await client.post(
            f"{AUTH}/login/mfa", json={"challenge": challenge["challenge"], "code": pyotp.TOTP(secret).at(clock.now)}
        )

    assert challenge["mfa_required"] is True
    assert second.status_code == 200, second.text
    assert second.json()["access_token"]
    limits = rate_limit(second)
    assert (limits["name"], limits["q"]) == ("auth", 20)


async def test_the_older_login_of_an_account_with_two_factor_is_a_403_not_a_token(
    make_settings: SettingsFactory, auth_app: Litestar, clock: Clock
) -> None:
    settings = make_settings(api_key=API_KEY, request_timeout=10.0)
    async with app_client(create_app(settings, services={AUTH: auth_app, USERS: Echo(USERS)})) as client:
        await ada_with_two_factor(client, clock)

        response = await client.post("/auth/login", json=LOGIN, headers={"X-API-Key": API_KEY})

    body = assert_problem(response, 403, "mfa-required")
    assert "/api/v1/auth/login/mfa" in body["detail"]
    assert "access_token" not in body
