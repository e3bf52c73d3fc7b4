"""Issue 11 item 4: logs carry no secrets or personal data. The error cases of the issue run
through the gateway (every service in-process on PostgreSQL) while every log line is captured, then
each line is searched for passwords, hashes, tokens and email addresses."""

import io
import logging
from collections.abc import Iterator

import httpx
import pytest

from shared.logs import JSONFormatter
from tests.hostile.conftest import API_KEY, Platform, send_all
from tests.hostile.requests import Generator

EMAIL = "log-scan-user@example.com"
PASSWORD = "correct horse battery staple 42"
WRONG = "Tr0ub4dor&3 is not it"
NUL_EMAIL = "a\u0000b@example.com"


@pytest.fixture
def every_log_line() -> Iterator[io.StringIO]:
    """Every record any logger emits, as the services' JSON lines, from DEBUG up."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JSONFormatter("platform"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    quiet = logging.getLogger("httpx")  # the test's own client logs the URLs it calls
    quiet_level = quiet.level
    quiet.setLevel(logging.WARNING)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(previous)
    quiet.setLevel(quiet_level)


async def test_no_log_line_holds_a_secret_or_an_email(
    platform: Platform, every_log_line: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    transport = httpx.ASGITransport(app=platform.gateway, client=("127.0.3.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        registered = await client.post("/api/v1/auth/register", json={"email": EMAIL, "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        tokens = registered.json()
        twice = await client.post("/api/v1/auth/register", json={"email": EMAIL, "password": PASSWORD})
        wrong = await client.post("/api/v1/auth/login", json={"email": EMAIL, "password": WRONG})
        nul = await client.post("/api/v1/auth/login", json={"email": NUL_EMAIL, "password": PASSWORD})
        rotated = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        legacy = await client.post(
            "/login", json={"email": NUL_EMAIL, "password": WRONG}, headers={"x-api-key": API_KEY}
        )
        profile = await client.patch(
            "/api/v1/users/me",
            json={"first_name": "Ada\u0000", "preferences": {"a": 1}},
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        bearer = {"Authorization": f"Bearer {rotated.json()['access_token']}"}
        created = await client.post(
            "/api/v1/auth/api-keys", json={"name": "ci", "scopes": ["users:read"]}, headers=bearer
        )
        api_key = created.json()["key"]
        keyed = await client.get("/api/v1/users/me", headers={"X-API-Key": api_key})
        await client.delete(f"/api/v1/auth/api-keys/{created.json()['id']}", headers=bearer)
        revoked = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {api_key}"})
    assert (created.status_code, keyed.status_code, revoked.status_code) == (201, 200, 401)
    assert (twice.status_code, wrong.status_code, nul.status_code) == (409, 401, 422)
    assert (rotated.status_code, legacy.status_code, profile.status_code) == (200, 422, 422)
    # And the hostile suite's auth and users operations, through the gateway.
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        document = (await client.get("/api/v1/openapi.json")).json()
    generated = Generator(document).requests()
    await send_all(
        platform.gateway, [item for item in generated if item.path.startswith(("/api/v1/auth", "/api/v1/users"))]
    )

    text = every_log_line.getvalue() + capsys.readouterr().out  # the gateway writes its access log itself
    for expected in ('"msg":"user registered"', '"msg":"login failed"', '"msg":"request"'):
        assert expected in text, "the cases above are logged"
    secrets = [
        PASSWORD,
        WRONG,
        EMAIL,
        NUL_EMAIL,
        "a\\u0000b@example.com",
        "hostile@example.com",  # the suite's sample email
        "$argon2",
        "Bearer ",
        "eyJ",  # the start of every JWT
        tokens["access_token"],
        tokens["refresh_token"],
        rotated.json()["refresh_token"],
        api_key,
        api_key.split("_", 2)[2],  # the key's secret part
    ]
    leaked = [secret for secret in secrets if secret in text]
    lines = [line for line in text.splitlines() if any(secret in line for secret in leaked)]
    assert not leaked, "\n".join(lines[:5])
