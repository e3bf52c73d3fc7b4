"""Verifying with the auth service's JWKS: fetched over HTTP, cached, refetched on a new kid at most
every 30 s, and a JWKS endpoint that is down means 401, never a 500."""

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.keys import public_jwk
from shared.security import InvalidToken, TokenVerifier
from shared.settings import ServiceSettings


class JWKSServer:
    """A real HTTP server publishing a JWKS document the test can change."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.url = ""

    async def handle(self, _: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks_server() -> AsyncIterator[JWKSServer]:
    server = JWKSServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield server
    await runner.cleanup()


def new_key() -> tuple[ed25519.Ed25519PrivateKey, dict[str, Any]]:
    private = ed25519.Ed25519PrivateKey.generate()
    return private, public_jwk(private.public_key())


def sign(private: ed25519.Ed25519PrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "pyairtable-auth",
        "aud": "pyairtable-api",
        "sub": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "roles": ["user"],
        "email": "ada@example.com",
    }
    return jwt.encode(claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": kid})


def verifier_for(url: str) -> TokenVerifier:
    settings = ServiceSettings(jwt_algorithm="EdDSA", jwt_jwks_url=url, environment="production")
    return TokenVerifier(settings, revocations=None)


async def test_a_token_signed_with_a_published_key_verifies(jwks_server: JWKSServer) -> None:
    private, jwk = new_key()
    jwks_server.keys = [jwk]
    verifier = verifier_for(jwks_server.url)

    identity = await verifier.verify(sign(private, jwk["kid"]))
    await verifier.verify(sign(private, jwk["kid"]))

    assert identity.email == "ada@example.com"
    assert jwks_server.requests == 1  # cached


async def test_a_new_kid_is_picked_up(jwks_server: JWKSServer) -> None:
    old_private, old_jwk = new_key()
    jwks_server.keys = [old_jwk]
    verifier = verifier_for(jwks_server.url)
    await verifier.verify(sign(old_private, old_jwk["kid"]))

    new_private, new_jwk = new_key()
    jwks_server.keys = [old_jwk, new_jwk]
    verifier.jwks._fetched_at -= 31  # type: ignore[union-attr]  # the last fetch was over 30 s ago

    identity = await verifier.verify(sign(new_private, new_jwk["kid"]))

    assert identity.email == "ada@example.com"
    assert jwks_server.requests == 2


async def test_unknown_kids_do_not_refetch_in_a_tight_loop(jwks_server: JWKSServer) -> None:
    _, jwk = new_key()
    jwks_server.keys = [jwk]
    verifier = verifier_for(jwks_server.url)
    stranger, stranger_jwk = new_key()

    for _ in range(20):
        with pytest.raises(InvalidToken):
            await verifier.verify(sign(stranger, stranger_jwk["kid"]))

    assert jwks_server.requests == 1


async def test_an_unreachable_jwks_endpoint_means_401() -> None:
    private, jwk = new_key()
    verifier = verifier_for("http://127.0.0.1:1/.well-known/jwks.json")

    with pytest.raises(InvalidToken):
        await verifier.verify(sign(private, jwk["kid"]))


async def test_an_hs256_token_is_refused_by_an_eddsa_verifier(jwks_server: JWKSServer) -> None:
    _, jwk = new_key()
    jwks_server.keys = [jwk]
    verifier = verifier_for(jwks_server.url)
    forged = jwt.encode(
        {"sub": str(uuid.uuid4())}, "a-secret-that-is-long-enough-for-hs256!", headers={"kid": jwk["kid"]}
    )

    with pytest.raises(InvalidToken):
        await verifier.verify(forged)
