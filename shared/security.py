"""Access-token verification and guards: the same code in the gateway and in every service.

Only the configured algorithm is accepted, ``iss``/``aud``/``exp``/``nbf``/``typ`` are checked
with a small leeway, headers that point at other keys (``jku``, ``x5u``, ``jwk``, ``x5c``) or
demand unknown extensions (``crit``) are refused, and revoked tokens are rejected. Every failure
is a 401 with ``WWW-Authenticate``; none is a 500.
"""

import asyncio
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import Forbidden, NotFound, ServiceUnavailable
from shared.keys import VerificationKey, key_from_jwk, local_verification_keys
from shared.settings import ServiceSettings
from shared.stores import KeyValueStore

logger = logging.getLogger("shared.security")

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
MAX_TOKEN_LENGTH = 8192
# An organisation member's roles, strongest first (claim ``org_role``); see the README's roles table.
ORG_ROLES = ("owner", "admin", "member", "viewer")
ORG_MANAGERS = ("owner", "admin")
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
JWKS_MIN_REFRESH_SECONDS = 30.0
VERIFIED_TOKENS_KEPT = 10_000
T = TypeVar("T")
V = TypeVar("V")
MAX_PENDING_REVOCATIONS = 10_000
REVOCATION_UNKNOWN = Counter(
    "pyairtable_revocation_unknown",
    "Signature-valid tokens accepted while the revocation store could not be read",
)
REVOCATIONS_PENDING = Gauge(
    "pyairtable_revocations_pending",
    "Revocations this process could not write yet; written when the store returns",
    multiprocess_mode="livesum",  # a gateway's several workers: their total
)


class InvalidToken(NotAuthorizedException):
    def __init__(self, detail: str = "The access token is invalid.") -> None:
        super().__init__(detail=detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class Identity(msgspec.Struct, frozen=True):
    """Who is calling, taken from a verified access token."""

    user_id: uuid.UUID
    email: str
    roles: tuple[str, ...]
    jti: str
    session_id: str | None
    issued_at: int
    expires_at: int
    tenant_id: uuid.UUID | None = None  # the active organisation (claim ``tid``)
    org_role: str | None = None  # the caller's role in it (claim ``org_role``): one of ORG_ROLES

    @property
    def is_admin(self) -> bool:
        """A platform administrator (the ``admin`` platform role), not an organisation's admin."""
        return "admin" in self.roles

    def has_org_role(self, organization_id: uuid.UUID, *allowed: str) -> bool:
        """Whether the caller acts in ``organization_id`` (its active organisation) with one of these roles."""
        return self.tenant_id == organization_id and self.org_role in allowed


class OrganizationNotFound(NotFound):
    """Also the answer for an organisation that is not the caller's active one (no existence leak)."""

    code = "organization-not-found"
    detail = "No such organisation among yours: switch to it first."


class OrganizationManagersOnly(Forbidden):
    """A member of the organisation who is neither an owner nor an admin of it (``ORG_MANAGERS``)."""

    code = "organization-managers-only"
    detail = "Only the organisation's owners and admins may see this."


class RevocationIncomplete(ServiceUnavailable):
    """What a revocation changed in the database stands (``commit_before_answer``), but the access
    tokens it revokes could not be refused everywhere: the revocation store is unavailable."""

    code = "revocation-incomplete"
    commit_before_answer = True

    def __init__(self, ttl_seconds: float) -> None:
        super().__init__(
            "Saved, and refresh tokens of the sessions concerned no longer work; but the revocation store is"
            " unavailable, so their access tokens stay usable elsewhere until it returns (this service keeps"
            f" retrying) or they expire (within {math.ceil(ttl_seconds)} s).",
            retry_after=2,
        )


# How far ahead of the clock a user's cut-off may be set (see ``RevocationList.revoke_user``).
MAX_CUTOFF_AHEAD_SECONDS = 5


class RevocationList:
    """Revoked token IDs, sessions and per-user cut-offs, each kept only as long as it matters.

    They live in the shared store only (``store.shared``: never one process's stand-in). When it
    cannot be read, a signature-valid token is accepted (the gateway's policy: revocation is
    unknowable until the store returns), which a metric and a log line say. A revocation that
    cannot be written raises RevocationIncomplete, is enforced by this process, and is written
    as soon as the store answers again (``write_pending``)."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self._pending: dict[str, tuple[bytes, float]] = {}  # key -> (value, expiry on time.time())
        self._unknowable = False

    async def revoke_token(self, issuer: str, jti: str, expires_at: int) -> None:
        await self._write(f"revoked:jti:{issuer}:{jti}", b"1", _remaining(expires_at))

    async def revoke_session(self, session_id: str, ttl_seconds: float) -> None:
        await self._write(f"revoked:sid:{session_id}", b"1", ttl_seconds)

    async def revoke_sessions(self, session_ids: Sequence[str], ttl_seconds: float) -> None:
        """Each session's access tokens; every one is tried (and kept to retry) before one
        RevocationIncomplete says some could not be written."""
        incomplete: RevocationIncomplete | None = None
        for session_id in session_ids:
            try:
                await self.revoke_session(session_id, ttl_seconds)
            except RevocationIncomplete as exc:
                incomplete = exc
        if incomplete is not None:
            raise incomplete

    async def revoke_user(self, user_id: uuid.UUID, ttl_seconds: float) -> None:
        """Every access token of the user issued up to now stops working.

        A token issued after an earlier cut-off says the second after it (``iat``: the auth
        service's ``_after_access_cutoff``), which can be later than now: the new cut-off is at
        least that second, so such a token stops working too. It never runs further ahead than
        ``MAX_CUTOFF_AHEAD_SECONDS``, within any leeway a verifier allows for ``nbf``."""
        now = int(time.time())
        try:
            previous = await self.user_cutoff(user_id)
        except (RedisError, OSError):
            previous = None  # the write below fails alike, and is kept to retry
        cutoff = now if previous is None else min(max(now, previous + 1), now + MAX_CUTOFF_AHEAD_SECONDS)
        await self._write(f"revoked:user:{user_id}", str(cutoff).encode(), ttl_seconds)

    async def user_cutoff(self, user_id: uuid.UUID) -> int | None:
        """The second up to which the user's access tokens are refused (``revoke_user``), if any;
        a token issued from then on must say a later ``iat``. RedisError if it cannot be read."""
        key = f"revoked:user:{user_id}"
        pending = self._pending.get(key)
        value = pending[0] if pending is not None else await self.store.shared.get(key)
        return int(value) if value is not None else None

    @staticmethod
    def keys_for(claims: dict[str, Any]) -> list[str]:
        """The store keys that revoke these claims: by ``jti``, by session, by user cut-off."""
        return [
            f"revoked:jti:{claims['iss']}:{claims['jti']}",
            f"revoked:sid:{claims.get('sid')}",
            f"revoked:user:{claims['sub']}",
        ]

    async def is_revoked(self, claims: dict[str, Any]) -> bool:
        keys = self.keys_for(claims)
        try:
            if self._pending:
                await self.write_pending()
            values = await _retried_unless_slow(lambda: self.store.shared.get_many(keys))
        except (RedisError, OSError):
            REVOCATION_UNKNOWN.inc()
            if not self._unknowable:
                self._unknowable = True
                logger.warning("revocation store unavailable: signature-valid tokens accepted until it returns")
            return _revoked_by(claims, *self._pending_values(keys))
        if self._unknowable:
            self._unknowable = False
            logger.info("revocation store back: revoked tokens refused again")
        jti, sid, cutoff = values
        return _revoked_by(claims, jti, sid, cutoff) or _revoked_by(claims, *self._pending_values(keys))

    async def write_pending(self) -> None:
        """Write the revocations the store could not take; StoreUnavailable if it still cannot."""
        now = time.time()
        for key, (value, expires) in list(self._pending.items()):
            if expires > now:  # else its tokens have expired meanwhile: nothing left to revoke
                await self.store.shared.set(key, value, expires - now)
                logger.info("pending revocation written", extra={"kind": key.split(":")[1]})
            del self._pending[key]
            REVOCATIONS_PENDING.set(len(self._pending))

    async def _write(self, key: str, value: bytes, ttl_seconds: float) -> None:
        try:
            await _retried_once(lambda: self.store.shared.set(key, value, ttl_seconds))
        except (RedisError, OSError):
            if len(self._pending) >= MAX_PENDING_REVOCATIONS:
                self._pending.pop(next(iter(self._pending)))
            self._pending[key] = (value, time.time() + ttl_seconds)
            REVOCATIONS_PENDING.set(len(self._pending))
            logger.warning(
                "revocation not written: store unavailable; kept to retry", extra={"kind": key.split(":")[1]}
            )
            raise RevocationIncomplete(ttl_seconds) from None

    def _pending_values(self, keys: list[str]) -> list[bytes | None]:
        now = time.time()
        found = [self._pending.get(key) for key in keys]
        return [item[0] if item is not None and item[1] > now else None for item in found]


async def _retried_once(operation: Callable[[], Awaitable[T]]) -> T:
    """One more try: a single reply slower than the 50 ms timeout (a busy machine) must not decide
    a revocation. While Redis is down its breaker soon makes the second try fail at once."""
    try:
        return await operation()
    except (RedisError, OSError):
        return await operation()


async def _retried_unless_slow(operation: Callable[[], Awaitable[T]]) -> T:
    """One more try after a failed connection (a pooled connection that a restarted Redis closed),
    not after a timeout: every request would wait twice the timeout while Redis hangs."""
    try:
        return await operation()
    except (RedisError, OSError) as exc:
        if isinstance(exc, TimeoutError | RedisTimeoutError) or isinstance(
            exc.__cause__, TimeoutError | RedisTimeoutError
        ):
            raise
        return await operation()


def _revoked_by(claims: dict[str, Any], jti: bytes | None, sid: bytes | None, cutoff: bytes | None) -> bool:
    if jti is not None or (claims.get("sid") and sid is not None):
        return True
    return cutoff is not None and int(claims["iat"]) <= int(cutoff)


def _remaining(expires_at: int) -> float:
    return max(1.0, expires_at - time.time() + 60)


class JWKSClient:
    """Fetches and caches a JWKS document; an unknown ``kid`` refetches at most every 30 s.

    One fetch at a time: while it is in flight, every request with an unknown ``kid`` waits for it
    (at most ``timeout``) rather than failing, so a key rotation costs no 401s; once it is done,
    unknown kids wait for the next 30 s window and cannot make a storm of fetches.
    """

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url
        self.timeout = timeout
        self.keys: dict[str, VerificationKey] = {}
        self._fetched_at = 0.0
        self._fetch: asyncio.Task[None] | None = None

    async def get(self, kid: str) -> VerificationKey | None:
        if kid not in self.keys:
            fetch = self._fetch
            if fetch is None and time.monotonic() - self._fetched_at >= JWKS_MIN_REFRESH_SECONDS:
                fetch = self._start_fetch()
            if fetch is not None:
                # Shielded: a waiter that gives up (its client went away) does not cancel it for the others.
                await asyncio.shield(fetch)
        return self.keys.get(kid)

    async def refresh(self) -> None:
        await asyncio.shield(self._fetch or self._start_fetch())

    def _start_fetch(self) -> "asyncio.Task[None]":
        self._fetched_at = time.monotonic()
        self._fetch = fetch = asyncio.create_task(self._fetch_keys())
        fetch.add_done_callback(self._fetch_done)
        return fetch

    def _fetch_done(self, fetch: "asyncio.Task[None]") -> None:
        if self._fetch is fetch:
            self._fetch = None

    async def _fetch_keys(self) -> None:
        # Imported on the first fetch: httpx brings rich, pygments and click with it (its command
        # line), about 15 MB of a service's memory that only a JWKS-configured service needs.
        import httpx

        try:
            async with asyncio.timeout(self.timeout), httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.url)
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError, TimeoutError) as exc:
            logger.warning("jwks fetch failed", extra={"url": self.url, "error": str(exc) or type(exc).__name__})
            return
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            logger.warning("jwks fetch failed", extra={"url": self.url, "error": "not a JWKS document"})
            return
        self.keys = _usable_keys(document["keys"])


def _usable_keys(entries: list[Any]) -> dict[str, VerificationKey]:
    """The JWKS entries we can verify with, by ``kid``; a malformed entry does not hide the others."""
    keys = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        try:
            key = key_from_jwk(entry)
        except jwt.PyJWTError:  # e.g. an RSA key without its modulus
            continue
        if key is not None:
            keys[key.kid] = key
    return keys


class TokenCache(Generic[V]):
    """What was worked out from a verified token, by token, kept until the token expires (least
    recently used first out past ``size``): a caller's every request after the first costs a
    dictionary lookup, not a JWT decode. What can change during a token's life, its revocation,
    is not kept: it is read from the store on every request."""

    def __init__(self, size: int = VERIFIED_TOKENS_KEPT) -> None:
        self.size = size
        self.entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, token: str) -> V | None:
        entry = self.entries.get(token)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.time():
            del self.entries[token]
            return None
        self.entries.move_to_end(token)
        return value

    def keep(self, token: str, claims: dict[str, Any], value: V) -> V:
        """Keep ``value`` for ``token`` until its claims' ``exp``."""
        self.entries[token] = (claims["exp"], value)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value


class VerifiedTokens(TokenCache[tuple[dict[str, Any], Identity]]):
    """Verified tokens' claims and Identity."""

    def put(self, token: str, claims: dict[str, Any]) -> tuple[dict[str, Any], Identity]:
        return self.keep(token, claims, (claims, identity_from_claims(claims)))


class TokenVerifier:
    def __init__(
        self,
        settings: ServiceSettings,
        revocations: RevocationList | None,
        keys: Sequence[VerificationKey] | None = None,
    ) -> None:
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.algorithm = settings.jwt_algorithm
        self.leeway = settings.jwt_leeway_seconds
        self.revocations = revocations
        local = local_verification_keys(settings) if keys is None else list(keys)
        self.keys = {key.kid: key for key in local}
        self.jwks = JWKSClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self.verified = VerifiedTokens()

    async def verify(self, token: str) -> Identity:
        """The caller of a valid, unexpired, unrevoked access token; InvalidToken otherwise."""
        verified = self.verified.get(token)
        if verified is None:
            verified = self.verified.put(token, await self.decode(token))
        claims, identity = verified
        if self.revocations is not None and await self.revocations.is_revoked(claims):
            raise InvalidToken("The access token has been revoked.")
        return identity

    async def decode(self, token: str) -> dict[str, Any]:
        """The token's verified claims; InvalidToken on any failure."""
        if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.match(token):
            raise InvalidToken("The access token is malformed.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("The access token is malformed.") from None
        key = await self._key_for(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS, "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("The access token has expired.") from None
        except jwt.PyJWTError:
            raise InvalidToken() from None
        _check_claims(claims)
        return claims

    async def _key_for(self, header: dict[str, Any]) -> VerificationKey:
        if header.get("alg") != self.algorithm or FORBIDDEN_HEADERS & header.keys():
            raise InvalidToken()
        if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("The token is not an access token.")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken()
        key = self.keys.get(kid)
        if key is None and self.jwks is not None:
            key = await self.jwks.get(kid)
        if key is None or key.algorithm != self.algorithm:
            raise InvalidToken()
        return key


def _check_claims(claims: dict[str, Any]) -> None:
    """Claims of the shapes the platform issues, checked once here for the gateway and the services
    alike: whatever passes is safe for every later use (caches, comparisons, ``Identity``)."""
    for name in NUMERIC_DATE_CLAIMS:
        # PyJWT accepts a numeric string ("1700000000") where a NumericDate (a JSON number) belongs.
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidToken()
    if not isinstance(claims["sub"], str) or _uuid(claims["sub"]) is None:
        raise InvalidToken()
    if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("email", ""), str):
        raise InvalidToken()
    if not isinstance(claims.get("sid", ""), str | None):
        raise InvalidToken()
    tenant = claims.get("tid")
    if tenant is not None and (not isinstance(tenant, str) or _uuid(tenant) is None):
        raise InvalidToken()
    org_role = claims.get("org_role")
    if org_role is not None and (org_role not in ORG_ROLES or tenant is None):
        raise InvalidToken()
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise InvalidToken()


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    return Identity(
        user_id=uuid.UUID(str(claims["sub"])),
        email=claims.get("email", ""),
        roles=tuple(claims.get("roles", [])),
        jti=claims["jti"],
        session_id=claims.get("sid"),
        issued_at=int(claims["iat"]),
        expires_at=int(claims["exp"]),
        tenant_id=uuid.UUID(claims["tid"]) if claims.get("tid") is not None else None,
        org_role=claims.get("org_role"),
    )


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise InvalidToken("An access token is required.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("An access token is required.")
    return token.strip()


class JWTAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    """Puts the caller's Identity on ``request.user``; handlers opt out with ``exclude_from_auth``."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        token = bearer_token(connection.headers.get("authorization"))
        verifier: TokenVerifier = connection.app.state.verifier
        identity = await verifier.verify(token)
        return AuthenticationResult(user=identity, auth=token)


def require_role(role: str) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.scope.get("method") == "OPTIONS":
            return  # Litestar's automatic OPTIONS answers only which methods exist, and is never authenticated
        identity = connection.scope.get("user")
        if not isinstance(identity, Identity) or role not in identity.roles:
            raise PermissionDeniedException(detail=f"The {role} role is required.")

    return guard


require_admin = require_role("admin")
