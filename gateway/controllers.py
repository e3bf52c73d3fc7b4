"""The gateway's routes: one proxying mount per upstream prefix, the merged OpenAPI and the docs."""

import logging
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get
from litestar.exceptions import HTTPException, InternalServerException, NotFoundException
from litestar.handlers import ASGIRouteHandler, asgi
from litestar.types import Receive, Scope, Send
from prometheus_client import Gauge

from gateway.accesslog import AccessLog
from gateway.admission import Gatekeeper
from gateway.api_keys import INTERNAL_PREFIX, is_internal
from gateway.errors import MethodNotAllowed, PayloadTooLarge, RepeatedHeader
from gateway.idempotency import KEYED_METHODS, Idempotency
from gateway.metrics import PROXY_METRICS
from gateway.openapi import DOCS_HTML
from gateway.proxy import Forward, ForwardRequest, RequestBody, ResponseStarted
from gateway.routing import Route, RouteTable, checked_path
from gateway.usage import UsageEmitter
from shared.errors import PROBLEM_MEDIA_TYPE, problem_for_exception
from shared.http import client_ip, ensure_request_id, standard_response_headers
from shared.logs import request_id_var

logger = logging.getLogger("gateway")

# With several workers (multiprocess metrics) each mirrors its count and /metrics sums the live ones.
IN_FLIGHT = Gauge("pyairtable_gateway_requests_in_flight", "Requests being proxied", multiprocess_mode="livesum")
_in_flight = [0]  # read by the gauge at scrape time: no lock taken twice per request
IN_FLIGHT.set_function(lambda: _in_flight[0])
_encoder = msgspec.json.Encoder()


def standard_headers(request_id: str, cors: bool) -> list[tuple[bytes, bytes]]:
    """What ``shared.http.add_standard_headers`` (and, with CORS, ``vary_on_origin``) would add:
    the proxy sets them itself, so a request sent past Litestar (``GatewayApp``) gets them too;
    on Litestar's way the hooks find them in place."""
    headers = standard_response_headers(request_id)
    if cors:
        headers.append((b"vary", b"Origin"))
    return headers


class ProxyContext(msgspec.Struct):
    """What every proxied request uses, made by the gateway's lifespan (``GatewayApp.proxy_context``):
    plain attributes, where ``app.state`` costs a Python-level lookup each."""

    routes: RouteTable
    gatekeeper: Gatekeeper
    upstreams: dict[str, Forward]
    usage: UsageEmitter
    access_log: AccessLog
    trusted_proxies: list[str]
    max_body_size: int
    client_body_timeout: float
    idempotency: Idempotency


PROXIED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ALLOW_HEADER = ", ".join(sorted(PROXIED_METHODS))

# The request headers the proxy reads (names as ASGI servers give them: lower case).
_READ_HEADERS = frozenset(
    {b"authorization", b"x-api-key", b"host", b"content-length", b"transfer-encoding", b"idempotency-key"}
)
# Of those, the ones a request may carry once: with two, the gateway would check one and the upstream
# might read the other (RFC 9110 §5.3: none of them is a list).
_SINGLE_HEADERS = _READ_HEADERS - {b"transfer-encoding"}


def _read_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The value of each of ``_READ_HEADERS`` present, in one pass; RepeatedHeader for a second one."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        name = name.lower()
        if name in _READ_HEADERS:
            if name not in found:
                found[name] = value
            elif name in _SINGLE_HEADERS:
                raise RepeatedHeader(name.decode().title())
    return found


def proxy_handler(route: Route, cors: bool = False) -> ASGIRouteHandler:
    """A mount that admits and forwards everything under ``route.prefix`` (``cors``: CORS is on)."""
    # Only a mount at or above the services' internal routes can be asked for one: the others skip the check.
    guards_internal = is_internal(route.prefix) or INTERNAL_PREFIX.startswith(route.prefix + "/")

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        context: ProxyContext = scope["app"].proxy_context  # type: ignore[attr-defined]  # a GatewayApp
        started = time.perf_counter()
        request_id = ensure_request_id(scope)
        ip = client_ip(scope, context.trusted_proxies)
        method: str = scope["method"]  # type: ignore[typeddict-item]  # mounts see HTTP scopes only
        status, request = 500, None
        user_id = organization_id = key_id = None
        _in_flight[0] += 1
        log_context = request_id_var.set(request_id)  # as RequestIdMiddleware does on Litestar's way
        try:
            if method not in PROXIED_METHODS:  # TRACE (cross-site tracing), CONNECT, WebDAV, made-up ones
                raise MethodNotAllowed(method, ALLOW_HEADER)
            path = checked_path(scope.get("raw_path") or scope["path"].encode())
            if context.routes.match(path) != route or (guards_internal and is_internal(path)):
                raise NotFoundException()
            headers = _read_headers(scope["headers"])
            authorization, api_key = headers.get(b"authorization"), headers.get(b"x-api-key")
            admission = await context.gatekeeper.admit(
                method,
                path,
                authorization.decode("latin-1") if authorization is not None else None,
                ip,
                api_key.decode("latin-1") if api_key is not None else None,
                request_id,
            )
            user_id, organization_id, key_id = admission.user_id, admission.organization_id, admission.key_id
            query: bytes = scope["query_string"]
            request = ForwardRequest(
                method=method,
                target=path + "?" + query.decode("latin-1") if query else path,
                headers=_with_credential(scope["headers"], admission.authorization),
                client_ip=ip,
                proto=scope.get("scheme", "http"),
                host=headers.get(b"host", b"").decode("latin-1"),
                request_id=request_id,
                body=_request_body(headers, receive, context.max_body_size, context.client_body_timeout),
            )
            upstream_started = time.perf_counter()
            extra = admission.decision.raw_headers(admission.policy)
            extra += standard_headers(request_id, cors)
            upstream = context.upstreams[route.prefix]
            idempotency_key = headers.get(b"idempotency-key")
            if idempotency_key is not None and method in KEYED_METHODS:
                caller = user_id or "ip:" + ip
                status = await context.idempotency.forward(
                    idempotency_key, caller, request, upstream.forward, send, extra
                )
            else:
                status = await upstream.forward(request, send, extra)
            PROXY_METRICS.upstream_answered(route.template, time.perf_counter() - upstream_started)
        except ResponseStarted as exc:
            status = 502
            logger.warning("upstream failed mid-response", extra={"route": route.template, "error": str(exc)})
        except HTTPException as exc:
            # The mount rewrote scope["path"]; the problem names the path the client asked for.
            instance = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            status = await send_problem(send, exc, request_id, instance, cors)
        except Exception:  # as Litestar's exception middleware would
            logger.exception("proxy failed", extra={"route": route.template})
            status = await send_problem(send, InternalServerException(), request_id, scope["path"], cors)
        finally:
            request_id_var.reset(log_context)
            _in_flight[0] -= 1
            elapsed = time.perf_counter() - started
            PROXY_METRICS.finished(route.template, method, status, elapsed)
            # The one "request finished" point: method, route template, status, latency (elapsed),
            # user, request ID, client IP and the response body bytes relayed
            # (``request.response_bytes``; no request when refused before forwarding) are known here.
            context.usage.record(
                user_id, method, route.prefix, status, elapsed, request_id, scope, organization_id, key_id
            )
            access_log = context.access_log
            if access_log.enabled:
                access_log.request(method, route.template, status, elapsed, user_id, request_id, ip)

    return asgi(
        route.prefix,
        is_mount=True,
        copy_scope=True,
        name=f"proxy:{route.name}",
        opt={"exclude_from_auth": True, "exclude_from_metrics": True},
    )(proxy)


def _with_credential(headers: Iterable[tuple[bytes, bytes]], authorization: str | None) -> list[tuple[bytes, bytes]]:
    """The client's headers; with an API key, the key's access token takes the place of the key."""
    if authorization is None:
        return list(headers)
    kept = [(name, value) for name, value in headers if name.lower() not in (b"authorization", b"x-api-key")]
    return [*kept, (b"authorization", authorization.encode("latin-1"))]


def _request_body(headers: dict[bytes, bytes], receive: Receive, limit: int, timeout: float) -> RequestBody | None:
    length = headers.get(b"content-length")
    chunked = b"transfer-encoding" in headers
    if length is None and not chunked:
        return None
    declared = int(length) if length is not None and length.isdigit() and not chunked else None
    if declared is not None and declared > limit:
        raise PayloadTooLarge(limit)
    return RequestBody(receive, limit, declared, timeout)


async def send_problem(send: Send, exc: HTTPException, request_id: str, path: str, cors: bool = False) -> int:
    problem, headers = problem_for_exception(exc, request_id, path)
    body = _encoder.encode(problem)
    raw_headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw_headers += standard_headers(request_id, cors)
    await send({"type": "http.response.start", "status": problem.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return problem.status


class PlatformDocsController(Controller):
    """The whole platform's API description."""

    tags = ["gateway"]

    @get("/api/v1/openapi.json", operation_id="platform_openapi", opt={"exclude_from_auth": True})
    async def openapi(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Every service's OpenAPI document merged into one (cached)."""
        document: dict[str, Any] = await request.app.state.openapi.document()
        return document

    @get(
        "/api/docs",
        operation_id="platform_docs",
        media_type=MediaType.HTML,
        opt={"exclude_from_auth": True},
        sync_to_thread=False,
    )
    def docs(self) -> Response[str]:
        """Interactive documentation for the whole platform."""
        return Response(DOCS_HTML, media_type=MediaType.HTML)
