"""A service verifies a token's signature once and keeps it until the token expires: what can
still change in the token's life (revocation, expiry) decides every request all the same."""

import asyncio
import time
import uuid

import jwt
import pytest

from shared.keys import hs256_kid
from shared.security import InvalidToken, RevocationList, TokenVerifier
from shared.settings import ServiceSettings
from shared.stores import MemoryStore
from tests.auth_service.conftest import JWT_SECRET
from tests.conftest import access_claims, eventually


def sign(claims: dict[str, object]) -> str:
    headers = {"typ": "at+jwt", "kid": hs256_kid(JWT_SECRET)}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers=headers)


def verifier(revocations: RevocationList | None = None) -> TokenVerifier:
    return TokenVerifier(ServiceSettings(jwt_secret=JWT_SECRET, jwt_leeway_seconds=0), revocations)


async def test_a_token_already_verified_is_refused_once_revoked() -> None:
    revocations = RevocationList(MemoryStore())
    tokens = verifier(revocations)
    claims = access_claims()
    identity = await tokens.verify(sign(claims))
    assert str(identity.user_id) == claims["sub"]

    await revocations.revoke_token(claims["iss"], claims["jti"], claims["exp"])

    with pytest.raises(InvalidToken, match="revoked"):
        await tokens.verify(sign(claims))


async def test_a_token_already_verified_is_refused_once_it_expires() -> None:
    tokens = verifier()
    now = int(time.time())
    token = sign(access_claims(iat=now, nbf=now, exp=now + 2))
    await tokens.verify(token)

    async def refused() -> bool:
        try:
            await tokens.verify(token)
        except InvalidToken as refusal:
            return "expired" in str(refusal.detail)
        await asyncio.sleep(0.2)
        return False

    await eventually(refused, "the verified token to be refused once it expired")


async def test_a_second_cut_off_refuses_a_token_issued_just_after_the_first() -> None:
    """The auth service issues a token after a cut-off with the second after it as ``iat``
    (possibly later than now): revoking the user again refuses that token too, even within the
    same second as the first cut-off."""
    revocations = RevocationList(MemoryStore())
    # The leeway production has (30 s) for an ``nbf`` up to a second ahead of the clock.
    tokens = TokenVerifier(ServiceSettings(jwt_secret=JWT_SECRET), revocations)
    claims = access_claims()
    user_id = uuid.UUID(claims["sub"])
    await revocations.revoke_user(user_id, 600)
    first = await revocations.user_cutoff(user_id)
    assert first is not None
    after_the_cut_off = {**claims, "iat": first + 1, "nbf": first + 1}
    assert str((await tokens.verify(sign(after_the_cut_off))).user_id) == claims["sub"]

    await revocations.revoke_user(user_id, 600)

    second = await revocations.user_cutoff(user_id)
    assert second is not None and second >= first + 1
    with pytest.raises(InvalidToken, match="revoked"):
        await tokens.verify(sign(after_the_cut_off))
