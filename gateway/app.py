from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig

from gateway.breaker import CircuitBreaker
from gateway.config import GatewaySettings
from gateway.controllers import PlatformDocsController, proxy_handler
from gateway.openapi import OpenAPIAggregator
from gateway.proxy import Forward, HTTPUpstream, InProcessUpstream, http_session
from gateway.ratelimit import RateLimiter
from gateway.routing import RouteTable
from gateway.services import Gatekeeper
from shared.events import EventBus
from shared.http import Degraded, run_check
from shared.service import create_service_app
from shared.settings import load_settings
from shared.stores import KeyValueStore, create_redis


def create_app(
    settings: GatewaySettings | None = None,
    *,
    services: Mapping[str, Litestar] | None = None,
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
) -> Litestar:
    """The gateway. With ``services`` (prefix → app) it runs them in-process (embedded mode);
    otherwise it proxies over HTTP to the URLs in its settings."""
    settings = settings or load_settings(GatewaySettings)
    prefixes = list(services) if services is not None else list(settings.upstream_urls())
    routes = RouteTable(prefixes)

    @asynccontextmanager
    async def gateway_resources(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if services is not None:
                upstreams = {p: await _in_process(stack, p, svc, settings) for p, svc in services.items()}
            else:
                session = await stack.enter_async_context(http_session(settings.upstream_pool_size))
                upstreams = {p: _over_http(p, url, session, settings) for p, url in settings.upstream_urls().items()}
            limiter_redis = (
                create_redis(settings, timeout=settings.rate_limit_redis_timeout) if settings.redis_url else None
            )
            if limiter_redis is not None:
                stack.push_async_callback(limiter_redis.aclose)
            limiter = RateLimiter(limiter_redis, settings.redis_namespace)
            stack.push_async_callback(limiter.aclose)
            app.state.routes = routes
            app.state.upstreams = upstreams
            app.state.limiter = limiter
            app.state.gatekeeper = Gatekeeper(settings, app.state.verifier, app.state.revocations, limiter)
            app.state.openapi = OpenAPIAggregator(upstreams, settings.openapi_cache_seconds)
            # A gateway with Redis or one upstream down still serves: reported as degraded, still ready.
            checks = app.state.readiness_checks
            if settings.redis_url:
                checks["redis"] = _degraded_when_down(app.state.store.ping, "per-process rate limits in force")
            for upstream in upstreams.values():
                checks[f"upstream:{upstream.name}"] = _degraded_when_down(upstream.ready, "its routes answer 502/503")
            yield

    return create_service_app(
        settings,
        title="PyAirtable API gateway",
        route_handlers=[PlatformDocsController, *(proxy_handler(route) for route in routes.routes)],
        lifespan=[gateway_resources],
        store=store,
        bus=bus,
        database=False,
        cors_config=_cors(settings),
    )


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


def _breaker(settings: GatewaySettings) -> CircuitBreaker:
    return CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds)


def _over_http(prefix: str, url: str, session: Any, settings: GatewaySettings) -> HTTPUpstream:
    return HTTPUpstream(
        name=prefix.rsplit("/", 1)[-1],
        base_url=url,
        session=session,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.request_timeout,
        breaker=_breaker(settings),
        retry_idempotent=settings.retry_idempotent,
    )


async def _in_process(stack: AsyncExitStack, prefix: str, service: Litestar, settings: GatewaySettings) -> Forward:
    await stack.enter_async_context(service.lifespan())

    async def ready() -> None:
        results = [await run_check(check) for check in service.state.readiness_checks.values()]
        failed = [result.error for result in results if result.status == "fail"]
        if failed:
            raise RuntimeError(", ".join(str(error) for error in failed))

    return InProcessUpstream(prefix.rsplit("/", 1)[-1], service, ready, settings.request_timeout, _breaker(settings))


def _degraded_when_down(check_dependency: Any, consequence: str) -> Any:
    async def check() -> None:
        try:
            await check_dependency()
        except Exception as exc:
            raise Degraded(f"{type(exc).__name__}: {consequence}") from exc

    return check
