"""Service defaults: the one call every service's ``create_app`` makes.

It installs health and readiness, Prometheus metrics, request IDs, JSON problem errors, strict
JSON request bodies, JWT authentication, OpenAPI at ``/schema``, the database session per request,
the key-value store and the event bus, all owned by the app's lifespan and kept on ``app.state``.
"""

import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.routes import HTTPRoute
from litestar.types import ControllerRouterHandler, Message, Scope
from redis.exceptions import RedisError
from sqlalchemy import Table

from shared.db import (
    DB_EXCEPTION_HANDLERS,
    DirectStatements,
    create_engine,
    create_sessionmaker,
    ping,
    provide_db_session,
)
from shared.docs import docs_assets_router, swagger_render_plugin
from shared.errors import EXCEPTION_HANDLERS, PROBLEM_MEDIA_TYPE, Problem
from shared.events import EventBus, EventConsumer, InMemoryBus, RedisStreamBus, processed_events_pruner
from shared.http import (
    Degraded,
    HealthController,
    RequestIdMiddleware,
    StrictBodyRequest,
    add_standard_headers,
    refuse_unstorable_parameters,
)
from shared.outbox import OutboxRelay
from shared.security import JWTAuthenticationMiddleware, RevocationList, TokenVerifier
from shared.settings import ServiceSettings
from shared.stores import KeyValueStore, create_redis, create_store, dependency_unavailable_handler
from shared.tracing import (
    configure_tracing,
    instrument_engine,
    instrument_redis,
    litestar_plugin,
    name_server_span,
    statement_tracer,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

VERSION = "0.1.0"
PUBLIC_PATHS = ["^/health$", "^/ready$", "^/metrics", "^/schema"]
Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]
EVENTS_SOCKET_TIMEOUT = 5.0


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    route_handlers: Sequence[ControllerRouterHandler],
    dependencies: Mapping[str, Provide] | None = None,
    lifespan: Sequence[Lifespan] = (),
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
    consumer: EventConsumer | None = None,
    outbox: Table | None = None,
    state: Mapping[str, Any] | None = None,
    database: bool = True,
    cors_config: CORSConfig | None = None,
    exception_handlers: Mapping[type[Exception], Any] | None = None,
    before_send: Sequence[Callable[[Message, Scope], Awaitable[None]]] = (),
    app_class: type[Litestar] = Litestar,
) -> Litestar:
    """A Litestar app with the platform's defaults; ``store``/``bus`` may be shared (embedded mode).

    A service that consumes events names them in ``consumer``: its ``processed_events`` table is
    then pruned while it runs. A service that publishes events names its ``outbox`` table: its
    relay then publishes them while it runs (``app.state.outbox_relay``)."""
    prometheus = PrometheusConfig(
        app_name=settings.service_name,
        prefix="pyairtable",
        group_path=True,
        exclude=["^/metrics"],
        exclude_opt_key="exclude_from_metrics",
    )
    handlers: dict[Any, Any] = {
        **EXCEPTION_HANDLERS,
        **DB_EXCEPTION_HANDLERS,
        RedisError: dependency_unavailable_handler,
        **(exception_handlers or {}),
    }
    allow_by_handler: dict[int, bytes] = {}  # filled once the app's routes are built
    # Off (None) unless an OTLP endpoint is configured: then, and only then, the plugin and hooks.
    tracer_provider = configure_tracing(settings.service_name)
    tracing_hooks = [name_server_span] if tracer_provider is not None else []
    app = app_class(
        route_handlers=[HealthController, MetricsController, docs_assets_router(), *route_handlers],
        dependencies={"db_session": Provide(provide_db_session), **(dependencies or {})},
        middleware=[
            RequestIdMiddleware,
            prometheus.middleware,
            DefineMiddleware(JWTAuthenticationMiddleware, exclude=PUBLIC_PATHS),
        ],
        exception_handlers=handlers,
        before_send=[add_standard_headers, _allow_every_method(allow_by_handler), *tracing_hooks, *before_send],
        before_request=refuse_unstorable_parameters,
        lifespan=[
            _resources(settings, store, bus, database, tracer_provider),
            *([_outbox_relay(settings, outbox)] if outbox is not None else []),
            *lifespan,
            _event_consumers(settings, consumer),
        ],
        plugins=[litestar_plugin(tracer_provider)] if tracer_provider is not None else [],
        cors_config=cors_config,
        openapi_config=OpenAPIConfig(
            title=title,
            version=VERSION,
            path="/schema",
            render_plugins=[swagger_render_plugin()],
            components=Components(
                security_schemes={"BearerAuth": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
        ),
        request_class=StrictBodyRequest,
        request_max_body_size=settings.max_body_size,
        logging_config=None,
        state=State(
            {
                "settings": settings,
                "service_name": settings.service_name,
                "version": VERSION,
                "tracer_provider": tracer_provider,
                **(state or {}),
            }
        ),
    )
    _document_problems(app)
    allow_by_handler.update(_allow_by_options_handler(app))
    return app


def _allow_by_options_handler(app: Litestar) -> dict[int, bytes]:
    """Each route's OPTIONS handler (by ``id``) → every method the route serves, as ``Allow``."""
    return {
        id(handler): ", ".join(sorted(route.methods)).encode()
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if "OPTIONS" in handler.http_methods
    }


def _allow_every_method(allow_by_handler: dict[int, bytes]) -> Callable[[Message, Scope], Awaitable[None]]:
    """Litestar 2's automatic OPTIONS answer lists only the methods of the first handler registered on
    a path (GET on ``/users/me``, not PUT or PATCH: litestar#4169, fixed in 3.0); its ``Allow`` is
    replaced by every method the route serves."""

    async def allow_every_method(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        allow = allow_by_handler.get(id(scope.get("route_handler")))
        if allow is not None:
            headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"allow"]
            message["headers"] = [*headers, (b"allow", allow)]

    return allow_every_method


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem, description=description, media_type=PROBLEM_MEDIA_TYPE, generate_examples=False
    )


def _requires_token(path: str, handler: HTTPRouteHandler) -> bool:
    """Whether JWTAuthenticationMiddleware guards the route (see PUBLIC_PATHS)."""
    return not handler.opt.get("exclude_from_auth") and not any(re.match(public, path) for public in PUBLIC_PATHS)


def _document_problems(app: Litestar) -> None:
    """Add to each operation's OpenAPI responses the problems the kernel answers for it and those
    its handler declares in ``raises``, so a client (and the contract fuzz tests) knows every status
    it can get, each a problem+json body."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or not handler.include_in_schema:
                continue
            problems = {
                400: _problem("The request is malformed"),
                422: _problem("A parameter or the body fails validation"),
            }
            if _requires_token(route.path, handler):
                problems[401] = _problem("No valid bearer token")
                problems[403] = _problem("The token's user may not do this")
            if route.path_parameters:
                problems[404] = _problem("No such resource")
            if handler.parsed_fn_signature.parameters.get("data") is not None:
                problems[413] = _problem("The body is larger than the service accepts")
                problems[415] = _problem("The body is not JSON")
            for error in handler.raises or []:  # the handler's own, e.g. raises=[InvalidCredentials]
                problems[error.status_code] = _problem(HTTPStatus(error.status_code).phrase)
            problems[503] = _problem("A dependency (database, Redis) is unavailable; retry later")
            handler.responses = {**problems, **(handler.responses or {})}


def _resources(
    settings: ServiceSettings,
    store: KeyValueStore | None,
    bus: EventBus | None,
    database: bool,
    tracer_provider: "TracerProvider | None",
) -> Lifespan:
    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(settings) if database else None
        redis = create_redis(settings) if settings.redis_url and (store is None or bus is None) else None
        app.state.redis = redis
        app.state.store = store or create_store(settings, redis)
        # Consumers block on XREADGROUP for up to a second: a client of their own, with a socket
        # timeout longer than that (the store's stays short).
        events_redis = create_redis(settings, timeout=EVENTS_SOCKET_TIMEOUT) if bus is None and redis else None
        app.state.bus = bus or _create_bus(settings, events_redis)
        app.state.revocations = RevocationList(app.state.store)
        app.state.verifier = TokenVerifier(settings, app.state.revocations)
        app.state.readiness_checks = {}
        if tracer_provider is not None:
            # The store's client only: the events client's blocking reads every second are no one's request.
            if engine is not None:
                instrument_engine(engine, tracer_provider)
            if redis is not None:
                instrument_redis(redis, tracer_provider)
        if engine is not None:
            app.state.engine = engine
            app.state.sessionmaker = create_sessionmaker(engine)
            app.state.direct = DirectStatements(engine, statement_tracer(tracer_provider) if tracer_provider else None)
            app.state.readiness_checks["database"] = lambda: ping(engine)
        if settings.redis_url:
            app.state.readiness_checks["redis"] = _redis_readiness(app.state.store, app.state.revocations)
        try:
            yield
        finally:
            if bus is None:
                await app.state.bus.close()
            if events_redis is not None:
                await events_redis.aclose()
            if redis is not None:
                await redis.aclose()
            if engine is not None:
                await engine.dispose()

    return resources


def _redis_readiness(store: KeyValueStore, revocations: RevocationList) -> Callable[[], Awaitable[None]]:
    """Redis down or hung leaves the service ready (``degraded``: per-process throttles, revocations
    unknowable). The check also writes revocations that waited for Redis: readiness probes come
    every few seconds, so they do not wait for the next authenticated request."""

    async def check() -> None:
        try:
            await store.shared.ping()
            await revocations.write_pending()
        except (RedisError, OSError) as exc:
            raise Degraded("per-process throttles in force; token revocation unknowable") from exc

    return check


def _create_bus(settings: ServiceSettings, redis: Any) -> EventBus:
    if redis is None:
        return InMemoryBus()
    consumer = f"{settings.service_name}-{socket.gethostname()}-{os.getpid()}"
    return RedisStreamBus(
        redis,
        settings.redis_namespace,
        consumer=consumer,
        reclaim_after_seconds=settings.event_reclaim_seconds,
        max_attempts=settings.event_max_attempts,
    )


def _outbox_relay(settings: ServiceSettings, outbox: Table) -> Lifespan:
    @asynccontextmanager
    async def outbox_relay(app: Litestar) -> AsyncIterator[None]:
        """Started before the service's own lifespans and stopped after them: whatever they commit
        is published."""
        relay = OutboxRelay(app.state.sessionmaker, outbox, app.state.bus, settings.outbox_poll_seconds)
        app.state.outbox_relay = relay
        relay.start()
        try:
            yield
        finally:
            await relay.stop()

    return outbox_relay


def _event_consumers(settings: ServiceSettings, consumer: EventConsumer | None) -> Lifespan:
    @asynccontextmanager
    async def event_consumers(app: Litestar) -> AsyncIterator[None]:
        """Start consuming after every lifespan has registered its subscriptions."""
        await app.state.bus.start()
        pruner = None
        if consumer is not None:
            pruner = processed_events_pruner(
                app.state.sessionmaker,
                consumer.processed_events,
                timedelta(days=settings.event_dedup_retention_days),
                settings.event_dedup_prune_seconds,
            )
            pruner.start()
        try:
            yield
        finally:
            if pruner is not None:
                await pruner.stop()

    return event_consumers
