import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from http import HTTPStatus
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accesslog import AccessLog
from gateway.admission import Gatekeeper
from gateway.compat import LegacyAnalyticsController, LegacyAuthController, mark_deprecated
from gateway.config import GatewaySettings
from gateway.controllers import IN_FLIGHT, PlatformDocsController, ProxyContext, proxy_handler, send_problem
from gateway.errors import CORSRefused
from gateway.idempotency import Idempotency
from gateway.metrics import BREAKER_METRICS, PROXY_METRICS, shared_with_other_workers
from gateway.openapi import OpenAPIAggregator
from gateway.proxy import Forward, HTTPUpstream, InProcessUpstream, NotReady, TracedUpstream
from gateway.ratelimit import RateLimiter
from gateway.readiness import UpstreamReadiness
from gateway.routing import Route, RouteTable
from gateway.transport.breaker import FIRST_OPEN_SECONDS, CircuitBreaker
from gateway.usage import usage_emitter
from shared.events import EventBus
from shared.http import Degraded, ensure_request_id, header, run_check
from shared.service import create_service_app
from shared.settings import dev_secret_file, load_settings
from shared.stores import KeyValueStore, create_redis
from shared.tracing import TRACER_NAME, instrument_redis, traced_asgi
from shared.usage import UsagePublisher

logger = logging.getLogger("gateway")
AUTH_PREFIX = "/api/v1/auth"  # the upstream that checks API keys
IN_FLIGHT_MARGIN_SECONDS = 5.0  # an idempotency key stays locked this long past the upstream timeouts


def create_app(
    settings: GatewaySettings | None = None,
    *,
    services: Mapping[str, Litestar] | None = None,
    proxied: Mapping[str, str] | None = None,
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
    usage: UsagePublisher | None = None,
) -> Litestar:
    """The gateway. ``services`` (prefix → app) run in-process (embedded mode); ``proxied``
    (prefix → URL) are reached over HTTP. Without either, every route of the settings is proxied."""
    settings = settings or load_settings(GatewaySettings)
    services = services or {}
    proxied = dict(settings.upstream_urls() if proxied is None and not services else proxied or {})
    prefixes = [*services, *(prefix for prefix in proxied if prefix not in services)]
    routes = RouteTable(prefixes)

    @asynccontextmanager
    async def gateway_resources(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # Several workers: what these keep in memory goes to /metrics through the shared files.
            await stack.enter_async_context(
                shared_with_other_workers([(PROXY_METRICS, ""), (BREAKER_METRICS, "livemax"), (IN_FLIGHT, "livesum")])
            )
            upstreams: dict[str, Forward] = {}
            for prefix, service in services.items():
                upstreams[prefix] = await _in_process(stack, prefix, service, settings)
            for prefix, url in proxied.items():
                if prefix not in upstreams:
                    over_http = _over_http(prefix, url, settings)
                    stack.callback(over_http.close)
                    upstreams[prefix] = over_http
            # Readiness and the merged OpenAPI ask the upstreams themselves; requests go through
            # their traced forms when tracing is on.
            readiness = UpstreamReadiness(upstreams.values())
            checked_upstreams = list(upstreams.values())
            openapi = OpenAPIAggregator(dict(upstreams), settings.openapi_cache_seconds)
            tracer_provider = app.state.tracer_provider
            if tracer_provider is not None:
                tracer = tracer_provider.get_tracer(TRACER_NAME)
                upstreams = {prefix: TracedUpstream(upstream, tracer) for prefix, upstream in upstreams.items()}
            limiter_redis = (
                create_redis(settings, timeout=settings.rate_limit_redis_timeout) if settings.redis_url else None
            )
            if limiter_redis is not None:
                stack.push_async_callback(limiter_redis.aclose)
                if tracer_provider is not None:
                    instrument_redis(limiter_redis, tracer_provider)
            limiter = RateLimiter(limiter_redis, settings.redis_namespace)
            stack.push_async_callback(limiter.aclose)
            app.state.access_log = access_log = AccessLog(settings.service_name, settings.access_log)
            stack.callback(access_log.flush)
            app.state.trusted_proxies = settings.trusted_proxy_list
            app.state.routes = routes
            app.state.upstreams = upstreams
            app.state.limiter = limiter
            app.state.usage = await stack.enter_async_context(usage_emitter(settings, usage))
            app.state.gatekeeper = Gatekeeper(
                settings,
                app.state.verifier,
                app.state.revocations,
                limiter,
                app.state.api_key,
                key_checker=upstreams.get(AUTH_PREFIX),
            )
            app.state.openapi = openapi
            assert isinstance(app, GatewayApp)
            app.proxy_context = ProxyContext(
                routes=routes,
                gatekeeper=app.state.gatekeeper,
                upstreams=upstreams,
                usage=app.state.usage,
                access_log=access_log,
                trusted_proxies=settings.trusted_proxy_list,
                max_body_size=settings.max_body_size,
                client_body_timeout=settings.client_body_timeout,
                idempotency=Idempotency(  # shared or nothing: per process, a retry could run twice
                    app.state.store.shared,
                    settings.connect_timeout + settings.request_timeout + IN_FLIGHT_MARGIN_SECONDS,
                ),
            )
            # A gateway with Redis or some upstreams down still serves: reported as degraded, still
            # ready; with every upstream unreachable it is not (gateway/readiness.py).
            checks = app.state.readiness_checks
            if settings.redis_url:
                checks["redis"] = _degraded_when_down(app.state.store.ping, "per-process rate limits in force")
            for upstream in checked_upstreams:
                checks[f"upstream:{upstream.name}"] = readiness.check(upstream)
            yield

    cors = bool(settings.cors_origin_list)
    proxies = {route.prefix: proxy_handler(route, cors) for route in routes.routes}
    app = create_service_app(
        settings,
        title="PyAirtable API gateway",
        route_handlers=[PlatformDocsController, LegacyAuthController, LegacyAnalyticsController, *proxies.values()],
        lifespan=[gateway_resources],
        store=store,
        bus=bus,
        database=False,
        cors_config=_cors(settings),
        before_send=[mark_deprecated, *([vary_on_origin] if cors else [])],
        state={"api_key": _api_key(settings)},
        app_class=GatewayApp,
    )
    assert isinstance(app, GatewayApp)
    endpoints: dict[str, ASGIApp] = {prefix: handler.fn for prefix, handler in proxies.items()}
    tracer_provider = app.state.tracer_provider
    if tracer_provider is not None:  # requests sent past Litestar get their SERVER span here
        endpoints = {
            route.prefix: traced_asgi(endpoints[route.prefix], tracer_provider, route.template)
            for route in routes.routes
        }
    app.direct = DirectRoutes(routes, endpoints, cors)
    if cors:
        app.asgi_handler = _preflight_refusals_as_problems(app.asgi_handler)
    return app


class DirectRoutes:
    """Which requests ``GatewayApp`` sends straight to a proxy handler, and which handler."""

    def __init__(self, routes: RouteTable, endpoints: dict[str, ASGIApp], cors: bool) -> None:
        self.routes = routes
        self.endpoints = endpoints
        self.cors = cors

    def route(self, scope: Scope) -> Route | None:
        """The proxied route of an HTTP request, unless CORS must look at it (an ``Origin`` with CORS on)."""
        if self.cors and header(scope, b"origin") is not None:
            return None
        return self.routes.match(scope["path"])


class GatewayApp(Litestar):
    """The gateway's Litestar app. Proxied requests go straight to their mount's handler, past
    Litestar's entry, ``before_send`` hooks, router and middleware passes (exceptions, request ID,
    metrics and auth, which the proxy routes opt out of or do themselves): a fifth of a proxied
    request's CPU (docs/PERFORMANCE.md). The proxy handler sets the headers those hooks would (request
    ID, ``nosniff``, ``Vary: Origin`` with CORS on), binds the request ID to the log context and
    answers an unexpected error with a problem+json 500. With CORS on, requests carrying
    ``Origin`` take Litestar's way, through its CORS middleware; everything else is Litestar's."""

    direct: DirectRoutes | None = None
    proxy_context: ProxyContext | None = None  # set by the lifespan

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        direct = self.direct
        if direct is not None and scope["type"] == "http":
            route = direct.route(scope)
            if route is not None:
                scope["app"] = scope["litestar_app"] = self
                scope.setdefault("state", {})
                await direct.endpoints[route.prefix](scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _api_key(settings: GatewaySettings) -> str | None:
    """The key legacy routes require (None: not required); outside production one is made in DATA_DIR."""
    if not settings.require_api_key:
        return None
    return settings.api_key or dev_secret_file(settings, "api_key")


async def vary_on_origin(message: Message, scope: Scope) -> None:
    """With CORS on, every answer depends on the Origin header (allowed or not): say so to caches."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        if not any(name.lower() == b"vary" and b"origin" in value.lower() for name, value in headers):
            message["headers"] = [*headers, (b"vary", b"Origin")]


def _preflight_refusals_as_problems(litestar_handler: ASGIApp) -> ASGIApp:
    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and _is_preflight(scope):
            send = _refusal_as_problem(scope, send)
        await litestar_handler(scope, receive, send)

    return handle


def _is_preflight(scope: Scope) -> bool:
    return (
        scope["method"] == "OPTIONS"  # type: ignore[typeddict-item]  # an HTTP scope
        and header(scope, b"origin") is not None
        and header(scope, b"access-control-request-method") is not None
    )


def _refusal_as_problem(scope: Scope, send: Send) -> Send:
    """Litestar's CORS middleware answers every preflight itself, a refused one (origin, method or
    headers not allowed) with a 400 text/plain: sent as the platform's problem+json instead (403)."""
    refused: list[bytes] = []

    async def send_or_replace(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == HTTPStatus.BAD_REQUEST:
            refused.append(b"")
            return
        if refused and message["type"] == "http.response.body":
            refused.append(message.get("body", b""))
            if not message.get("more_body", False):
                reason = b"".join(refused).decode("utf-8", "replace")  # e.g. "Disallowed CORS Origin"
                request_id = ensure_request_id(scope)
                await send_problem(send, CORSRefused(reason), request_id, scope["path"], cors=True)
            return
        await send(message)

    return send_or_replace


def _cors(settings: GatewaySettings) -> CORSConfig | None:
    origins = settings.cors_origin_list
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_credentials=settings.cors_allow_credentials,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key", "X-API-Key"],
        expose_headers=[
            "X-Request-ID",
            "RateLimit",
            "RateLimit-Policy",
            "Retry-After",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        ],
    )


def _breaker(settings: GatewaySettings, upstream: str) -> CircuitBreaker:
    breaker = CircuitBreaker(
        settings.breaker_failures,
        settings.breaker_reset_seconds,
        first_open_seconds=FIRST_OPEN_SECONDS,
        name=upstream,
    )
    BREAKER_METRICS.track(upstream, breaker)
    return breaker


def _over_http(prefix: str, url: str, settings: GatewaySettings) -> HTTPUpstream:
    name = prefix.rsplit("/", 1)[-1]
    upstream = HTTPUpstream(
        name=name,
        base_url=url,
        pool_size=settings.upstream_pool_size,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.request_timeout,
        breaker=_breaker(settings, name),
        retry_idempotent=settings.retry_idempotent,
    )
    # While the breaker is open, the upstream's /ready is asked in the background: any answer closes it.
    upstream.breaker.recovery_probe = upstream.answers
    return upstream


async def _in_process(stack: AsyncExitStack, prefix: str, service: Litestar, settings: GatewaySettings) -> Forward:
    await stack.enter_async_context(service.lifespan())

    async def ready() -> None:
        results = [await run_check(check) for check in service.state.readiness_checks.values()]
        failed = [result.error for result in results if result.status == "fail"]
        if failed:
            raise NotReady(", ".join(str(error) for error in failed))

    name = prefix.rsplit("/", 1)[-1]
    return InProcessUpstream(name, service, ready, settings.request_timeout, _breaker(settings, name))


def _degraded_when_down(check_dependency: Any, consequence: str) -> Any:
    async def check() -> None:
        try:
            await check_dependency()
        except Exception as exc:
            raise Degraded(f"{type(exc).__name__}: {consequence}") from exc

    return check
