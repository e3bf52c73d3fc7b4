"""Verifying with the auth service's JWKS: fetched over HTTP, cached, refetched on a new kid at most
every 30 s, requests with the new kid waiting for the fetch in flight (a key rotation costs no 401),
and a JWKS endpoint that is down or hung means 401 (after at most the fetch timeout), never a 500."""

import asyncio
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
from tests.conftest import eventually


class JWKSServer:
    """A real HTTP server publishing a JWKS document the test can change, and hold back: while
    ``gate`` is clear, requests wait for it."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.url = ""
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def handle(self, _: web.Request) -> web.Response:
        self.requests += 1
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return web.json_response(self.document())

    def document(self) -> Any:
        return {"keys": self.keys}


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


async def rotated(jwks_server: JWKSServer) -> tuple[TokenVerifier, str]:
    """A verifier that knows the old key, and a token signed with a new one published since."""
    old_private, old_jwk = new_key()
    jwks_server.keys = [old_jwk]
    verifier = verifier_for(jwks_server.url)
    await verifier.verify(sign(old_private, old_jwk["kid"]))
    new_private, new_jwk = new_key()
    jwks_server.keys = [old_jwk, new_jwk]
    verifier.jwks._fetched_at -= 31  # type: ignore[union-attr]  # the last fetch was over 30 s ago
    return verifier, sign(new_private, new_jwk["kid"])


async def outcomes(verifier: TokenVerifier, token: str, count: int) -> list[str]:
    """``count`` concurrent verifications of ``token``: "ok" or "401" each (anything else raises)."""

    async def one() -> str:
        try:
            await verifier.verify(token)
        except InvalidToken:
            return "401"
        return "ok"

    async with asyncio.timeout(30):  # a bound on "no hang", not a performance claim
        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_a_token_signed_with_a_published_key_verifies(jwks_server: JWKSServer) -> None:
    private, jwk = new_key()
    jwks_server.keys = [jwk]
    verifier = verifier_for(jwks_server.url)

    identity = await verifier.verify(sign(private, jwk["kid"]))
    await verifier.verify(sign(private, jwk["kid"]))

    assert identity.email == "ada@example.com"
    assert jwks_server.requests == 1  # cached


async def test_a_new_kid_is_picked_up(jwks_server: JWKSServer) -> None:
    verifier, token = await rotated(jwks_server)

    identity = await verifier.verify(token)

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


async def test_requests_with_a_new_kid_wait_for_the_fetch_in_flight(jwks_server: JWKSServer) -> None:
    """Key rotation: the first request with the new kid starts the fetch; the nine that arrive while
    it is in flight wait for it instead of being refused."""
    verifier, token = await rotated(jwks_server)
    jwks_server.gate.clear()

    verifying = asyncio.ensure_future(outcomes(verifier, token, 10))
    await eventually(lambda: jwks_server.waiting == 1, "the refetch reaching the JWKS endpoint")
    jwks_server.gate.set()

    assert await verifying == ["ok"] * 10
    assert jwks_server.requests == 2  # the first fetch and one refetch


async def test_a_hung_jwks_endpoint_refuses_the_waiting_requests_after_the_fetch_timeout(
    jwks_server: JWKSServer,
) -> None:
    verifier, token = await rotated(jwks_server)
    verifier.jwks.timeout = 0.5  # type: ignore[union-attr]
    jwks_server.gate.clear()  # the endpoint accepts the request and never answers

    try:
        assert await outcomes(verifier, token, 10) == ["401"] * 10
        assert jwks_server.requests == 2
        # The failed fetch counts against the 30 s window: unknown kids cannot storm the endpoint.
        assert await outcomes(verifier, token, 10) == ["401"] * 10
        assert jwks_server.requests == 2
    finally:
        jwks_server.gate.set()


async def test_a_waiter_that_gives_up_does_not_cancel_the_fetch_for_the_others(jwks_server: JWKSServer) -> None:
    verifier, token = await rotated(jwks_server)
    jwks_server.gate.clear()

    impatient = asyncio.ensure_future(verifier.verify(token))
    await eventually(lambda: jwks_server.waiting == 1, "the refetch reaching the JWKS endpoint")
    patient = asyncio.ensure_future(outcomes(verifier, token, 3))
    await asyncio.sleep(0)
    impatient.cancel()  # its client went away
    jwks_server.gate.set()

    assert await patient == ["ok"] * 3
    assert jwks_server.requests == 2
    with pytest.raises(asyncio.CancelledError):
        await impatient


MALFORMED_ENTRIES: list[Any] = [
    1,
    {"kty": "nope"},
    {"kty": "RSA", "kid": "rsa-without-its-modulus"},
    {"kty": "OKP", "crv": "Ed25519", "kid": ["a", "list"], "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
    {"kty": "OKP", "crv": "Ed25519", "kid": "x-not-a-string", "x": 5},
]


@pytest.mark.parametrize("document", [[], {"keys": "none"}, "keys", {"keys": MALFORMED_ENTRIES}])
async def test_a_jwks_document_of_the_wrong_shape_means_401(jwks_server: JWKSServer, document: Any) -> None:
    private, jwk = new_key()
    jwks_server.document = lambda: document  # type: ignore[method-assign]
    verifier = verifier_for(jwks_server.url)

    with pytest.raises(InvalidToken):
        await verifier.verify(sign(private, jwk["kid"]))


async def test_malformed_entries_do_not_hide_a_good_key(jwks_server: JWKSServer) -> None:
    private, jwk = new_key()
    jwks_server.keys = [*MALFORMED_ENTRIES, jwk]
    verifier = verifier_for(jwks_server.url)

    identity = await verifier.verify(sign(private, jwk["kid"]))

    assert identity.email == "ada@example.com"
