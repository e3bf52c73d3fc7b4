"""Routes that ask a signed-in user for the current password (change password, change email)
count wrong guesses against the account like sign-in does: a stolen access token cannot be used to
guess the password, and the lock it runs into is the account's own."""

import httpx
import pytest

from tests.auth_service.conftest import PASSWORD, bearer, register

AUTH = "/api/v1/auth"
WRONG = "not the password at all"


def attempt(route: str, current_password: str) -> tuple[str, str, dict[str, str]]:
    if route == "password":
        return "POST", f"{AUTH}/password", {"current_password": current_password, "new_password": "a new long password"}
    return "PUT", f"{AUTH}/email", {"current_password": current_password, "new_email": "new-address@example.com"}


@pytest.mark.parametrize("route", ["password", "email"])
async def test_wrong_current_passwords_lock_the_account_and_sign_in_with_it(
    client: httpx.AsyncClient, route: str
) -> None:
    tokens = await register(client, "guessed@example.com")
    statuses = []
    for _ in range(5):
        method, url, body = attempt(route, WRONG)
        statuses.append((await client.request(method, url, json=body, headers=bearer(tokens))).status_code)
    method, url, body = attempt(route, PASSWORD)
    locked = await client.request(method, url, json=body, headers=bearer(tokens))
    login = await client.post(f"{AUTH}/login", json={"email": "guessed@example.com", "password": PASSWORD})

    assert statuses == [401] * 5
    assert locked.status_code == 429, "even the right password waits out the lock"
    assert int(locked.headers["retry-after"]) >= 1
    assert login.status_code == 429, "the lock is the account's: sign-in is locked too"
    me = await client.get(f"{AUTH}/me", headers=bearer(tokens))
    assert me.json()["email"] == "guessed@example.com", "nothing was changed"
