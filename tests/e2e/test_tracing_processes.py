"""Traces from real processes: the gateway and auth started as deployed, with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a collector the test runs (OTLP over HTTP, protobuf).
The spans both export belong to the one trace the client started."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.e2e.processes import Stack, wait_for

PASSWORD = "a long enough passphrase"
CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on loopback: every span it was sent, as (service, trace id, name, kind)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.spans: list[tuple[str, str, str, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Receive(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                attributes = {item.key: item.value.string_value for item in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        entry = (attributes.get("service.name", ""), span.trace_id.hex(), span.name, span.kind)
                        self.server.spans.append(entry)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_gateway_and_auth_processes_export_one_trace_over_otlp(stack: Stack, collector: Collector) -> None:
    # Spans leave every 100 ms instead of 5 s (the batch processor's standard variable).
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    auth = stack.auth(**tracing)
    gateway = stack.gateway("gateway", AUTH_SERVICE_URL=auth.url, **tracing)
    for service in (auth, gateway):
        service.wait_healthy(60)

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        registered = client.post(
            "/api/v1/auth/register",
            json={"email": "ada@example.com", "password": PASSWORD},
            headers={"traceparent": f"00-{CLIENT_TRACE_ID}-00f067aa0ba902b7-01"},
        )
        assert registered.status_code == 201, registered.text

    def exported() -> set[tuple[str, str]]:
        found = {(service, name) for service, trace_id, name, _ in collector.spans if trace_id == CLIENT_TRACE_ID}
        wanted = {("gateway", "POST /api/v1/auth/*"), ("auth", "POST /api/v1/auth/register")}
        return found if wanted <= found else set()

    found = wait_for(exported, "the gateway's and auth's spans at the collector", timeout=30)
    assert ("gateway", "POST auth") in found  # the gateway's call to auth, between the two
    assert any(service == "auth" and name.startswith("INSERT") for service, name in found)
    # The health probes the waits made are no trace.
    assert not [name for _, _, name, _ in collector.spans if "/health" in name or "/ready" in name]
