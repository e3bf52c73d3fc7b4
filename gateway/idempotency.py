"""``Idempotency-Key`` on POST and PATCH, for every service behind the gateway (RELIABILITY E2).

A client that sends ``Idempotency-Key: <key>`` with a POST or PATCH may send the same request again
(after a timeout, a dropped connection) without the work being done twice, as with Stripe's API:

* the first request with a key is forwarded; its answer, if it is not a 5xx, is kept for
  ``RETENTION_SECONDS`` (24 h) and sent again, as it was, for every repeat with the same key and
  the same request (method, path, query and body), marked ``Idempotent-Replayed: true``;
* the same key with another request is a 422 ``idempotency-key-reused``; a repeat while the first
  is still being answered is a 409 ``idempotency-key-in-use`` (``Retry-After: 1``);
* keys belong to the caller (the token's user, else the client IP): another caller's key is theirs;
* a 5xx is not kept (the work may not have happened: a repeat tries again), nor an answer over
  ``MAX_KEPT_BODY``; the key is optional, and ignored on other methods;
* credentials are never kept or replayed: on the auth routes (``CREDENTIAL_ROUTES``: register,
  login, refresh, logout, password, email, sessions) the key is ignored, so a rotated refresh token
  sent again is seen by the auth service as the reuse it is; and an answer from any route that
  carries a token (``access_token``, ``refresh_token``, ``id_token`` in its body), sets a cookie or
  repeats the request's own credentials (an upstream that echoes) is not kept, so a repeat is
  forwarded again, as after a 5xx. The store holds no usable secret: keys and fingerprints are
  SHA-256 digests, kept answers hold no token;
* the lock a first request takes is set to expire once, after ``in_flight_seconds`` (the longest
  a forward can take): repeats while it is held get the 409 without pushing the expiry back, so a
  client retrying after its gateway died gets the key back once it expires;
* the store is the gateway's (Redis, shared by replicas; in memory in the embedded mode). Without
  it a keyed request is a 503: the gateway cannot promise what the key asks for.
"""

import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar.types import Message, Send
from redis.exceptions import RedisError

from gateway.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from gateway.proxy import ForwardRequest, RequestBody
from shared.errors import ServiceUnavailable
from shared.stores import KeyValueStore

KEYED_METHODS = frozenset({"POST", "PATCH"})
# Route prefixes whose requests and answers are credentials: the key is ignored there.
CREDENTIAL_ROUTES = ("/api/v1/auth",)
# An answer naming one of these (a JSON member, quoted or escaped) is a credential, whatever the route.
_TOKEN_MEMBER = re.compile(rb"\b(?:access|refresh|id)_token\b")
# Request headers that carry the caller's credentials: an answer that repeats one is not kept.
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie", b"x-api-key"})
_SHORTEST_SECRET = 8
RETENTION_SECONDS = 24 * 3600
MAX_KEPT_BODY = 1024 * 1024
_VALID_KEY = re.compile(rb"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe's keys (UUIDs in practice)
# Headers of the first answer that belong to it alone: a replay gets its own.
_NOT_REPLAYED = frozenset(
    {
        b"x-request-id",
        b"x-content-type-options",
        b"vary",
        b"date",
        b"ratelimit",
        b"ratelimit-policy",
        b"x-ratelimit-limit",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
        b"retry-after",
    }
)


class KeptAnswer(msgspec.Struct, array_like=True):
    fingerprint: bytes
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Recorder:
    """Passes the answer on to the client and keeps a copy (up to ``MAX_KEPT_BODY``)."""

    def __init__(self, send: Send, secrets: list[bytes]) -> None:
        self.send = send
        self.secrets = secrets  # the request's own credentials
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False
        self.too_large = False
        self.sets_cookie = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = message.get("headers", [])
            self.sets_cookie = any(name.lower() == b"set-cookie" for name, _ in headers)
            self.headers = [(name, value) for name, value in headers if name not in _NOT_REPLAYED]
        elif message["type"] == "http.response.body":
            if not self.too_large:
                self.body += message.get("body", b"")
                self.too_large = len(self.body) > MAX_KEPT_BODY
            self.complete = not message.get("more_body", False)
        await self.send(message)

    @property
    def keepable(self) -> bool:
        """A whole answer the work is done for (not a 5xx), small enough, and holding no credential:
        no token, no cookie, nothing of the request's own credentials (an upstream that echoes)."""
        if self.status >= 500 or not self.complete or self.too_large or self.sets_cookie:
            return False
        if _TOKEN_MEMBER.search(self.body):
            return False
        headers = b"\n".join(value for _, value in self.headers)
        return not any(secret in self.body or secret in headers for secret in self.secrets)


def _credentials(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The secrets of a request's credential headers: each value, and its part after a scheme."""
    secrets = []
    for name, value in headers:
        if name.lower() in _CREDENTIAL_HEADERS:
            for secret in (value.strip(), value.strip().rpartition(b" ")[2]):
                if len(secret) >= _SHORTEST_SECRET:
                    secrets.append(secret)
    return secrets


def carries_credentials(target: str) -> bool:
    """Whether ``target`` (path and query) is one of the auth routes, whose answers are tokens."""
    path = target.partition("?")[0]
    return any(path == prefix or path.startswith(prefix + "/") for prefix in CREDENTIAL_ROUTES)


Forwarder = Callable[[ForwardRequest, Send, list[tuple[bytes, bytes]]], Awaitable[int]]


class Idempotency:
    def __init__(self, store: KeyValueStore, in_flight_seconds: float) -> None:
        self.store = store
        self.in_flight_seconds = in_flight_seconds  # how long a key stays locked if its gateway dies

    async def forward(
        self,
        key: bytes,
        caller: str,
        request: ForwardRequest,
        forward: Forwarder,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> int:
        """Forward ``request`` once per key and caller; answer repeats with the kept answer."""
        if not _VALID_KEY.fullmatch(key):
            raise InvalidIdempotencyKey()
        if carries_credentials(request.target):
            return await forward(request, send, extra_headers)
        body = b"".join([chunk async for chunk in request.body.chunks()]) if request.body is not None else b""
        if request.body is not None:
            request.body = RequestBody.buffered(body, request.body.limit)
        fingerprint = hashlib.sha256(b"%b %b\n%b" % (request.method.encode(), request.target.encode(), body)).digest()
        stored_key = "idempotency:" + hashlib.sha256(caller.encode() + b"\n" + key).hexdigest()
        try:
            data, lock = await self.store.get_many([stored_key, stored_key + ":lock"])
            kept = _decoded(data)
            # INCR only when no lock is seen: it sets the expiry, and a held lock's must not move.
            if kept is None and (
                lock is not None or await self.store.incr(stored_key + ":lock", self.in_flight_seconds) > 1
            ):
                kept = await self._kept(stored_key)  # the first may have finished meanwhile
                if kept is None:
                    raise IdempotencyKeyInUse()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(
                "Idempotency keys cannot be checked right now.", code="store-unavailable", retry_after=2
            ) from exc
        if kept is not None:
            return await _replay(kept, fingerprint, send, extra_headers)
        return await self._first(stored_key, fingerprint, request, forward, send, extra_headers)

    async def _first(
        self,
        stored_key: str,
        fingerprint: bytes,
        request: ForwardRequest,
        forward: Forwarder,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> int:
        recorder = _Recorder(send, _credentials(request.headers))
        kept = False
        try:
            status = await forward(request, recorder, extra_headers)
            if status < 500 and recorder.keepable:
                answer = KeptAnswer(fingerprint, recorder.status, recorder.headers, bytes(recorder.body))
                await self.store.set(stored_key, msgspec.msgpack.encode(answer), RETENTION_SECONDS)
                kept = True
            return status
        finally:
            # A kept answer is found before the lock: it may expire by itself. Without one, a repeat
            # must be able to try again at once. (If this fails it expires after in_flight_seconds.)
            if not kept:
                with contextlib.suppress(RedisError, OSError):
                    await self.store.delete(stored_key + ":lock")

    async def _kept(self, stored_key: str) -> KeptAnswer | None:
        return _decoded(await self.store.get(stored_key))


def _decoded(data: bytes | None) -> KeptAnswer | None:
    return msgspec.msgpack.decode(data, type=KeptAnswer) if data is not None else None


async def _replay(kept: KeptAnswer, fingerprint: bytes, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> int:
    if kept.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    headers: list[Any] = [*kept.headers, *extra_headers, (b"idempotent-replayed", b"true")]
    await send({"type": "http.response.start", "status": kept.status, "headers": headers})
    await send({"type": "http.response.body", "body": kept.body, "more_body": False})
    return kept.status
