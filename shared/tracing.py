"""Traces: OpenTelemetry through the well-kept instrumentations, off unless an OTLP endpoint is set.

``configure_tracing(service_name)`` is what the kernel (``shared.service``) asks when it builds an
app: None (tracing off: nothing is installed, no middleware, no instrumentation, no cost) unless
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and
``OTEL_SDK_DISABLED`` is not ``true``; then the service's ``TracerProvider``. The SDK reads every
other standard variable itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``OTEL_PROPAGATORS``...).

One process holds one :class:`Tracing` (the exporter and its batch processor) and one provider per
service name sharing it, so in the embedded mode each service's spans still carry their own
``service.name``. Providers are handed to the instrumentations explicitly (Litestar's
OpenTelemetry plugin, SQLAlchemy's engine tracer, redis' client instrumentation): nothing patches a
library globally and OpenTelemetry's global provider is left alone.

Spans without a parent are kept only for requests and events (SERVER, CONSUMER, PRODUCER): a
database or Redis call outside of both (the outbox relay's poll, a pruner) would be a new trace of
one span every second.

Across events the context travels in the event (``Event.trace``, the W3C ``traceparent`` and
``tracestate``): :func:`event_trace_context` takes the current one when an event is made,
:func:`publishing` wraps the outbox relay's publish in a PRODUCER span, :func:`consuming` wraps a
consumer's handler in a CONSUMER span, both children of the context the event carries.
"""

import atexit
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from shared.events import Event
    from shared.tracing_sdk import Tracing

TRACER_NAME = "pyairtable"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# The probes every few seconds, the scrapes and the docs are no one's request worth a trace.
UNTRACED_PATHS = ["^/health$", "^/ready$", "^/metrics", "^/schema", "^/api/docs"]
# Litestar's app init imports its OpenTelemetry plugin whenever the ASGI instrumentation is
# installed, only to look for that plugin's middleware (``Litestar._patch_opentelemetry_middleware``):
# about 50 modules (the instrumentation, wrapt, asgiref) and 1.5 MB of a service's memory. While no
# app of the process is traced the plugin is marked absent; Litestar catches the ImportError.
LITESTAR_PLUGIN_MODULE = "litestar.plugins.opentelemetry"


_process_tracing: "Tracing | None" = None


def tracing_enabled(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> "TracerProvider | None":
    """The service's tracer provider, or None when tracing is off (nothing to install)."""
    global _process_tracing
    if _process_tracing is None:
        if not tracing_enabled(os.environ if environ is None else environ):
            sys.modules.setdefault(LITESTAR_PLUGIN_MODULE, None)  # type: ignore[arg-type]
            return None
        _process_tracing = _otlp_tracing()
        atexit.register(_process_tracing.shutdown)
    return _process_tracing.provider(service_name)


def _otlp_tracing() -> "Tracing":
    # Imported only when tracing is on: the exporter pulls in protobuf, the SDK 1.8 MB of memory.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from shared.tracing_sdk import Tracing

    return Tracing(BatchSpanProcessor(OTLPSpanExporter()))


@contextlib.contextmanager
def tracing_installed(tracing: "Tracing") -> "Iterator[Tracing]":
    """``tracing`` as this process's for the block, whatever the environment says: apps built in
    it are traced through ``tracing`` (tests and benchmarks, with an in-memory or no-op exporter)."""
    global _process_tracing
    previous, _process_tracing = _process_tracing, tracing
    try:
        yield tracing
    finally:
        _process_tracing = previous


# -- what the kernel installs when tracing is on ---------------------------------------------------


def litestar_plugin(provider: "TracerProvider") -> Any:
    """Litestar's own OpenTelemetry plugin (the ASGI instrumentation): a SERVER span per request,
    continuing a caller's ``traceparent``, outermost of the app's middleware."""
    if sys.modules.get(LITESTAR_PLUGIN_MODULE, LITESTAR_PLUGIN_MODULE) is None:
        del sys.modules[LITESTAR_PLUGIN_MODULE]  # an untraced app of this process marked it absent
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    config = OpenTelemetryConfig(
        tracer_provider=provider,
        scope_span_details_extractor=_method_only,
        server_request_hook_handler=_without_query,
        exclude=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],  # one span per ASGI message: noise
    )
    return OpenTelemetryPlugin(config)


def traced_asgi(app: Any, provider: "TracerProvider", span_name: str) -> Any:
    """``app`` inside a SERVER span named ``span_name`` (the gateway's proxy mounts, which are
    called past Litestar's middleware)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        app,
        default_span_details=lambda scope: (f"{scope.get('method', '')} {span_name}", {"http.route": span_name}),
        server_request_hook=_without_query,
        tracer_provider=provider,
        exclude_spans=["receive", "send"],
    )


def _method_only(scope: Any) -> tuple[str, dict[str, str]]:
    """The span's first name: the method alone (a raw path holds ids); ``name_server_span`` adds
    the route template once routing has found it."""
    return str(scope.get("method", "")), {}


def _without_query(span: trace.Span, scope: Mapping[str, Any]) -> None:
    """A query string may carry what a user typed (an Airtable formula, an address): recorded
    URLs keep the path only."""
    if not scope.get("query_string") or not span.is_recording():
        return
    path = scope.get("path", "")
    span.set_attribute("http.target", path)
    span.set_attribute("url.query", "")
    attributes = getattr(span, "attributes", None) or {}
    url = attributes.get("http.url")
    if isinstance(url, str):
        span.set_attribute("http.url", url.split("?", 1)[0])


async def name_server_span(message: Any, scope: Any) -> None:
    """``before_send`` hook: the request's span named after its route template
    (``GET /users/{user_id:uuid}``), low in cardinality as OpenTelemetry asks."""
    if message["type"] != "http.response.start":
        return
    template = scope.get("path_template")
    span = trace.get_current_span()
    if template and span.is_recording():
        span.update_name(f"{scope.get('method', '')} {template}")
        span.set_attribute("http.route", template)


def instrument_engine(engine: Any, provider: "TracerProvider") -> None:
    """A span per statement of ``engine`` (an AsyncEngine), with the service's provider. The
    engine's own tracer, not ``SQLAlchemyInstrumentor().instrument()``, which patches SQLAlchemy's
    engine factories process-wide."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpMeterProvider

    usage = NoOpMeterProvider().get_meter(TRACER_NAME).create_up_down_counter("db.client.connections.usage")
    EngineTracer(statement_tracer(provider), engine.sync_engine, usage)  # type: ignore[no-untyped-call]  # the package has no hints


def statement_tracer(provider: "TracerProvider") -> trace.Tracer:
    """The tracer of the statements a service runs outside SQLAlchemy's engine (DirectStatements):
    the engine instrumentation's name, so their spans read as its."""
    from opentelemetry.instrumentation.sqlalchemy.version import __version__

    return provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__)


def instrument_redis(client: Any, provider: "TracerProvider") -> None:
    """A span per Redis command of ``client`` (arguments recorded as ``?``)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=provider)


def instrument_httpx(client: Any, provider: "TracerProvider") -> None:
    """A CLIENT span per request of an ``httpx.AsyncClient``, ``traceparent`` injected."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider, request_hook=_request_without_query)


async def _request_without_query(span: trace.Span, request: Any) -> None:
    """As for requests served: a client span's URL without its query (an Airtable formula)."""
    url = str(request.url)
    if "?" not in url or not span.is_recording():
        return
    recorded = getattr(span, "attributes", None) or {}
    for name in ("http.url", "url.full"):
        if name in recorded:
            span.set_attribute(name, url.split("?", 1)[0])


def inject_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with the propagator's fields (``traceparent``, ``tracestate``, ``baggage``)
    replaced by the current context's."""
    propagator = propagate.get_global_textmap()
    fields = {name.lower().encode() for name in propagator.fields}
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    kept = [(name, value) for name, value in headers if name.lower() not in fields]
    return kept + [(name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()]


# -- events ----------------------------------------------------------------------------------------

# The key of an outbox row's payload that holds its event's trace context (no column, no migration:
# rows written before it, or with tracing off, have none).
OUTBOX_TRACE_KEY = "_trace"


def outbox_payload(event: "Event") -> dict[str, Any]:
    """What the outbox stores of ``event``: its data, and its trace context when it has one."""
    return event.data if event.trace is None else {**event.data, OUTBOX_TRACE_KEY: event.trace}


def split_outbox_payload(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str] | None]:
    """An outbox row's payload as the event's data and trace context."""
    if OUTBOX_TRACE_KEY not in payload:
        return payload, None
    data = dict(payload)
    return data, data.pop(OUTBOX_TRACE_KEY)


def event_trace_context() -> dict[str, str] | None:
    """The current trace context to record in a new event; None when tracing is off or nothing is traced."""
    if _process_tracing is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def _event_attributes(event: "Event") -> dict[str, str]:
    return {
        "messaging.system": "redis",
        "messaging.destination.name": event.type,
        "messaging.message.id": event.id,
    }


@contextlib.contextmanager
def publishing(event: "Event") -> Iterator[None]:
    """The outbox relay's publish of ``event`` as a PRODUCER span of its source, a child of the
    context the event was made in."""
    if _process_tracing is None:
        yield
        return
    tracer = _process_tracing.tracer(event.source)
    context = propagate.extract(event.trace or {})
    with tracer.start_as_current_span(
        f"publish {event.type}", context=context, kind=SpanKind.PRODUCER, attributes=_event_attributes(event)
    ):
        yield


def consuming(group: str, handler: Callable[["Event"], Awaitable[None]]) -> Callable[["Event"], Awaitable[None]]:
    """``handler`` in a CONSUMER span of the consumer group (named as its service), a child of the
    context the event carries: one trace from the request that made the event to its effect.
    ``handler`` itself when tracing is off."""
    if _process_tracing is None:
        return handler
    tracer = _process_tracing.tracer(group)

    async def handle(event: "Event") -> None:
        attributes = {**_event_attributes(event), "messaging.consumer.group.name": group}
        with tracer.start_as_current_span(
            f"process {event.type}",
            context=propagate.extract(event.trace or {}),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ):
            await handler(event)

    return handle
