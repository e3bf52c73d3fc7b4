"""Forwarding a request to an upstream service, streaming both bodies.

Two kinds of upstream: a service over HTTP (``gateway/transport/http1.py``, pooled keep-alive connections) and a
service app in the same process (the embedded run mode), called directly as ASGI.
"""

import asyncio
import contextlib
import fnmatch
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import quote, unquote, urlsplit

import msgspec
from litestar.types import ASGIApp, Message, Receive, Send
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Tracer

from gateway.errors import BodyTimeout, CircuitOpen, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from gateway.transport.breaker import CircuitBreaker
from gateway.transport.http1 import (
    ConnectFailed,
    Connection,
    ConnectionPool,
    ConnectTimeout,
    ReadTimeout,
    StaleConnection,
    UpstreamError,
)
from shared.http import standard_response_headers
from shared.tracing import inject_headers

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
# What an upstream may rely on: no header a client sends that could assert an identity (who, which
# role, tenant, organisation or account, acting as whom) or override what the gateway checked (the
# target, the method) ever reaches it. Names are compared after lower-casing and '_' → '-' (servers
# such as nginx, PHP and WSGI read "X_User_Id" as "X-User-Id"). Auth proxies (oauth2-proxy, Kong,
# Envoy, Pomerium, Grafana, AWS ALB, Google IAP, Cloudflare Access, Azure App Service) use these
# families, so a client could pass as someone else behind one of them.
IDENTITY_HEADERS = frozenset(
    {
        "remote-user",
        "x-uid",
        "x-sub",
        "x-subject",
        "x-login",
        "x-owner",
        "x-superuser",
        "x-sudo",
        "x-on-behalf-of",
        "x-act-as",
        "x-as-user",
        "x-acting-user",
        "x-proxy-user",
        "x-id-token",
        "x-access-token",
        "x-host",
        "x-http-method",
    }
)
IDENTITY_PATTERNS = (
    "*user*id*",
    "*user*name*",
    "x-user*",
    "*role*",
    "*tenant*",
    "*org*",
    "*account*",
    "*principal*",
    "*impersonat*",
    "*email*",
    "*admin*",
    "*scope*",
    "*group*",
    "*permission*",
    "*identity*",
    "*method*override*",
    "*override*method*",
    "x-auth*",  # x-auth-user, x-auth-request-*, x-authenticated-*, x-authorization
    "x-forwarded-*",  # the gateway's own: x-forwarded-for/proto/host are replaced, the rest dropped
    "x-original-*",  # x-original-url, -uri, -method, -host
    "x-rewrite-*",
    "x-remote-*",
    "x-consumer-*",
    "x-credential-*",
    "x-jwt*",
    "x-ssl-client*",
    "x-client-id",
    "x-client-cert*",
    "x-client-verify",
    "x-client-dn",
    "x-amzn-oidc-*",
    "x-goog-authenticated-*",
    "x-pomerium-*",
    "x-webauth-*",
    "x-envoy-original-*",
)
_IDENTITY_PATTERN = re.compile("|".join(fnmatch.translate(pattern) for pattern in IDENTITY_PATTERNS))
REPLACED_BY_GATEWAY = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "forwarded", "x-request-id"}
)
_NOT_FORWARDED = HOP_BY_HOP | IDENTITY_HEADERS | REPLACED_BY_GATEWAY
# Headers the gateway reads and acts on: naming them in ``Connection`` does not take them away from
# the upstream, which would then see another request than the one admitted (one without its token).
CHECKED_BY_GATEWAY = frozenset(
    {"authorization", "idempotency-key", "x-api-key", "content-length", "transfer-encoding", "host", "origin"}
)
# Names a client's ``Connection`` header cannot take away: gone anyway ("keep-alive", "close"), or checked.
_NOT_REMOVED_BY_CONNECTION = _NOT_FORWARDED | CHECKED_BY_GATEWAY
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
# Response headers the gateway sets itself (its request ID, nosniff): an upstream's copies are dropped.
SET_BY_GATEWAY = frozenset(name for name, _ in standard_response_headers(""))
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
READY_SECONDS = 1.5  # the longest wait for an upstream's /ready (the kernel's readiness check allows 2 s)
# Query bytes kept as the client sent them: printable ASCII but '#'; the rest is percent-encoded.
_QUERY_SAFE = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) != "#")


def _normalise(name: bytes) -> str:
    return name.decode("latin-1").lower().replace("_", "-")


_FORWARDED_NAMES: dict[bytes, bytes] = {}  # a client's header name → as forwarded (lower case), b"": never
_FORWARDED_NAMES_KEPT = 4096  # names beyond these are worked out on every request, not remembered
# No real header is named longer: a longer name is not forwarded, matched against the patterns (linear
# in its length) or remembered (the memo stays under 512 KiB of names).
LONGEST_FORWARDED_NAME = 128


def is_identity_header(name: str) -> bool:
    """Whether a header (its name already normalised) could assert an identity or override a check."""
    return name in IDENTITY_HEADERS or _IDENTITY_PATTERN.match(name) is not None


def _forwarded_name(name: bytes) -> bytes:
    """``name`` in lower case if a client may send it on, else b"" (hop-by-hop, identity, ours)."""
    if len(name) > LONGEST_FORWARDED_NAME:
        return b""
    key = _normalise(name)
    forwarded = b"" if key in _NOT_FORWARDED or is_identity_header(key) else name.lower()
    if len(_FORWARDED_NAMES) < _FORWARDED_NAMES_KEPT:
        _FORWARDED_NAMES[name] = forwarded
    return forwarded


def upstream_target(target: str) -> str:
    """The path and query exactly as the client sent them; only bytes that cannot appear in a
    request line (controls, space, non-ASCII) are percent-encoded in the query."""
    path, separator, query = target.partition("?")
    return path + separator + quote(query.encode("latin-1"), safe=_QUERY_SAFE) if separator else path


class ForwardRequest(msgspec.Struct):
    method: str
    target: str  # the checked path plus the query string
    headers: list[tuple[bytes, bytes]]  # as the client sent them
    client_ip: str
    proto: str
    host: str
    request_id: str
    body: "RequestBody | None"
    response_bytes: int = 0  # of the upstream's response body relayed so far (set by ``forward``)


class CollectedAnswer:
    """A ``send`` that keeps a service's whole answer, for the gateway's own calls (legacy routes,
    API-key checks) rather than a client's."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def forwarded_headers(request: ForwardRequest) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop and identity ones, plus the gateway's own (names in
    lower case, as ASGI and HTTP/1.1 both accept)."""
    kept = []
    connection_listed: set[str] = set()
    for name, value in request.headers:
        forwarded_name = _FORWARDED_NAMES.get(name)
        if forwarded_name is None:
            forwarded_name = _forwarded_name(name)
        if forwarded_name:
            kept.append((forwarded_name, value))
        elif name.lower() == b"connection":
            connection_listed |= {
                token.strip().lower().replace("_", "-") for token in value.decode("latin-1").split(",")
            }
    connection_listed -= _NOT_REMOVED_BY_CONNECTION
    if connection_listed:
        kept = [(name, value) for name, value in kept if _normalise(name) not in connection_listed]
    kept += [
        (b"x-forwarded-for", request.client_ip.encode("latin-1")),
        (b"x-forwarded-proto", request.proto.encode("latin-1")),
        (b"x-forwarded-host", request.host.encode("latin-1")),
        (b"x-request-id", request.request_id.encode("latin-1")),
    ]
    return kept


def response_headers(headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers (names in lower case) minus hop-by-hop ones, plus ``extra``."""
    connection_listed: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            connection_listed |= {token.strip().lower() for token in value.split(b",")}
    out = [
        (name, value)
        for name, value in headers
        if (name not in _HOP_BY_HOP_BYTES or name == b"content-length")
        and name not in SET_BY_GATEWAY
        and name not in connection_listed
    ]
    return out + extra


class RequestBody:
    """The client's body as an async iterator, refused past ``limit`` bytes. ``length``: the
    declared ``Content-Length``, None when the client sent it chunked. ``timeout``: the longest
    wait for each next piece (None: no limit), past which the request ends with a 408."""

    def __init__(self, receive: Receive, limit: int, length: int | None = None, timeout: float | None = None) -> None:
        self.receive = receive
        self.limit = limit
        self.length = length
        self.timeout = timeout

    @classmethod
    def buffered(cls, data: bytes, limit: int) -> "RequestBody":
        """A body already read whole, handed over in one piece."""

        async def receive() -> Any:
            return {"type": "http.request", "body": data, "more_body": False}

        return cls(receive, limit, len(data))

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        more = True
        while more:
            try:
                async with asyncio.timeout(self.timeout):
                    message: Any = await self.receive()
            except TimeoutError:
                raise BodyTimeout(self.timeout or 0) from None
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


class NotReady(Exception):
    """The upstream answered, but says it is not ready (its ``/ready`` was not a 200)."""


class HTTPUpstream:
    """A service over HTTP: the lean pooled HTTP/1.1 client of ``gateway/transport/http1.py``."""

    def __init__(
        self,
        name: str,
        base_url: str,
        pool_size: int,
        connect_timeout: float,
        read_timeout: float,
        breaker: CircuitBreaker,
        retry_idempotent: bool,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.pool = ConnectionPool(base_url, pool_size, read_timeout)
        self.base_path = urlsplit(base_url).path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.breaker = breaker
        self.retry_idempotent = retry_idempotent

    async def forward(self, request: ForwardRequest, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> int:
        # Only a request without a body, of an idempotent method, is tried twice: when no connection
        # could be made, or a pooled one turned out dead before any byte of the response.
        retryable = self.retry_idempotent and request.method in IDEMPOTENT and request.body is None
        head = self._head(request)
        breaker = self.breaker
        if not breaker.allow():  # from here on, every way out tells the breaker how the call ended
            raise CircuitOpen(self.name, breaker.retry_after())
        # The breaker measures the upstream, not the request: only transport failures count
        # against it, and any answer, a 5xx included, shows the service is there.
        for attempt in (1, 2):
            try:
                status = await self._exchange(head, request, send, extra_headers)
            except (ConnectFailed, StaleConnection):
                if retryable and attempt == 1:
                    continue
                breaker.record_failure()
                raise UpstreamUnavailable(self.name) from None
            except (ConnectTimeout, ReadTimeout):
                breaker.record_failure()
                raise UpstreamTimeout(self.name) from None
            except UpstreamError:  # reset, or not an HTTP answer
                breaker.record_failure()
                raise UpstreamUnavailable(self.name) from None
            except ResponseStarted:  # closed mid-answer
                breaker.record_failure()
                raise
            except BaseException:  # the client went away, sent too much or too slowly: no verdict
                breaker.release_probe()
                raise
            breaker.record_success()
            return status
        raise AssertionError("unreachable")

    def _head(self, request: ForwardRequest) -> bytes:
        body = request.body
        framing = b""
        if body is not None:
            length = body.length
            framing = b"transfer-encoding: chunked\r\n" if length is None else b"content-length: %d\r\n" % length
        target = self.base_path + upstream_target(request.target)
        line = f"{request.method} {target} HTTP/1.1\r\nhost: ".encode("latin-1")
        # Never empty: the gateway adds its own X-Forwarded-* and X-Request-ID to every request.
        fields = b"\r\n".join([b": ".join(field) for field in forwarded_headers(request)])
        return b"".join((line, self.pool.host_header, b"\r\n", fields, b"\r\n", framing, b"\r\n"))

    async def _exchange(
        self, head: bytes, request: ForwardRequest, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> int:
        connection = await self.pool.acquire(self.connect_timeout)
        try:
            connection.start(head, head_only=request.method == "HEAD")
            if request.body is not None:
                await self._send_body(connection, request.body)
            status, headers = await connection.response_head()
            start = {"type": "http.response.start", "status": status, "headers": response_headers(headers, extra)}
            await send(start)  # type: ignore[arg-type]
            if connection.complete:  # the whole response is here (the usual small answer): one message
                body = connection.take_body()
                request.response_bytes += len(body)
                await send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                try:
                    async for piece in connection.body_pieces():
                        request.response_bytes += len(piece)
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                except UpstreamError as exc:
                    raise ResponseStarted(str(exc)) from exc
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except BaseException:
            connection.close()
            raise
        self.pool.release(connection)
        return status

    async def _send_body(self, connection: Connection, body: "RequestBody") -> None:
        chunked = body.length is None
        async for chunk in body.chunks():
            if connection.status:  # the upstream answered before reading it all
                connection.abandoned = True
                return
            await connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            await connection.write(b"0\r\n\r\n")

    async def _get(self, path: str, seconds: float) -> tuple[int, bytes]:
        """A plain GET of the gateway's own (readiness, OpenAPI) on the same pool, within ``seconds``."""
        async with asyncio.timeout(seconds):
            connection = await self.pool.acquire(seconds)
            try:
                head = f"GET {self.base_path}{path} HTTP/1.1\r\nhost: ".encode() + self.pool.host_header
                connection.start(head + b"\r\naccept: application/json\r\n\r\n", head_only=False)
                status, _ = await connection.response_head()
                body = b"".join([piece async for piece in connection.body_pieces()])
            except BaseException:
                connection.close()
                raise
            self.pool.release(connection)
            return status, body

    async def ready(self) -> None:
        status, _ = await self._get("/ready", READY_SECONDS)
        if status != 200:
            raise NotReady(f"answered {status}")

    async def answers(self) -> None:
        """Returns once the service answers HTTP at all (any status): the breaker's recovery probe."""
        await self._get("/ready", READY_SECONDS)

    async def get_json(self, path: str) -> Any:
        status, body = await self._get(path, 5)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET {path} answered {status}")
        return msgspec.json.decode(body)

    def close(self) -> None:
        self.breaker.stop_watching()
        self.pool.close()


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
        headers = forwarded_headers(request)
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
                kept = [
                    (name, value) for name, value in message.get("headers", []) if name.lower() not in SET_BY_GATEWAY
                ]
                headers = [*kept, *extra_headers]
                message = cast(Message, {**message, "headers": headers})
            elif message["type"] == "http.response.body":
                request.response_bytes += len(message.get("body", b""))
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
        # Only the embedded platform asks an in-process service this way: a gateway process that never
        # does leaves httpx unloaded.
        import httpx

        transport = httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            response = await client.get(path)
            response.raise_for_status()
            return response.json()


class TracedUpstream:
    """An upstream whose forwards are CLIENT spans (tracing on): the gateway's own HTTP/1.1 client has
    no instrumentation of its own. The span's ``traceparent`` replaces the client's, so the service
    continues the gateway's trace (which itself continues the client's)."""

    def __init__(self, upstream: Forward, tracer: Tracer) -> None:
        self.upstream = upstream
        self.name = upstream.name
        self.breaker = upstream.breaker
        self.tracer = tracer

    async def forward(self, request: ForwardRequest, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> int:
        attributes = {"http.request.method": request.method, "server.address": self.name}
        with self.tracer.start_as_current_span(
            f"{request.method} {self.name}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            request.headers = inject_headers(request.headers)
            # The upstream starts from its request's headers alone, as over the network: a service
            # in this process (embedded mode) then makes its own SERVER span, not an internal one.
            detached = otel_context.attach(otel_context.Context())
            try:
                status = await self.upstream.forward(request, send, extra_headers)
            finally:
                otel_context.detach(detached)
            span.set_attribute("http.response.status_code", status)
            return status

    async def ready(self) -> None:
        await self.upstream.ready()

    async def get_json(self, path: str) -> Any:
        return await self.upstream.get_json(path)
