"""Forwarding a request to an upstream service, streaming both bodies.

Two kinds of upstream: a service over HTTP (aiohttp, pooled keep-alive connections) and a
service app in the same process (the embedded run mode), called directly as ASGI.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import quote, unquote

import aiohttp
import httpx
import msgspec
from litestar.types import ASGIApp, Message, Receive, Send
from multidict import CIMultiDict
from yarl import URL

from gateway.breaker import CircuitBreaker
from gateway.errors import CircuitOpen, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Identity a client could try to assert; compared after lower-casing and '_' → '-'.
IDENTITY_HEADERS = frozenset(
    {
        "x-user-id",
        "x-user-email",
        "x-user-roles",
        "x-user-role",
        "x-user",
        "x-tenant-id",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-authenticated-user",
        "x-authenticated-userid",
        "x-auth-user",
        "x-auth-request-user",
        "x-remote-user",
        "remote-user",
        "x-roles",
        "x-scopes",
        "x-consumer-id",
        "x-consumer-username",
        "x-client-id",
    }
)
# Families of identity headers set by common auth proxies (oauth2-proxy, Kong, AWS ALB, Google IAP,
# Azure App Service): a client could send them to pass as someone else behind such a proxy.
IDENTITY_PREFIXES = (
    "x-user-",
    "x-auth-",
    "x-authenticated-",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-consumer-",
    "x-credential-",
    "x-userinfo",
    "x-amzn-oidc-",
    "x-goog-authenticated-",
    "x-ms-client-principal",
)
REPLACED_BY_GATEWAY = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "forwarded", "x-request-id"}
)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Query bytes kept as the client sent them: printable ASCII but '#'; the rest is percent-encoded.
_QUERY_SAFE = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) != "#")


def _normalise(name: bytes) -> str:
    return name.decode("latin-1").lower().replace("_", "-")


def upstream_url(base_url: str, target: str) -> URL:
    """The upstream URL with the path and query exactly as the client sent them (as a string,
    aiohttp would re-quote them: ``%2F`` → ``/`` in a query, ``%41`` → ``A`` in a path)."""
    path, separator, query = target.partition("?")
    return URL(base_url + path + separator + quote(query.encode("latin-1"), safe=_QUERY_SAFE), encoded=True)


class ForwardRequest(msgspec.Struct):
    method: str
    target: str  # the checked path plus the query string
    headers: list[tuple[bytes, bytes]]  # as the client sent them
    client_ip: str
    proto: str
    host: str
    request_id: str
    body: "RequestBody | None"


def forwarded_headers(request: ForwardRequest) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop and identity ones, plus the gateway's own."""
    connection_listed = set()
    for name, value in request.headers:
        if name.lower() == b"connection":
            connection_listed |= {
                token.strip().lower().replace("_", "-") for token in value.decode("latin-1").split(",")
            }
    kept = []
    for name, value in request.headers:
        key = _normalise(name)
        if (
            key in HOP_BY_HOP
            or key in IDENTITY_HEADERS
            or key in REPLACED_BY_GATEWAY
            or key in connection_listed
            or key.startswith(IDENTITY_PREFIXES)
        ):
            continue
        kept.append((name.decode("latin-1"), value.decode("latin-1")))
    kept += [
        ("X-Forwarded-For", request.client_ip),
        ("X-Forwarded-Proto", request.proto),
        ("X-Forwarded-Host", request.host),
        ("X-Request-ID", request.request_id),
    ]
    return kept


def response_headers(headers: Any, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = [
        (name.encode("latin-1").lower(), value.encode("latin-1"))
        for name, value in headers.items()
        if name.lower() not in HOP_BY_HOP or name.lower() == "content-length"
    ]
    return out + extra


class RequestBody:
    """The client's body as an async iterator, refused past ``limit`` bytes."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        more = True
        while more:
            message: Any = await self.receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError("client disconnected")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.limit:
                raise PayloadTooLarge(self.limit)
            if chunk:
                yield chunk


class Forward(Protocol):
    name: str
    breaker: CircuitBreaker

    async def forward(self, request: ForwardRequest, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> int: ...

    async def ready(self) -> None: ...

    async def get_json(self, path: str) -> Any: ...


class ResponseStarted(Exception):
    """The upstream failed after its response began: nothing can be sent but the end."""


class HTTPUpstream:
    def __init__(
        self,
        name: str,
        base_url: str,
        session: aiohttp.ClientSession,
        connect_timeout: float,
        read_timeout: float,
        breaker: CircuitBreaker,
        retry_idempotent: bool,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self.breaker = breaker
        self.retry_idempotent = retry_idempotent

    async def forward(self, request: ForwardRequest, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> int:
        if not self.breaker.allow():
            raise CircuitOpen(self.name, self.breaker.retry_after())
        # Only a request without a body, of an idempotent method, is tried twice (connect errors only).
        retryable = self.retry_idempotent and request.method in IDEMPOTENT and request.body is None
        headers = CIMultiDict(forwarded_headers(request))
        for attempt in (1, 2):
            try:
                status = await self._exchange(request, headers, send, extra_headers)
            except aiohttp.ClientConnectorError:
                if retryable and attempt == 1:
                    continue
                self.breaker.record_failure()
                raise UpstreamUnavailable(self.name) from None
            except (TimeoutError, aiohttp.ServerTimeoutError):
                self.breaker.record_failure()
                raise UpstreamTimeout(self.name) from None
            except aiohttp.ClientError:
                self.breaker.record_failure()
                raise UpstreamUnavailable(self.name) from None
            if status >= 500:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            return status
        raise AssertionError("unreachable")

    async def _exchange(
        self, request: ForwardRequest, headers: CIMultiDict[str], send: Send, extra: list[tuple[bytes, bytes]]
    ) -> int:
        async with self.session.request(
            request.method,
            upstream_url(self.base_url, request.target),
            headers=headers,
            data=request.body.chunks() if request.body is not None else None,
            allow_redirects=False,
            timeout=self.timeout,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": response_headers(response.headers, extra),
                }
            )
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ResponseStarted(str(exc)) from exc
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status

    async def ready(self) -> None:
        async with self.session.get(self.base_url + "/ready", timeout=aiohttp.ClientTimeout(total=2)) as response:
            if response.status != 200:
                raise RuntimeError(f"{self.name} is not ready ({response.status})")

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.base_url + path, timeout=aiohttp.ClientTimeout(total=5)) as response:
            response.raise_for_status()
            return await response.json()


class InProcessUpstream:
    """A service app in this process (embedded mode): the same headers, no network."""

    def __init__(
        self,
        name: str,
        app: ASGIApp,
        ready: Callable[[], Awaitable[None]],
        read_timeout: float,
        breaker: CircuitBreaker,
    ) -> None:
        self.name = name
        self.app = app
        self._ready = ready
        self.read_timeout = read_timeout
        self.breaker = breaker

    async def forward(self, request: ForwardRequest, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> int:
        path, _, query = request.target.partition("?")
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in forwarded_headers(request)]
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.proto,
            "path": unquote(path),  # decoded, as a server gives it; the checked path has no encoded "/" or "."
            "raw_path": path.encode(),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": (request.client_ip, 0),
            "server": ("127.0.0.1", 0),
            "state": {},
        }
        chunks = request.body.chunks() if request.body is not None else None
        status, started = 0, False

        async def receive() -> Any:
            if chunks is not None:
                with contextlib.suppress(StopAsyncIteration):
                    return {"type": "http.request", "body": await anext(chunks), "more_body": True}
            return {"type": "http.request", "body": b"", "more_body": False}

        async def relay(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [*message.get("headers", []), *extra_headers]
                message = cast(Message, {**message, "headers": headers})
            await send(message)

        try:
            async with asyncio.timeout(self.read_timeout):
                await self.app(scope, receive, relay)  # type: ignore[arg-type]
        except TimeoutError:
            if started:
                raise ResponseStarted("timed out") from None
            raise UpstreamTimeout(self.name) from None
        return status

    async def ready(self) -> None:
        await self._ready()

    async def get_json(self, path: str) -> Any:
        transport = httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            response = await client.get(path)
            response.raise_for_status()
            return response.json()


@contextlib.asynccontextmanager
async def http_session(pool_size: int) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size, keepalive_timeout=30)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
    try:
        yield session
    finally:
        await session.close()
