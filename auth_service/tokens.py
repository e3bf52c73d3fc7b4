"""Signing access tokens and making opaque refresh tokens."""

import hashlib
import secrets
import uuid
from datetime import datetime
from typing import Any

import jwt

from auth_service.config import AuthSettings
from auth_service.models import User
from shared.keys import hs256_kid, load_private_key, public_jwk
from shared.settings import ensure_dev_secret

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - the JWT typ header, not a secret
# An organisation a token acts in: its id and the caller's role there (one of ORG_ROLES).
OrgClaim = tuple[uuid.UUID, str]


def org_claims(organization: OrgClaim | None) -> dict[str, str]:
    """``tid`` and ``org_role`` for an organisation, or neither (the kernel's contract)."""
    if organization is None:
        return {}
    return {"tid": str(organization[0]), "org_role": organization[1]}


class TokenIssuer:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.jwks: dict[str, Any] = {"keys": []}
        if settings.jwt_algorithm == "HS256":
            secret = ensure_dev_secret(settings)
            self.signing_key: Any = secret.encode()
            self.kid = hs256_kid(secret)
        else:
            private_key = load_private_key(settings, settings.jwt_private_key_file)
            jwk = public_jwk(private_key.public_key())
            self.signing_key, self.kid = private_key, jwk["kid"]
            self.jwks = {"keys": [jwk]}

    def access_token(
        self,
        user: User,
        session_id: uuid.UUID,
        now: datetime,
        ttl: int | None = None,
        organization: OrgClaim | None = None,
    ) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds (ACCESS_TOKEN_TTL unless ``ttl``).

        ``organization``: the session's active organisation and the user's role in it (claims
        ``tid`` and ``org_role``); without one, neither claim is present."""
        ttl = ttl or self.settings.access_token_ttl
        claims: dict[str, Any] = {
            "sub": str(user.id),
            "email": user.email,
            "email_verified": bool(user.email_verified),
            "roles": list(user.roles),
            "sid": str(session_id),
        }
        claims.update(org_claims(organization))
        return self.sign(claims, now, ttl), ttl

    def sign(self, claims: dict[str, Any], now: datetime, ttl: int) -> str:
        """An access token of these claims, with the issuer, audience, id and times added."""
        issued = int(now.timestamp())
        registered = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "jti": uuid.uuid4().hex,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
        }
        headers = {"typ": ACCESS_TOKEN_TYPE, "kid": self.kid}
        return jwt.encode(
            {**registered, **claims}, self.signing_key, algorithm=self.settings.jwt_algorithm, headers=headers
        )


def new_refresh_token() -> str:
    """256 random bits; only the hash is stored."""
    return secrets.token_urlsafe(32)


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
