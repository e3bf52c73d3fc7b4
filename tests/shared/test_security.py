"""The access-token rejection matrix: every forged, stale or malformed token is a 401.

Each variant goes through the auth service's protected ``GET /api/v1/auth/me`` and must come back
as 401 problem+json with ``WWW-Authenticate: Bearer error="invalid_token"`` — never a 2xx, never
a 5xx. Key-confusion cases for RS256 are also run directly against ``TokenVerifier``.
"""

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from auth_service.app import create_app
from auth_service.config import AuthSettings
from shared.keys import hs256_kid, public_jwk
from shared.security import InvalidToken, TokenVerifier
from shared.settings import ServiceSettings
from tests.auth_service.conftest import JWT_SECRET, PASSWORD, Clock, bearer, register
from tests.conftest import access_claims, app_client, changed

ME = "/api/v1/auth/me"
INVALID_TOKEN = 'Bearer error="invalid_token"'
KID = hs256_kid(JWT_SECRET)


# -- token building ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return b64url(raw)


def hs256(signing_input: str, key: bytes) -> str:
    return b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def forge(
    claims: Any,
    header: Any = None,
    *,
    key: bytes = JWT_SECRET.encode(),
    sign: Callable[[str, bytes], str] = hs256,
) -> str:
    """A JWS assembled by hand, so nothing in a library can refuse to build the bad ones."""
    header = {"alg": "HS256", "typ": "at+jwt", "kid": KID} if header is None else header
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{sign(signing_input, key)}"


def with_header(**changes: Any) -> dict[str, Any]:
    return changed({"alg": "HS256", "typ": "at+jwt", "kid": KID}, changes)


class Victim(msgspec.Struct):
    """A real signed-in user: their tokens and the claims of their access token."""

    tokens: dict[str, Any]
    claims: dict[str, Any]

    def fresh_claims(self, **changes: Any) -> dict[str, Any]:
        """The real claims with a new ``jti`` and current times; ``None`` removes a claim."""
        now = int(time.time())
        return changed({**self.claims, "jti": uuid.uuid4().hex, "iat": now, "nbf": now, "exp": now + 600}, changes)


@pytest.fixture
async def victim(client: httpx.AsyncClient) -> Victim:
    tokens = await register(client)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return Victim(tokens=tokens, claims=claims)


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == INVALID_TOKEN
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 401
    assert body["request_id"] == response.headers["x-request-id"]
    assert "email" not in body and "sub" not in body


def unsigned(alg: str) -> Callable[[Victim], str]:
    def build(victim: Victim) -> str:
        return f"{segment(with_header(alg=alg))}.{segment(victim.fresh_claims())}."

    return build


def signed_as(alg: str) -> Callable[[Victim], str]:
    """HMAC-signed with the real secret, but the header names another algorithm."""

    def build(victim: Victim) -> str:
        return forge(victim.fresh_claims(), with_header(alg=alg))

    return build


def tamper_payload(victim: Victim) -> str:
    header_b64, _, signature = forge(victim.fresh_claims()).split(".")
    evil = segment(victim.fresh_claims(roles=["admin"]))
    return f"{header_b64}.{evil}.{signature}"


def oversized(victim: Victim) -> str:
    token = forge(victim.fresh_claims(padding="x" * 16_384))
    assert len(token) > 16_384
    return token


def exp_beyond_leeway(victim: Victim) -> str:
    now = int(time.time())
    return forge(victim.fresh_claims(iat=now - 1200, nbf=now - 1200, exp=now - 120))


def nbf_in_future(victim: Victim) -> str:
    now = int(time.time())
    return forge(victim.fresh_claims(nbf=now + 3600, exp=now + 7200))


def iat_in_future(victim: Victim) -> str:
    now = int(time.time())
    return forge(victim.fresh_claims(iat=now + 3600, nbf=now, exp=now + 7200))


def hs384_with_the_real_secret(victim: Victim) -> str:
    def sign(signing_input: str, key: bytes) -> str:
        return b64url(hmac.new(key, signing_input.encode(), hashlib.sha384).digest())

    return forge(victim.fresh_claims(), with_header(alg="HS384"), sign=sign)


VARIANTS: dict[str, Callable[[Victim], str]] = {
    # unsigned tokens, whatever the spelling of "none"
    "alg-none": unsigned("none"),
    "alg-None": unsigned("None"),
    "alg-NONE": unsigned("NONE"),
    "alg-nOnE": unsigned("nOnE"),
    # ... and with a signature present, so the algorithm check itself must refuse them
    **{f"alg-{alg}-with-a-signature": signed_as(alg) for alg in ("none", "None", "NONE", "nOnE")},
    # wrong keys and algorithms
    "other-hs256-secret": lambda v: forge(v.fresh_claims(), key=secrets.token_bytes(48)),
    "hs384-with-the-real-secret": hs384_with_the_real_secret,
    "unknown-kid": lambda v: forge(v.fresh_claims(), with_header(kid="hs-0000000000000000")),
    "kid-path-traversal": lambda v: forge(v.fresh_claims(), with_header(kid="../../etc/passwd")),
    "kid-missing": lambda v: forge(v.fresh_claims(), with_header(kid=None)),
    "kid-not-a-string": lambda v: forge(v.fresh_claims(), with_header(kid=7)),
    # headers that point at other keys or demand extensions
    "jku-header": lambda v: forge(v.fresh_claims(), with_header(jku="https://evil.example/jwks.json")),
    "x5u-header": lambda v: forge(v.fresh_claims(), with_header(x5u="https://evil.example/cert.pem")),
    "jwk-header": lambda v: forge(v.fresh_claims(), with_header(jwk={"kty": "oct", "k": b64url(JWT_SECRET.encode())})),
    "x5c-header": lambda v: forge(v.fresh_claims(), with_header(x5c=["MIIBIjANBgkqhkiG9w0BAQEFAAOC"])),
    "crit-header": lambda v: forge(v.fresh_claims(), with_header(crit=["x"], x=True)),
    # time
    "expired-beyond-leeway": exp_beyond_leeway,
    "nbf-in-the-future": nbf_in_future,
    "iat-in-the-future": iat_in_future,
    # required claims
    "exp-missing": lambda v: forge(v.fresh_claims(exp=None)),
    "iss-missing": lambda v: forge(v.fresh_claims(iss=None)),
    "aud-missing": lambda v: forge(v.fresh_claims(aud=None)),
    "sub-missing": lambda v: forge(v.fresh_claims(sub=None)),
    "jti-missing": lambda v: forge(v.fresh_claims(jti=None)),
    "iat-missing": lambda v: forge(v.fresh_claims(iat=None)),
    "nbf-missing": lambda v: forge(v.fresh_claims(nbf=None)),
    # issuer and audience
    "iss-prefix-of-the-real-one": lambda v: forge(v.fresh_claims(iss="pyairtable-aut")),
    "iss-with-a-suffix": lambda v: forge(v.fresh_claims(iss="pyairtable-auth.evil.example")),
    "aud-of-another-service": lambda v: forge(v.fresh_claims(aud="pyairtable-admin")),
    # token type
    "refresh-token-as-bearer": lambda v: v.tokens["refresh_token"],
    "typ-JWT": lambda v: forge(v.fresh_claims(), with_header(typ="JWT")),
    "typ-missing": lambda v: forge(v.fresh_claims(), with_header(typ=None)),
    # damaged tokens
    "payload-tampered": tamper_payload,
    "signature-truncated": lambda v: forge(v.fresh_claims())[:-6],
    "signature-empty": lambda v: forge(v.fresh_claims()).rpartition(".")[0] + ".",
    "non-base64url-plus-slash": lambda v: forge(v.fresh_claims())[:-2] + "+/",
    "non-base64url-padding": lambda v: forge(v.fresh_claims()) + "==",
    "non-base64url-star": lambda v: "*" + forge(v.fresh_claims())[1:],
    "two-segments": lambda v: forge(v.fresh_claims()).rpartition(".")[0],
    "four-segments": lambda v: forge(v.fresh_claims()) + ".AAAA",
    "header-not-json": lambda v: forge(v.fresh_claims(), b"not json"),
    "payload-not-json": lambda v: forge(b"not json"),
    "payload-a-json-array": lambda v: forge([v.fresh_claims()]),
    "16kb-token": oversized,
    # claim shapes
    "sub-not-a-uuid": lambda v: forge(v.fresh_claims(sub="ada@example.com")),
    "sub-an-integer": lambda v: forge(v.fresh_claims(sub=1)),
    "roles-not-a-list": lambda v: forge(v.fresh_claims(roles="admin")),
    "roles-not-strings": lambda v: forge(v.fresh_claims(roles=[1, 2])),
    "email-not-a-string": lambda v: forge(v.fresh_claims(email=["ada@example.com"])),
    "sub-a-32-digit-number": lambda v: forge(v.fresh_claims(sub=12345678901234567890123456789012)),
    # NumericDates are JSON numbers (PyJWT alone takes "1700000000"); tid and sid have one shape
    **{
        f"{name}-a-numeric-string": (
            lambda v, name=name: forge(v.fresh_claims(**{name: str(int(time.time()) + 600 * (name == "exp"))}))
        )
        for name in ("exp", "nbf", "iat")
    },
    "exp-true": lambda v: forge(v.fresh_claims(exp=True)),
    "exp-infinity": lambda v: forge(v.fresh_claims(exp=float("inf"))),
    "tid-not-a-uuid": lambda v: forge(v.fresh_claims(tid="not-a-tenant")),
    "tid-a-number": lambda v: forge(v.fresh_claims(tid=7)),
    "sid-a-number": lambda v: forge(v.fresh_claims(sid=7)),
}


@pytest.mark.parametrize("build", VARIANTS.values(), ids=VARIANTS.keys())
async def test_forged_or_malformed_token_is_refused(
    client: httpx.AsyncClient, victim: Victim, build: Callable[[Victim], str]
) -> None:
    response = await client.get(ME, headers={"Authorization": f"Bearer {build(victim)}"})
    assert_invalid_token(response)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer    ", "Basic YWRhOnBhc3N3b3Jk", "Token abc.def.ghi"],
    ids=["missing", "empty", "scheme-only", "blank-token", "basic", "other-scheme"],
)
async def test_missing_or_non_bearer_authorization_is_refused(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    assert_invalid_token(await client.get(ME, headers=headers))


async def test_a_correctly_built_token_passes(client: httpx.AsyncClient, victim: Victim) -> None:
    """Positive control: the forging helpers build tokens the service accepts when they are right."""
    token = forge(victim.fresh_claims())
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "ada@example.com"
    lower_scheme = await client.get(ME, headers={"Authorization": f"bearer {token}"})
    assert lower_scheme.status_code == 200


async def test_token_built_with_pyjwt_and_the_documented_headers_passes(
    client: httpx.AsyncClient, victim: Victim
) -> None:
    token = jwt.encode(victim.fresh_claims(), JWT_SECRET, algorithm="HS256", headers={"typ": "at+jwt", "kid": KID})
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


async def test_access_token_is_refused_after_logout(client: httpx.AsyncClient) -> None:
    tokens = await register(client)
    assert (await client.get(ME, headers=bearer(tokens))).status_code == 200
    logout = await client.post("/api/v1/auth/logout", headers=bearer(tokens))
    assert logout.status_code == 204, logout.text
    assert_invalid_token(await client.get(ME, headers=bearer(tokens)))


async def test_every_token_of_the_user_is_refused_after_global_logout(
    client: httpx.AsyncClient, victim: Victim
) -> None:
    login = await client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    other_session = login.json()
    logout = await client.post("/api/v1/auth/logout?scope=global", headers=bearer(victim.tokens))
    assert logout.status_code == 204, logout.text
    assert_invalid_token(await client.get(ME, headers=bearer(other_session)))


# -- asymmetric keys -----------------------------------------------------------------------------


def pem_public(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


async def test_eddsa_end_to_end(auth_settings: AuthSettings, clock: Clock) -> None:
    settings = msgspec.structs.replace(auth_settings, jwt_algorithm="EdDSA")
    async with app_client(create_app(settings, clock=clock)) as client:
        tokens = await register(client)
        header = jwt.get_unverified_header(tokens["access_token"])
        assert header["alg"] == "EdDSA"
        generated = Path(settings.data_dir) / "jwt_private_key.pem"
        assert generated.exists()
        assert generated.stat().st_mode & 0o077 == 0, "the generated private key is readable by others"
        me = await client.get(ME, headers=bearer(tokens))
        assert me.status_code == 200, me.text

        jwks = await client.get("/api/v1/auth/.well-known/jwks.json")
        assert jwks.status_code == 200
        keys = jwks.json()["keys"]
        assert [key["kid"] for key in keys] == [header["kid"]]
        assert keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519"
        assert "d" not in keys[0], "the JWKS must never contain the private key"
        # A verifier holding only the JWKS accepts the token.
        public_key = jwt.PyJWK(keys[0]).key
        jwt.decode(
            tokens["access_token"],
            public_key,
            algorithms=["EdDSA"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        claims["jti"] = uuid.uuid4().hex
        # An HS256 token (even one signed with the configured JWT_SECRET) is refused ...
        assert_invalid_token(await client.get(ME, headers={"Authorization": f"Bearer {forge(claims)}"}))
        # ... and so is an HMAC made with the public key as the secret (key confusion).
        pem = pem_public(public_key)
        for alg in ("HS256", "EdDSA"):
            confused = forge(claims, {"alg": alg, "typ": "at+jwt", "kid": header["kid"]}, key=pem)
            assert_invalid_token(await client.get(ME, headers={"Authorization": f"Bearer {confused}"}))


async def test_eddsa_with_a_configured_private_key_file(
    auth_settings: AuthSettings, clock: Clock, tmp_path: Path
) -> None:
    """JWT_PRIVATE_KEY_FILE in development: the service verifies the tokens it signs."""
    key_file = tmp_path / "keys" / "signing.pem"
    key_file.parent.mkdir()
    private = ed25519.Ed25519PrivateKey.generate()
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    settings = msgspec.structs.replace(
        auth_settings, jwt_algorithm="EdDSA", jwt_private_key_file=str(key_file), data_dir=str(tmp_path / "data")
    )
    async with app_client(create_app(settings, clock=clock)) as client:
        tokens = await register(client)
        assert jwt.get_unverified_header(tokens["access_token"])["kid"] == public_jwk(private.public_key())["kid"]
        me = await client.get(ME, headers=bearer(tokens))
        assert me.status_code == 200, me.text


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rs256_verifier(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> TokenVerifier:
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(pem_public(rsa_key.public_key()))
    settings = ServiceSettings(jwt_algorithm="RS256", jwt_public_key_file=str(public_file), data_dir=str(tmp_path))
    return TokenVerifier(settings, None)


async def test_rs256_verifier_accepts_a_token_signed_by_its_key(
    rs256_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    kid = public_jwk(rsa_key.public_key())["kid"]
    token = jwt.encode(access_claims(), rsa_key, algorithm="RS256", headers={"typ": "at+jwt", "kid": kid})
    identity = await rs256_verifier.verify(token)
    assert identity.email == "ada@example.com"
    assert identity.roles == ("user",)


@pytest.mark.parametrize("alg", ["HS256", "RS256"])
async def test_rs256_verifier_refuses_hmac_made_with_the_public_key(
    rs256_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey, alg: str
) -> None:
    public_key = rsa_key.public_key()
    kid = public_jwk(public_key)["kid"]
    token = forge(access_claims(), {"alg": alg, "typ": "at+jwt", "kid": kid}, key=pem_public(public_key))
    with pytest.raises(InvalidToken) as refused:
        await rs256_verifier.verify(token)
    assert refused.value.status_code == 401
    assert refused.value.headers == {"WWW-Authenticate": INVALID_TOKEN}


async def test_rs256_verifier_refuses_a_token_signed_by_another_rsa_key(
    rs256_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = public_jwk(rsa_key.public_key())["kid"]  # claims to be our key
    token = jwt.encode(access_claims(), other, algorithm="RS256", headers={"typ": "at+jwt", "kid": kid})
    with pytest.raises(InvalidToken):
        await rs256_verifier.verify(token)
