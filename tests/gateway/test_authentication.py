"""Public and protected routes, and the access-token rejection matrix, at the gateway.

The gateway verifies every protected request itself: a missing, forged, stale or revoked token
is a 401 problem+json with ``WWW-Authenticate`` and the upstream never sees the request.
"""

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from embedded.app import create_app as create_embedded_app
from gateway.app import create_app
from shared.events import InMemoryBus
from shared.stores import MemoryStore
from tests.auth_service.conftest import FAST_ARGON2, JWT_SECRET, PASSWORD
from tests.conftest import app_client, changed, eventually
from tests.gateway.conftest import (
    AUTH,
    KID,
    USERS,
    SettingsFactory,
    access_token,
    assert_invalid_token,
    assert_problem,
    bearer,
    claims,
    register,
)
from tests.gateway.echo import Echo

ME = f"{AUTH}/me"


# -- public and protected -----------------------------------------------------------------------


async def test_register_login_refresh_and_jwks_need_no_token(platform_client: httpx.AsyncClient) -> None:
    tokens = await register(platform_client)
    login = await platform_client.post(f"{AUTH}/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert login.status_code == 200, login.text
    refreshed = await platform_client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] != tokens["refresh_token"]
    # With HS256 the auth service has no JWKS to publish (its own 404); the gateway let it through.
    jwks = await platform_client.get(f"{AUTH}/.well-known/jwks.json")
    assert_problem(jwks, 404)
    assert "www-authenticate" not in jwks.headers


@pytest.fixture
async def echoes(make_settings: SettingsFactory) -> AsyncIterator[tuple[httpx.AsyncClient, Echo, Echo]]:
    """Echoes at both prefixes: what the gateway lets through to auth is visible too."""
    auth_echo, users_echo = Echo(AUTH), Echo(USERS)
    app = create_app(make_settings(), services={AUTH: auth_echo, USERS: users_echo})
    async with app_client(app) as client:
        yield client, auth_echo, users_echo


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"{AUTH}/register"),
        ("POST", f"{AUTH}/login"),
        ("POST", f"{AUTH}/refresh"),
        ("GET", f"{AUTH}/.well-known/jwks.json"),
        ("POST", f"{AUTH}/login/"),
        ("POST", f"{AUTH}/login/mfa"),
        ("POST", f"{AUTH}/password/forgot"),
        ("POST", f"{AUTH}/password/reset"),
        ("POST", f"{AUTH}/email/verify"),
        ("POST", f"{AUTH}/email/verify/resend"),
        ("POST", f"{AUTH}/logout"),  # a refresh token alone signs out (the auth service checks any bearer)
    ],
)
async def test_public_routes_pass_without_a_token(
    echoes: tuple[httpx.AsyncClient, Echo, Echo], method: str, path: str
) -> None:
    client, auth_echo, _ = echoes
    response = await client.request(method, path)
    assert response.status_code == 200, response.text
    assert auth_echo.seen[-1].raw_path == path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ME),
        ("GET", f"{AUTH}/logout"),
        ("GET", f"{AUTH}/sessions"),
        ("GET", f"{AUTH}/verify"),
        ("GET", f"{AUTH}/register"),  # public only as POST
        ("POST", f"{AUTH}/.well-known/jwks.json"),  # public only as GET
        ("POST", f"{AUTH}/login/extra"),
        ("POST", f"{AUTH}/loginx"),
        ("POST", AUTH),
        ("GET", USERS),
        ("GET", f"{USERS}/me"),
        ("POST", f"{USERS}/login"),
        ("DELETE", f"{USERS}/42"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer    ", "Basic YWRhOnBhc3N3b3Jk", "Token abc.def.ghi", "Bearer not-a-jwt"],
    ids=["missing", "empty", "scheme-only", "blank-token", "basic", "other-scheme", "garbage"],
)
async def test_protected_routes_refuse_a_missing_or_invalid_token(
    echoes: tuple[httpx.AsyncClient, Echo, Echo], method: str, path: str, authorization: str | None
) -> None:
    client, auth_echo, users_echo = echoes
    headers = {} if authorization is None else {"Authorization": authorization}
    assert_invalid_token(await client.request(method, path, headers=headers))
    assert auth_echo.seen == [] and users_echo.seen == []


async def test_a_token_from_the_auth_service_passes_and_reaches_the_upstream(
    platform_client: httpx.AsyncClient, echo: Echo
) -> None:
    tokens = await register(platform_client)
    me = await platform_client.get(ME, headers=bearer(tokens["access_token"]))
    assert me.status_code == 200, me.text
    profile = await platform_client.get(f"{USERS}/me", headers=bearer(tokens["access_token"]))
    assert profile.status_code == 200, profile.text
    assert echo.seen[-1].header_values("authorization") == [f"Bearer {tokens['access_token']}"]


async def test_after_logout_the_gateway_itself_refuses_the_token(
    platform_client: httpx.AsyncClient, echo: Echo
) -> None:
    tokens = await register(platform_client)
    assert (await platform_client.get(f"{USERS}/me", headers=bearer(tokens["access_token"]))).status_code == 200
    before = len(echo.seen)

    logout = await platform_client.post(f"{AUTH}/logout", headers=bearer(tokens["access_token"]))
    assert logout.status_code == 204, logout.text

    assert_invalid_token(await platform_client.get(f"{USERS}/me", headers=bearer(tokens["access_token"])))
    assert_invalid_token(await platform_client.get(ME, headers=bearer(tokens["access_token"])))
    assert len(echo.seen) == before, "a revoked token reached the upstream"


async def test_a_global_logout_refuses_every_session_of_the_user(
    platform_client: httpx.AsyncClient, echo: Echo
) -> None:
    first = await register(platform_client)
    login = await platform_client.post(f"{AUTH}/login", json={"email": "ada@example.com", "password": PASSWORD})
    second = login.json()
    logout = await platform_client.post(f"{AUTH}/logout?scope=global", headers=bearer(first["access_token"]))
    assert logout.status_code == 204, logout.text
    assert_invalid_token(await platform_client.get(f"{USERS}/me", headers=bearer(second["access_token"])))
    assert echo.seen == []


async def test_a_real_refresh_token_is_not_a_bearer_token(platform_client: httpx.AsyncClient, echo: Echo) -> None:
    tokens = await register(platform_client)
    assert_invalid_token(await platform_client.get(f"{USERS}/me", headers=bearer(tokens["refresh_token"])))
    assert_invalid_token(await platform_client.get(ME, headers=bearer(tokens["refresh_token"])))
    assert echo.seen == []


async def test_logout_is_seen_without_redis_when_the_store_is_shared(
    make_settings: SettingsFactory, auth_settings: AuthSettings, echo: Echo
) -> None:
    """The no-Redis configuration: auth and gateway share one in-memory store."""
    store, bus = MemoryStore(), InMemoryBus()
    auth_app = create_auth_app(msgspec.structs.replace(auth_settings, redis_url=""), store=store, bus=bus)
    app = create_app(
        make_settings(redis_url="", request_timeout=10), services={AUTH: auth_app, USERS: echo}, store=store, bus=bus
    )
    async with app_client(app) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert "redis" not in ready.json()["checks"]
        tokens = await register(client)
        assert (await client.get(f"{USERS}/me", headers=bearer(tokens["access_token"]))).status_code == 200
        logout = await client.post(f"{AUTH}/logout", headers=bearer(tokens["access_token"]))
        assert logout.status_code == 204, logout.text
        assert_invalid_token(await client.get(f"{USERS}/me", headers=bearer(tokens["access_token"])))
    assert len(echo.seen) == 1


async def test_the_embedded_composition_root_serves_register_me_and_logout(
    make_settings: SettingsFactory, clean_auth_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``embedded.app.create_app`` without Redis: one process, in-memory store and bus."""
    for name in ("REDIS_URL", "AUTH_REDIS_URL", "JWT_SECRET", "AUTH_JWT_SECRET", "AUTH_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", clean_auth_database)
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    for name, value in FAST_ARGON2.items():
        monkeypatch.setenv(name.upper(), str(value))
    app = create_embedded_app(make_settings(redis_url="", request_timeout=10))
    async with app_client(app) as client:
        tokens = await register(client)
        me = await client.get(ME, headers=bearer(tokens["access_token"]))
        assert me.status_code == 200, me.text
        logout = await client.post(f"{AUTH}/logout", headers=bearer(tokens["access_token"]))
        assert logout.status_code == 204, logout.text
        assert_invalid_token(await client.get(ME, headers=bearer(tokens["access_token"])))


# -- the rejection matrix -----------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64url(value if isinstance(value, bytes) else json.dumps(value).encode())


def hs256(signing_input: str, key: bytes) -> str:
    return b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def header(**changes: Any) -> dict[str, Any]:
    return changed({"alg": "HS256", "typ": "at+jwt", "kid": KID}, changes)


def forge(payload: Any, jws_header: Any = None, *, key: bytes = JWT_SECRET.encode()) -> str:
    """A JWS assembled by hand, so nothing in a library refuses to build the bad ones."""
    signing_input = f"{segment(header() if jws_header is None else jws_header)}.{segment(payload)}"
    return f"{signing_input}.{hs256(signing_input, key)}"


def unsigned(alg: str) -> Callable[[], str]:
    return lambda: f"{segment(header(alg=alg))}.{segment(claims())}."


def tampered() -> str:
    head, _, signature = forge(claims()).split(".")
    return f"{head}.{segment(claims(roles=['admin']))}.{signature}"


def expired() -> str:
    now = int(time.time())
    return forge(claims(iat=now - 1200, nbf=now - 1200, exp=now - 120))


def not_yet_valid() -> str:
    now = int(time.time())
    return forge(claims(nbf=now + 3600, exp=now + 7200))


def oversized() -> str:
    token = forge(claims(padding="x" * 16_384))
    assert len(token) > 16_384
    return token


REJECTED: dict[str, Callable[[], str]] = {
    **{f"alg-{alg}": unsigned(alg) for alg in ("none", "None", "NONE", "nOnE")},
    **{f"alg-{alg}-signed": (lambda alg=alg: forge(claims(), header(alg=alg))) for alg in ("none", "NONE")},
    "wrong-key": lambda: forge(claims(), key=secrets.token_bytes(48)),
    "hs384-header": lambda: forge(claims(), header(alg="HS384")),
    "rs256-header": lambda: forge(claims(), header(alg="RS256")),
    "unknown-kid": lambda: forge(claims(), header(kid="hs-0000000000000000")),
    "kid-missing": lambda: forge(claims(), header(kid=None)),
    "jku-header": lambda: forge(claims(), header(jku="https://evil.example/jwks.json")),
    "jwk-header": lambda: forge(claims(), header(jwk={"kty": "oct", "k": b64url(b"k" * 32)})),
    "crit-header": lambda: forge(claims(), header(crit=["x"], x=True)),
    "expired": expired,
    "nbf-in-the-future": not_yet_valid,
    "exp-missing": lambda: forge(claims(exp=None)),
    "sub-missing": lambda: forge(claims(sub=None)),
    "sub-not-a-uuid": lambda: forge(claims(sub="admin")),
    "wrong-iss": lambda: forge(claims(iss="pyairtable-auth.evil.example")),
    "iss-missing": lambda: forge(claims(iss=None)),
    "wrong-aud": lambda: forge(claims(aud="pyairtable-admin")),
    "aud-missing": lambda: forge(claims(aud=None)),
    "typ-JWT": lambda: forge(claims(), header(typ="JWT")),
    "typ-refresh": lambda: forge(claims(), header(typ="refresh+jwt")),
    "typ-missing": lambda: forge(claims(), header(typ=None)),
    "opaque-refresh-shaped": lambda: secrets.token_urlsafe(48),
    "payload-tampered": tampered,
    "signature-stripped": lambda: forge(claims()).rpartition(".")[0] + ".",
    "signature-truncated": lambda: forge(claims())[:-6],
    "two-segments": lambda: forge(claims()).rpartition(".")[0],
    "four-segments": lambda: forge(claims()) + ".AAAA",
    "header-not-json": lambda: forge(claims(), b"not json"),
    "payload-not-json": lambda: forge(b"not json"),
    "non-base64url": lambda: "*" + forge(claims())[1:],
    "16kb-token": oversized,
    "roles-not-a-list": lambda: forge(claims(roles="admin")),
    # claim shapes: NumericDates are JSON numbers, tid a tenant UUID (issue 11, item 9)
    **{
        f"{name}-a-numeric-string": (lambda name=name: forge(claims(**{name: str(claims()[name])})))
        for name in ("exp", "nbf", "iat")
    },
    "exp-true": lambda: forge(claims(exp=True)),
    "exp-infinity": lambda: forge(claims(exp=float("inf"))),
    "exp-a-list": lambda: forge(claims(exp=[int(time.time()) + 600])),
    "tid-not-a-uuid": lambda: forge(claims(tid="not-a-tenant")),
    "tid-a-number": lambda: forge(claims(tid=7)),
    "sid-a-number": lambda: forge(claims(sid=7)),
    "sub-a-32-digit-number": lambda: forge(claims(sub=12345678901234567890123456789012)),
}


@pytest.mark.parametrize("build", REJECTED.values(), ids=REJECTED.keys())
async def test_a_forged_stale_or_malformed_token_is_refused_before_the_upstream(
    client: httpx.AsyncClient, echo: Echo, build: Callable[[], str]
) -> None:
    response = await client.get(f"{USERS}/me", headers=bearer(build()))
    assert_invalid_token(response)
    assert echo.seen == []


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
async def test_a_numeric_string_date_is_refused_on_every_use(client: httpx.AsyncClient, echo: Echo, name: str) -> None:
    """It once passed on first use and was a 500 on every reuse (the verified-claims cache compared
    a string with a number)."""
    token = forge(claims(**{name: str(claims()[name])}))
    for _ in range(3):
        assert_invalid_token(await client.get(f"{USERS}/me", headers=bearer(token)))
    assert echo.seen == []


async def test_a_fractional_date_and_a_tenant_uuid_pass(client: httpx.AsyncClient, echo: Echo) -> None:
    """Positive control: what RFC 7519 allows and the auth service issues still passes, twice (cached)."""
    now = time.time()
    token = forge(claims(iat=now, nbf=now, exp=now + 600.5, tid=str(uuid.uuid4())))
    for _ in range(2):
        response = await client.get(f"{USERS}/me", headers=bearer(token))
        assert response.status_code == 200, response.text
    assert len(echo.seen) == 2


async def test_the_forging_helpers_build_a_token_the_gateway_accepts(client: httpx.AsyncClient, echo: Echo) -> None:
    """Positive control for the matrix above."""
    for token in (forge(claims()), access_token()):
        response = await client.get(f"{USERS}/me", headers=bearer(token))
        assert response.status_code == 200, response.text
    lower_scheme = await client.get(f"{USERS}/me", headers={"Authorization": f"bearer {access_token()}"})
    assert lower_scheme.status_code == 200
    assert len(echo.seen) == 3


async def test_a_gateway_with_another_secret_refuses_the_auth_services_tokens(
    make_settings: SettingsFactory, platform_client: httpx.AsyncClient
) -> None:
    tokens = await register(platform_client)
    other = create_app(make_settings(jwt_secret=secrets.token_urlsafe(48)), services={USERS: Echo(USERS)})
    async with app_client(other) as client:
        assert_invalid_token(await client.get(f"{USERS}/me", headers=bearer(tokens["access_token"])))


async def test_a_token_accepted_and_kept_is_refused_once_it_expires(make_settings: SettingsFactory, echo: Echo) -> None:
    """The gateway keeps verified claims per token; the kept entry never outlives the token."""
    app = create_app(make_settings(jwt_leeway_seconds=0), services={USERS: echo})
    now = int(time.time())
    short_lived = access_token(iat=now, nbf=now, exp=now + 2)
    async with app_client(app) as client:
        first = await client.get(f"{USERS}/me", headers=bearer(short_lived))
        second = await client.get(f"{USERS}/me", headers=bearer(short_lived))  # from the kept entry
        refused = await eventually(
            lambda: expired_answer(client, short_lived), "the kept token to be refused after it expired"
        )
    assert (first.status_code, second.status_code) == (200, 200)
    assert_invalid_token(refused)
    assert len(echo.seen) >= 2 and all(seen.path == f"{USERS}/me" for seen in echo.seen)


async def expired_answer(client: httpx.AsyncClient, token: str) -> httpx.Response | None:
    response = await client.get(f"{USERS}/me", headers=bearer(token))
    return response if response.status_code == 401 else None
