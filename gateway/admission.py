"""Admission: who is calling (JWT verified locally), whether the token is revoked, and whether
the client is within its rate limit. No Litestar imports."""

import logging
from typing import Any

import msgspec
from redis.exceptions import RedisError

from gateway.api_keys import KeyExchange, check_scope, is_api_key
from gateway.config import GatewaySettings
from gateway.errors import QuotaExceeded
from gateway.proxy import Forward
from gateway.ratelimit import Decision, Policy, RateLimiter
from gateway.routing import is_public, uses_auth_policy
from shared.http import address_key
from shared.security import InvalidToken, RevocationList, TokenCache, TokenVerifier, bearer_token

logger = logging.getLogger("gateway")


class Admission(msgspec.Struct, frozen=True):
    claims: dict[str, Any] | None
    policy: Policy
    decision: Decision
    # With an API key: "Bearer <the key's access token>", forwarded in place of what the client sent.
    authorization: str | None = None

    @property
    def user_id(self) -> str | None:
        return self.claims["sub"] if self.claims else None

    @property
    def organization_id(self) -> str | None:
        """The caller's active organisation (claim ``tid``), for the usage record."""
        return self.claims.get("tid") if self.claims else None

    @property
    def key_id(self) -> str | None:
        """The API key the request came with (its token's ``key_id``, equal to its ``sid``), if any."""
        return self.claims.get("key_id") if self.claims else None


class VerifiedToken(msgspec.Struct, frozen=True):
    """A token's claims and what admission derives from them, worked out once per token."""

    claims: dict[str, Any]
    revocation_keys: list[str]  # the store keys that would revoke it
    scoped: bool  # an API key's token (it carries scopes): it reaches only what they allow
    key_limit: str | None  # an API key's token: "key:<key id>", the key's own rate-limit budget


class ClaimsCache(TokenCache[VerifiedToken]):
    """Verified claims by token, kept until the token expires: HS256/EdDSA work done once per token."""

    def put(self, token: str, claims: dict[str, Any]) -> VerifiedToken:
        key_limit = f"key:{claims['key_id']}" if "key_id" in claims else None
        return self.keep(
            token, claims, VerifiedToken(claims, RevocationList.keys_for(claims), "scopes" in claims, key_limit)
        )


class Gatekeeper:
    def __init__(
        self,
        settings: GatewaySettings,
        verifier: TokenVerifier,
        revocations: RevocationList,
        limiter: RateLimiter,
        legacy_api_key: str | None = None,
        key_checker: Forward | None = None,
    ) -> None:
        """``key_checker``: the auth service, which exchanges API keys (None: keys are no credential)."""
        self.verifier = verifier
        self.revocations = revocations
        self.limiter = limiter
        self.key_by_user = settings.rate_limit_key == "user"
        self.ipv6_prefix = settings.rate_limit_ipv6_prefix
        self.default_policy = Policy("default", settings.rate_limit_per_minute, 60, settings.rate_limit_burst)
        self.auth_policy = Policy("auth", settings.auth_rate_limit_per_minute, 60, settings.auth_rate_limit_burst)
        self.claims_cache = ClaimsCache()
        self.keys = KeyExchange(key_checker, settings.api_key_cache_seconds, legacy_api_key)

    async def admit(
        self,
        method: str,
        path: str,
        authorization: str | None,
        client_ip: str,
        api_key: str | None = None,
        request_id: str = "",
        legacy: bool = False,
    ) -> Admission:
        """The caller's verified claims (None on public routes) and rate-limit decision; raises on refusal.

        ``api_key`` is the ``X-API-Key`` header: a credential when there is no ``Authorization``
        and it is not the deployment's legacy ``API_KEY`` (which only ``legacy`` routes exchange)."""
        policy = self.auth_policy if uses_auth_policy(path) else self.default_policy
        client_key = address_key(client_ip, self.ipv6_prefix)
        forwarded = None
        try:
            if is_public(method, path):
                verified = None
            else:
                if authorization is not None:
                    token = bearer_token(authorization)
                    exchanged = is_api_key(token)
                else:
                    token, exchanged = self._key_header(api_key, legacy), True
                if exchanged:  # an API key: its access token is verified and forwarded in its place
                    token = await self.keys.token_for(token, request_id)
                    forwarded = "Bearer " + token
                verified = await self._verified(token)
                if verified.scoped:  # a key's token, however it came: the key's reach only
                    check_scope(verified.claims["scopes"], method, path)
        except InvalidToken:
            # Requests with a bad token count against the client too: guessing is rate-limited.
            refused = await self.limiter.hit(client_key, policy)
            if not refused.allowed:
                raise QuotaExceeded(refused.headers(policy)) from None
            raise
        if verified is None:
            claims, key, revocation_keys = None, client_key, None
        else:
            # Each API key has a limit of its own; users share theirs across clients with RATE_LIMIT_KEY=user.
            claims, revocation_keys = verified.claims, verified.revocation_keys
            key = verified.key_limit or (claims["sub"] if self.key_by_user else client_key)
        decision = await self.limiter.hit(key, policy, revocation_keys, int(claims["iat"]) if claims else 0)
        if claims is not None and await self._revoked(claims, decision):
            raise InvalidToken("The access token has been revoked.")
        if not decision.allowed:
            raise QuotaExceeded(decision.headers(policy))
        return Admission(claims, policy, decision, forwarded)

    def _key_header(self, api_key: str | None, legacy: bool) -> str:
        """The ``X-API-Key`` of a request without ``Authorization``, when it is a credential: the
        deployment's ``API_KEY`` is one on ``legacy`` routes only. InvalidToken without one."""
        if api_key and (legacy or not self.keys.is_deployment_key(api_key)):
            return api_key
        raise InvalidToken("An access token is required.")

    async def _verified(self, token: str) -> VerifiedToken:
        verified = self.claims_cache.get(token)
        if verified is None:
            verified = self.claims_cache.put(token, await self.verifier.decode(token))
        return verified

    async def _revoked(self, claims: dict[str, Any], decision: Decision) -> bool:
        if decision.revocation_checked:
            return decision.revoked
        if self.limiter.degraded:
            # The limiter's breaker is open on the Redis that holds the revocations too: asking it
            # would only add its timeout to every request while it is down or hung.
            logger.warning("revocation check unavailable; accepting a signature-valid token")
            return False
        try:
            return await self.revocations.is_revoked(claims)
        except (RedisError, OSError):
            # Redis is down: tokens stay valid until they expire (at most ACCESS_TOKEN_TTL).
            logger.warning("revocation check unavailable; accepting a signature-valid token")
            return False
