"""What tracing needs of the OpenTelemetry SDK, imported only once tracing is on (shared/tracing.py):
a process that traces nothing does without the SDK's 1.8 MB of memory."""

import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from shared.tracing import TRACER_NAME

ENTRY_POINT_KINDS = frozenset({SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.PRODUCER})


class EntryPointsOnly(Sampler):
    """A root span only for a request or an event; everything else as ``delegate`` (by default the
    SDK's, from ``OTEL_TRACES_SAMPLER``) decides."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        has_parent = trace.get_current_span(parent_context).get_span_context().is_valid
        if not has_parent and kind not in ENTRY_POINT_KINDS:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"EntryPointsOnly{{{self.delegate.get_description()}}}"


class Tracing:
    """This process's tracing: one span processor (the exporter behind it) and a provider per service."""

    def __init__(self, processor: SpanProcessor, sampler: Sampler | None = None) -> None:
        self.processor = processor
        self.sampler = EntryPointsOnly(sampler or _get_from_env_or_default())
        self._providers: dict[str, TracerProvider] = {}

    def provider(self, service_name: str) -> TracerProvider:
        provider = self._providers.get(service_name)
        if provider is None:
            # OTEL_SERVICE_NAME, when set, names every service of the process (the SDK's rule).
            named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
            provider = TracerProvider(sampler=self.sampler, resource=Resource.create(named), shutdown_on_exit=False)
            provider.add_span_processor(self.processor)
            self._providers[service_name] = provider
        return provider

    def tracer(self, service_name: str) -> trace.Tracer:
        return self.provider(service_name).get_tracer(TRACER_NAME)

    def shutdown(self) -> None:
        """Export what is still buffered (at exit)."""
        self.processor.shutdown()
