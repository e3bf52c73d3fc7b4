"""HTTP plumbing shared by every service: request IDs, strict JSON bodies, client IPs, health and readiness."""

import asyncio
import functools
import ipaddress
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from itertools import accumulate
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, SerializationException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.serialization import default_deserializer
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import request_id_var

REQUEST_ID_HEADER = "x-request-id"
_WELL_FORMED_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
READY_CHECK_TIMEOUT_SECONDS = 2.0


def ensure_request_id(scope: Scope) -> str:
    """The request's ID: a well-formed incoming ``X-Request-ID``, else a new one."""
    state = scope.setdefault("state", {})
    request_id: str | None = state.get("request_id")
    if request_id is None:
        incoming = header(scope, REQUEST_ID_HEADER.encode())
        request_id = incoming if incoming and _WELL_FORMED_ID.match(incoming) else _new_request_ids.next()
        state["request_id"] = request_id
    return request_id


class _RandomIds:
    """128 random bits in 32 hex digits, as ``uuid4().hex`` without building a UUID, read from the
    OS for 256 IDs at a time: one system call, not one per request. A forked child starts afresh."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def next(self) -> str:
        at = self.at
        if at >= len(self.pool):
            self.pool, at = os.urandom(16 * 256), 0
        self.at = at + 16
        return self.pool[at : at + 16].hex()

    def forget(self) -> None:
        self.pool, self.at = b"", 0


_new_request_ids = _RandomIds()
os.register_at_fork(after_in_child=_new_request_ids.forget)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case)."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestIdMiddleware:
    """Binds the request ID to the log context for everything the request does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = request_id_var.set(ensure_request_id(scope) if scope["type"] == ScopeType.HTTP else None)
        try:
            await self.app(scope, receive, send)
        finally:
            request_id_var.reset(token)


MAX_JSON_DEPTH = 32
"""How deeply arrays and objects may nest in a JSON body. No route needs more; a body nested a
thousand deep would exhaust the decoder's (and later the database driver's) recursion."""
UNSTORABLE_TEXT = "contains the NUL character, which cannot be stored"
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[{]}")
# What may make a query string or path not UTF-8 text, or hold a NUL character, once decoded.
_NON_ASCII_ESCAPE = re.compile(rb"%[89a-fA-F][0-9a-fA-F]|[\x80-\xff]")
_SUSPECT_QUERY = re.compile(rb"%00|\x00|%[89a-fA-F][0-9a-fA-F]|[\x80-\xff]")


def nests_too_deeply(body: bytes) -> bool:
    """Whether the arrays and objects of a JSON text nest deeper than ``MAX_JSON_DEPTH`` (brackets
    inside strings not counted). Fewer brackets than the limit in all is the usual, free answer."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(_BRACKETS, delete=_NOT_BRACKETS)
    return max(accumulate(memoryview(brackets).cast("b")), default=0) > MAX_JSON_DEPTH


def refuse_unsafe_json(body: bytes, *, nul: bool = True) -> None:
    """The kernel's door for a JSON body, also for routes that pass a body on unparsed: a body
    that is not UTF-8 is a 400; one nested deeper than ``MAX_JSON_DEPTH``, or (unless ``nul`` is
    false) holding the NUL character in a string or a key (PostgreSQL's text cannot hold it,
    SQLite's can: refused on both), is a 422 naming the field."""
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise ClientException("The body is not UTF-8 text (RFC 8259 §8.1).") from None
    if nests_too_deeply(body):
        raise ValidationException(
            detail="The JSON body is nested too deeply",
            extra=[{"message": f"arrays and objects nest more than {MAX_JSON_DEPTH} levels deep", "source": "body"}],
        )
    if not nul or b"\\u0000" not in body:  # JSON can only write a NUL character so
        return
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return  # not JSON: the decoder that follows says so
    where = _nul_path(value, "")
    if where is not None:
        raise unstorable_text(where, "body")


def _nul_path(value: Any, path: str) -> str | None:
    """Where (as msgspec names it: ``events[0].properties.text``) a NUL character hides, if anywhere."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else key
            if "\x00" in key:
                return inner.replace("\x00", "\\u0000")
            if (found := _nul_path(item, inner)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_path(item, f"{path}[{index}]")) is not None:
                return found
    return None


def unstorable_text(key: str, source: str) -> ValidationException:
    """The 422 for a field holding the NUL character."""
    return _invalid_text(key, UNSTORABLE_TEXT, source)


async def refuse_unstorable_parameters(request: Request[Any, Any, Any]) -> None:
    """``before_request``: a query parameter that is not UTF-8 text or holds the NUL character, or
    a path parameter with the NUL character, is a 422 naming it, before any handler or database
    sees it (query parameters the route does not take included)."""
    query: bytes = request.scope.get("query_string", b"")
    if _SUSPECT_QUERY.search(query):
        for raw_name, raw_value in _query_pairs(query):
            name = raw_name.decode("utf-8", "replace")
            try:
                value = raw_value.decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid_text(name, "is not UTF-8 text", "query") from None
            if "\x00" in name or "\x00" in value:
                raise unstorable_text(name.replace("\x00", "\\u0000"), "query")
    raw_path: bytes = request.scope.get("raw_path") or b""
    if _NON_ASCII_ESCAPE.search(raw_path):
        try:
            unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid_text("path", "is not UTF-8 text", "path") from None
    for name, value in (request.scope.get("path_params") or {}).items():
        if isinstance(value, str) and "\x00" in value:
            raise unstorable_text(name, "path")


def _query_pairs(query: bytes) -> list[tuple[bytes, bytes]]:
    """``name=value`` pairs of a query string, percent-decoded to bytes (``parse_qsl`` decodes to text)."""
    pairs = []
    for part in query.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            pairs.append((unquote_to_bytes(name.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))))
    return pairs


def _invalid_text(key: str, message: str, source: str) -> ValidationException:
    """A 422 naming the field (its name cut short: a client may send any)."""
    return ValidationException(
        detail="A value is not valid", extra=[{"message": message, "key": key[:100], "source": source}]
    )


# The date-times the platform takes, in UTC: a day short of either end of what a date-time holds,
# so that a window a query opens a day either side of one (or its move to UTC) stays a date-time.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
OUT_OF_RANGE = "is outside 0001-01-02 to 9999-12-30 (UTC)"


def in_utc(moment: datetime) -> datetime | None:
    """``moment`` in UTC (one without an offset taken as UTC), or None outside EARLIEST..LATEST."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        return None
    return moment if EARLIEST <= moment <= LATEST else None


def as_utc(moment: datetime | None, name: str) -> datetime | None:
    """A date-time query parameter in UTC; one without an offset is taken as UTC (a column of UTC
    times cannot compare with it otherwise). One outside EARLIEST..LATEST is a 422 naming it."""
    if moment is None:
        return None
    converted = in_utc(moment)
    if converted is None:
        raise _invalid_text(name, OUT_OF_RANGE, "query")
    return converted


def check_date_time(moment: datetime | None, name: str) -> None:
    """For a body's ``__post_init__``: a date-time outside EARLIEST..LATEST fails the body's
    validation (a 422), as a parameter's does."""
    if moment is not None and in_utc(moment) is None:
        raise ValueError(f"{name} {OUT_OF_RANGE}")


class CheckedBodyRequest(Request[Any, Any, Any]):
    """A request whose JSON body passes the kernel's door (``refuse_unsafe_json``) before Litestar
    decodes it, with Litestar's own lenient conversion (the legacy routes keep that)."""

    async def json(self) -> Any:
        refuse_unsafe_json(await self.body())
        return await super().json()


class StrictBodyRequest(CheckedBodyRequest):
    """A request whose JSON body is decoded straight into the handler's ``data`` type with msgspec's
    strict rules, after the kernel's door (``refuse_unsafe_json``). Litestar converts bodies as
    leniently as query strings (``"5"`` for a number, ``"true"`` for a boolean, a number for a
    date-time), but JSON has types of its own: a value of the wrong type is a 422 naming the field.
    Query, path and header parameters are text by nature and keep being converted; Litestar takes
    the decoded value as it is.

    A route whose handler reports the NUL character per item of a batch (``opt`` ``nul_per_item``)
    gets its body with them; the nesting limit holds for it too."""

    async def json(self) -> Any:
        body_type = _json_body_type(self.route_handler)
        if body_type is None:
            return await super().json()
        body = await self.body() or b"null"
        refuse_unsafe_json(body, nul=not self.route_handler.opt.get("nul_per_item"))
        dec_hook = partial(default_deserializer, type_decoders=self.route_handler.resolve_type_decoders())
        try:
            return msgspec.json.decode(body, type=body_type, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            raise _body_validation_error(self, exc) from None
        except msgspec.DecodeError as exc:
            raise SerializationException(str(exc)) from exc  # not JSON at all: Litestar's 400


def _json_body_type(handler: BaseRouteHandler) -> Any:
    """The type the handler declares for its body (``data``), ``None`` if it takes none."""
    data = handler.parsed_fn_signature.parameters.get("data")
    return None if data is None else data.annotation


def _body_validation_error(request: Request[Any, Any, Any], exc: msgspec.ValidationError) -> ValidationException:
    """The error Litestar raises for a body that fails its schema, with the field's path as key."""
    message, _, path = str(exc).partition(" - at `$")
    error: dict[str, str] = {"message": message, "source": "body"}
    if key := path.rstrip("`").lstrip("."):
        error["key"] = key
    return ValidationException(detail=f"Validation failed for {request.method} {request.url.path}", extra=[error])


# What every response of the platform carries besides its request ID (the gateway's direct path,
# which sends its own response head, sets the same through standard_response_headers).
STANDARD_RESPONSE_HEADERS: tuple[tuple[str, str], ...] = (("x-content-type-options", "nosniff"),)
_STANDARD_PAIRS = tuple((name.encode(), value.encode()) for name, value in STANDARD_RESPONSE_HEADERS)


async def add_standard_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the request ID and ``nosniff`` on every response, 404s included."""
    if message["type"] == "http.response.start":
        _set_header(message, REQUEST_ID_HEADER, ensure_request_id(scope))
        for name, value in STANDARD_RESPONSE_HEADERS:
            _set_header(message, name, value)


def standard_response_headers(request_id: str) -> list[tuple[bytes, bytes]]:
    """What :func:`add_standard_headers` sets, as raw header pairs, for a response sent past it."""
    return [(b"x-request-id", request_id.encode("latin-1")), *_STANDARD_PAIRS]


def _set_header(message: Message, name: str, value: str) -> None:
    """``MutableScopeHeaders.from_message(message)[name] = value``, without decoding every header.

    ``name`` is lower-case ASCII, so ``bytes.lower()`` matches exactly what Litestar's
    latin-1-decode-then-lower matches. A list with at most one such header (every response in
    practice) is edited here; anything else goes through Litestar, unchanged.
    """
    headers = message.get("headers")
    if type(headers) is list:
        key = name.encode("latin-1")
        found = [index for index, (header, _) in enumerate(headers) if header.lower() == key]
        if len(found) <= 1:
            if found:
                headers[found[0]] = (key, value.encode("latin-1"))
            else:
                headers.append((key, value.encode("latin-1")))
            return
    MutableScopeHeaders.from_message(message)[name] = value


def client_ip(scope: Scope, trusted_proxies: list[str]) -> str:
    """The client's address: the peer, or with trusted proxies the rightmost untrusted hop
    of ``X-Forwarded-For``; in its canonical spelling (``canonical_ip``), so one address is
    one key for every limit, log and record however it was written."""
    raw_peer = str((scope.get("client") or ("127.0.0.1", 0))[0])
    peer = canonical_ip(raw_peer) or raw_peer  # not an address: a Unix socket's peer, say
    networks = trusted_networks(tuple(trusted_proxies)) if trusted_proxies else ()
    if not networks or not _in_networks(peer, networks):
        return peer
    # Several header lines are one list (RFC 9110 5.3): a proxy may add its own line.
    forwarded = ",".join(
        value.decode("latin-1") for key, value in scope.get("headers", []) if key.lower() == b"x-forwarded-for"
    )
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, networks):
            return canonical_ip(hop) or peer
    return (canonical_ip(hops[0]) if hops else None) or peer


@functools.lru_cache(maxsize=16)
def trusted_networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parsed once per configuration, not once per request."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def canonical_ip(value: str) -> str | None:
    """``value`` as one spelling of its address, or None if it is not one: an IPv4-mapped IPv6
    address (``::ffff:192.0.2.1``) as the IPv4 address it is, IPv6 in RFC 5952's compressed lower
    case without a zone (``2001:DB8:0::1%eth0`` → ``2001:db8::1``)."""
    # Longer is no address; and a client's long strings must not fill the cache.
    return _canonical_ip(value) if len(value) <= _LONGEST_ADDRESS else None


_LONGEST_ADDRESS = 64  # 45 characters for the longest IPv6 text, and room for a short zone


@functools.lru_cache(maxsize=8192)
def _canonical_ip(value: str) -> str | None:
    try:
        ip = ipaddress.ip_address(value.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@functools.lru_cache(maxsize=8192)
def address_key(address: str, ipv6_prefix: int = 64) -> str:
    """What a per-address limit counts ``address`` (from ``client_ip``) under: an IPv4 address as
    it is, an IPv6 address as its network of ``ipv6_prefix`` bits. One subscriber, one host even,
    holds a whole /64, so keyed per address it would have 2**64 budgets."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    except ValueError:
        return address


def _in_networks(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    canonical = canonical_ip(address)
    return canonical is not None and _canonical_in_networks(canonical, networks)


@functools.lru_cache(maxsize=8192)
def _canonical_in_networks(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


ReadinessCheck = Callable[[], Awaitable[None]]


class CheckResult(msgspec.Struct):
    status: str
    error: str | None = None


class HealthResponse(msgspec.Struct):
    status: str
    service: str
    version: str


class ReadinessResponse(msgspec.Struct):
    status: str
    service: str
    checks: dict[str, CheckResult]


class Degraded(Exception):
    """Raised by a readiness check whose dependency is down but has a fallback: reported, not fatal."""


async def run_check(check: ReadinessCheck) -> CheckResult:
    try:
        await asyncio.wait_for(check(), READY_CHECK_TIMEOUT_SECONDS)
    except Degraded as exc:
        return CheckResult(status="degraded", error=str(exc) or None)
    except TimeoutError:
        return CheckResult(status="fail", error="timed out")
    except Exception as exc:
        return CheckResult(status="fail", error=type(exc).__name__)
    return CheckResult(status="ok")


class HealthController(Controller):
    """Liveness (no I/O) and readiness (every dependency checked)."""

    include_in_schema = True
    tags = ["health"]

    @get("/health", operation_id="health", opt={"exclude_from_auth": True}, sync_to_thread=False)
    def health(self, request: Request[Any, Any, Any]) -> HealthResponse:
        """Liveness: the process answers. Does no I/O."""
        state = request.app.state
        return HealthResponse(status="ok", service=state.service_name, version=state.version)

    @get(
        "/ready",
        operation_id="ready",
        opt={"exclude_from_auth": True},
        responses={503: ResponseSpec(data_container=ReadinessResponse, description="A dependency is down")},
    )
    async def ready(self, request: Request[Any, Any, Any]) -> Response[ReadinessResponse]:
        """Readiness: 200 when every dependency answers, 503 with per-check status otherwise."""
        state = request.app.state
        checks: dict[str, ReadinessCheck] = state.readiness_checks
        names = list(checks)
        results = await asyncio.gather(*(run_check(checks[name]) for name in names))
        by_name = dict(zip(names, results, strict=True))
        ok = all(result.status in ("ok", "degraded") for result in results)
        body = ReadinessResponse(status="ready" if ok else "unavailable", service=state.service_name, checks=by_name)
        return Response(body, status_code=200 if ok else 503)
