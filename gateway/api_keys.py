"""API keys as credentials: which requests carry one, what a key may reach, and the exchange of a
key for the short-lived access token the gateway forwards in its place.

A key is exchanged at the auth service (``POST /api/v1/auth/internal/api-keys/introspect``, a
route the gateway never proxies for clients). The answer is kept at most ``API_KEY_CACHE_SECONDS``
(4 s, at most 5), so a revoked key stops working on every replica within that time even if the revocation
mark in Redis (the token's ``sid`` is the key's id) cannot be read. While the auth service cannot
answer, a key whose token is still valid keeps working (the revocation mark still applies): a
dependency fault degrades, never stops.
"""

import hmac
import logging
import re
import time
from collections import OrderedDict

import msgspec
from litestar.exceptions import HTTPException

from gateway.proxy import CollectedAnswer, Forward, ForwardRequest, RequestBody
from shared.errors import Forbidden, ServiceUnavailable
from shared.security import InvalidToken

logger = logging.getLogger("gateway.api_keys")

INTROSPECT = "/api/v1/auth/internal/api-keys/introspect"
INTERNAL_PREFIX = "/api/v1/auth/internal"
KEY_PREFIXES = ("pat_", "psk_")
# What the auth service issues: anything else is refused here, without a round trip.
WELL_FORMED_KEY = re.compile(r"^(?:pat|psk)_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$")
STALE_MARGIN_SECONDS = 10  # a kept token is not forwarded this close to its expiry
# Route prefix → (scope for reads, scope for writes). Anything else is out of a key's reach.
SCOPED_ROUTES = {
    "/api/v1/users": ("users:read", "users:write"),
    "/api/v1/analytics": ("analytics:read", "analytics:write"),
    "/api/v1/airtable": ("airtable:read", "airtable:write"),
}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class InsufficientScope(Forbidden):
    code = "insufficient-scope"

    def __init__(self, needed: str | None) -> None:
        detail = f"The API key lacks the {needed} scope." if needed else "API keys cannot reach this route."
        super().__init__(detail, headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'})


def is_api_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIXES)


def is_internal(path: str) -> bool:
    """Routes between the gateway and the services, never proxied for a client."""
    return path == INTERNAL_PREFIX or path.startswith(INTERNAL_PREFIX + "/")


def scope_for(method: str, path: str) -> str | None:
    """The scope a request needs, or None: no key reaches it (deny by default)."""
    for prefix, (read, write) in SCOPED_ROUTES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return read if method in READ_METHODS else write
    return None


def check_scope(scopes: object, method: str, path: str) -> None:
    needed = scope_for(method, path)
    if needed is None or not isinstance(scopes, list) or needed not in scopes:
        raise InsufficientScope(needed)


class KeyToken(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int
    key_id: str


class _Kept(msgspec.Struct):
    token: str
    fetched: float  # time.monotonic()
    expires: float  # time.monotonic()


class KeyExchange:
    """A key's access token, from the auth service, kept a few seconds."""

    def __init__(
        self, auth: Forward | None, cache_seconds: float, deployment_key: str | None = None, size: int = 10_000
    ) -> None:
        self.auth = auth
        self.deployment_key = deployment_key
        self.cache_seconds = cache_seconds
        self.size = size
        self.kept: OrderedDict[str, _Kept] = OrderedDict()

    def is_deployment_key(self, key: str) -> bool:
        """Whether ``key`` is the deployment's ``API_KEY`` (compared in constant time: it is a secret)."""
        return self.deployment_key is not None and hmac.compare_digest(key.encode(), self.deployment_key.encode())

    async def token_for(self, key: str, request_id: str) -> str:
        """The access token to forward for ``key``; InvalidToken if the auth service refuses it."""
        if not WELL_FORMED_KEY.match(key) and not self.is_deployment_key(key):
            raise InvalidToken("The API key is invalid, expired or revoked.")
        now = time.monotonic()
        kept = self.kept.get(key)
        if kept is not None and now - kept.fetched < self.cache_seconds and now < kept.expires:
            return kept.token
        try:
            fresh = await self._introspect(key, request_id)
        except InvalidToken:
            self.kept.pop(key, None)
            raise
        except HTTPException as exc:
            if kept is not None and now < kept.expires:
                logger.warning(
                    "key check unavailable; forwarding the key's unexpired token", extra={"error": exc.detail}
                )
                return kept.token
            raise ServiceUnavailable("API keys cannot be checked right now.", retry_after=2) from exc
        self.kept[key] = _Kept(fresh.access_token, now, now + fresh.expires_in - STALE_MARGIN_SECONDS)
        self.kept.move_to_end(key)
        if len(self.kept) > self.size:
            self.kept.popitem(last=False)
        return fresh.access_token

    async def _introspect(self, key: str, request_id: str) -> KeyToken:
        if self.auth is None:  # a gateway without the auth service: keys are no credential there
            raise InvalidToken("An access token is required: no auth service on this gateway checks API keys.")
        payload = msgspec.json.encode({"key": key})
        request = ForwardRequest(
            method="POST",
            target=INTROSPECT,
            headers=[(b"content-type", b"application/json"), (b"accept", b"application/json")],
            client_ip="127.0.0.1",
            proto="http",
            host="",
            request_id=request_id,
            body=RequestBody.buffered(payload, len(payload)),
        )
        answer = CollectedAnswer()
        await self.auth.forward(request, answer.send, [])
        if answer.status in (401, 422):
            raise InvalidToken("The API key is invalid, expired or revoked.")
        if answer.status != 200:
            raise ServiceUnavailable(f"The auth service answered {answer.status} to a key check.")
        return msgspec.json.decode(answer.body, type=KeyToken)
