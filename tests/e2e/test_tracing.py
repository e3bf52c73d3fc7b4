"""Traces (shared/tracing.py): one trace from a client's request through the gateway into a service
and its database, and on across an event into the service that consumes it.

The gateway (its own HTTP protocol), auth and users are real apps served by uvicorn on loopback in
the test's process, on their PostgreSQL databases, with events over Redis Streams; spans go to an
in-memory exporter (``tracing_installed``), as they would go to an OTLP collector.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from airtable_gateway.config import AirtableSettings
from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from embedded.app import create_app as create_embedded_app
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewaySettings
from gateway.transport.serving import GatewayHttpProtocol
from shared import migrations
from shared.events import Event, encode_event, new_event
from shared.settings import load_settings
from shared.tracing import tracing_installed
from shared.tracing_sdk import Tracing
from tests.auth_service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    FAST_ARGON2,
    JWT_SECRET,
    PASSWORD,
    auth_database,
    auth_settings,
    clean_auth_database,
)
from tests.conftest import (
    LOADED_REDIS_TIMEOUT_SECONDS,
    DatabaseFactory,
    app_client,
    eventually,
    migrated_embedded_environ,
)
from tests.gateway.echo import served_over_http
from tests.user_service.conftest import clean_users_database, user_settings, users_database  # noqa: F401
from user_service.app import create_app as create_user_app
from user_service.config import UserSettings

AUTH = "/api/v1/auth"
USERS = "/api/v1/users"
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the apps the test builds; their finished spans in the exporter."""
    exporter = InMemorySpanExporter()
    with tracing_installed(Tracing(SimpleSpanProcessor(exporter))):
        yield exporter


def of(spans: list[ReadableSpan], service_name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if service(span) == service_name and span.kind == kind]


def service(span: ReadableSpan) -> Any:
    assert span.resource is not None
    return span.resource.attributes.get("service.name")


def statement(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get("db.statement", ""))


def one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, f"{what}: {[(span.name, service(span)) for span in found]}"
    return found[0]


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and parent.context is not None and span.parent.span_id == parent.context.span_id


def trace_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.context and span.context.trace_id == trace_id]


async def test_one_trace_from_the_gateway_into_auth_its_database_and_on_to_users_by_the_event(
    spans: InMemorySpanExporter,
    auth_settings: AuthSettings,  # noqa: F811
    user_settings: UserSettings,  # noqa: F811
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
) -> None:
    gateway_settings = GatewaySettings(
        jwt_secret=JWT_SECRET,
        redis_url=redis_url,
        redis_namespace=redis_namespace,
        data_dir=str(tmp_path),
        redis_timeout_seconds=LOADED_REDIS_TIMEOUT_SECONDS,
        request_timeout=10.0,
    )
    async with (
        served_over_http(create_auth_app(auth_settings), lifespan="on") as auth_url,
        served_over_http(create_user_app(user_settings), lifespan="on") as users_url,
        served_over_http(
            create_gateway_app(gateway_settings, proxied={AUTH: auth_url, USERS: users_url}),
            lifespan="on",
            http=GatewayHttpProtocol,
        ) as gateway_url,
        httpx.AsyncClient(base_url=gateway_url, timeout=30) as client,
    ):
        email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
        response = await client.post(
            f"{AUTH}/register",
            json={"email": email, "password": PASSWORD},
            headers={"traceparent": CLIENT_TRACEPARENT},
        )
        assert response.status_code == 201, response.text
        trace_id = int(CLIENT_TRACE_ID, 16)

        def profile_created() -> list[ReadableSpan]:
            return [
                span
                for span in trace_of(spans, trace_id)
                if service(span) == "users" and "INSERT INTO profiles" in statement(span)
            ]

        await eventually(profile_created, "the users service to create the profile in the same trace")
        # The profile through the gateway: it exists, made by the event the trace followed.
        token = response.json()["access_token"]
        profile = await client.get(
            f"{USERS}/me", params={"note": "typed-by-ada"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert profile.status_code == 200, profile.text
        # What a user typed in a query string is not recorded (the path is).
        recorded = [str(value) for span in spans.get_finished_spans() for value in (span.attributes or {}).values()]
        assert any(f"{USERS}/me" in value for value in recorded)
        assert not any("typed-by-ada" in value for value in recorded)
        # /users/me reads outside the ORM session (DirectStatements): traced too, with no values.
        direct_reads = [
            span
            for span in of(spans.get_finished_spans(), "users", SpanKind.CLIENT)
            if "WHERE profiles.id = %(id)s" in statement(span)
        ]
        assert direct_reads, [statement(span) for span in of(spans.get_finished_spans(), "users", SpanKind.CLIENT)]
        assert not any(response.json()["user"]["id"] in statement(span) for span in direct_reads)

    traced = trace_of(spans, trace_id)
    gateway_server = one(
        [span for span in traced if service(span) == "gateway" and span.kind == SpanKind.SERVER], "gateway request"
    )
    assert gateway_server.name == "POST /api/v1/auth/*"
    assert gateway_server.parent is not None and gateway_server.parent.span_id == int(CLIENT_SPAN_ID, 16)
    gateway_client = one(
        [
            span
            for span in traced
            if service(span) == "gateway" and span.kind == SpanKind.CLIENT and "auth" in span.name
        ],
        "the gateway's call to auth",
    )
    assert child_of(gateway_client, gateway_server)
    assert (gateway_client.attributes or {}).get("http.response.status_code") == 201
    auth_server = one([span for span in traced if service(span) == "auth" and span.kind == SpanKind.SERVER], "auth")
    assert auth_server.name == "POST /api/v1/auth/register"
    assert child_of(auth_server, gateway_client)
    insert_user = one(
        [span for span in traced if service(span) == "auth" and "INSERT INTO users" in statement(span)], "auth's INSERT"
    )
    assert child_of(insert_user, auth_server)
    publish = one([span for span in traced if span.name == "publish user.registered"], "the outbox relay's publish")
    assert service(publish) == "auth" and publish.kind == SpanKind.PRODUCER
    consumed = one([span for span in traced if span.name == "process user.registered"], "users' handler")
    assert service(consumed) == "users" and consumed.kind == SpanKind.CONSUMER
    assert child_of(consumed, auth_server)  # the context the event was made in: the registration
    insert_profile = one(profile_created(), "users' INSERT of the profile")
    assert child_of(insert_profile, consumed)
    # The relays' polls every 0.2 s and the consumers' reads made no trace of their own: every trace
    # starts at a request or an event.
    roots = [span for span in spans.get_finished_spans() if span.parent is None]
    assert roots and {span.kind for span in roots} <= {SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER}


@pytest.fixture
def embedded_databases(databases: DatabaseFactory, tmp_path: Path) -> dict[str, str]:
    environ = migrated_embedded_environ(databases, tmp_path)
    migrations.upgrade(load_settings(AirtableSettings, environ), "airtable_gateway")  # SQLite in DATA_DIR
    return environ


async def test_the_embedded_platform_traces_a_request_into_an_in_process_service_and_its_event(
    spans: InMemorySpanExporter, embedded_databases: dict[str, str], tmp_path: Path
) -> None:
    environ = {
        **embedded_databases,
        "JWT_SECRET": JWT_SECRET,
        "OUTBOX_POLL_SECONDS": "0.2",
        **{name.upper(): str(value) for name, value in FAST_ARGON2.items()},
    }
    settings = GatewaySettings(jwt_secret=JWT_SECRET, redis_url="", data_dir=str(tmp_path))
    async with app_client(create_embedded_app(settings, environ=environ)) as client:
        response = await client.post(f"{AUTH}/register", json={"email": "ada@example.com", "password": PASSWORD})
        assert response.status_code == 201, response.text
        gateway_server = one(
            [
                span
                for span in spans.get_finished_spans()
                if service(span) == "gateway" and span.kind == SpanKind.SERVER
            ],
            "the gateway's request",
        )
        assert gateway_server.context is not None and gateway_server.parent is None
        trace_id = gateway_server.context.trace_id
        await eventually(
            lambda: [span for span in trace_of(spans, trace_id) if span.name == "process user.registered"],
            "users' handler in the registration's trace",
        )
        # The Airtable gateway's call to Airtable (the in-process emulator here): its httpx client's span.
        bases = await client.get(
            "/api/v1/airtable/bases",
            params={"offset": "typed-by-ada"},
            headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        )
        assert bases.status_code == 200, bases.text
    traced = trace_of(spans, trace_id)
    auth_server = one([span for span in traced if service(span) == "auth" and span.kind == SpanKind.SERVER], "auth")
    assert [span for span in traced if child_of(span, auth_server) and "INSERT INTO users" in statement(span)]
    assert [span for span in traced if service(span) == "users" and "INSERT INTO profiles" in statement(span)]
    airtable_server = one(of(list(spans.get_finished_spans()), "airtable", SpanKind.SERVER), "the Airtable gateway")
    to_airtable = one(
        [span for span in of(list(spans.get_finished_spans()), "airtable", SpanKind.CLIENT) if not statement(span)],
        "the call to Airtable",
    )
    assert "airtable-emulator" in str((to_airtable.attributes or {}).get("http.url", ""))
    recorded = [str(value) for span in spans.get_finished_spans() for value in (span.attributes or {}).values()]
    assert not any("typed-by-ada" in value for value in recorded)
    assert to_airtable.context is not None and airtable_server.context is not None
    assert to_airtable.context.trace_id == airtable_server.context.trace_id


def test_with_tracing_off_nothing_is_installed(auth_settings: AuthSettings, tmp_path: Path) -> None:  # noqa: F811
    """No OTLP endpoint (the tests' environment): no provider, no plugin or middleware, the gateway's
    proxy mounts as they are, and events carry no trace context (the same bytes as before)."""
    auth = create_auth_app(auth_settings)
    gateway = create_gateway_app(GatewaySettings(jwt_secret=JWT_SECRET, data_dir=str(tmp_path)), services={AUTH: auth})
    for app in (auth, gateway):
        assert app.state.tracer_provider is None
        assert not [plugin for plugin in app.plugins if "OpenTelemetry" in type(plugin).__name__]
        assert "opentelemetry" not in type(app.asgi_handler).__module__
    direct = getattr(gateway, "direct", None)
    assert direct is not None
    assert all(endpoint.__module__ == "gateway.controllers" for endpoint in direct.endpoints.values())
    event = new_event("user.registered", "auth", {"user_id": "u"})
    assert event.trace is None
    assert b"trace" not in encode_event(event)


def test_events_written_before_traces_still_decode() -> None:
    older = b'{"id":"7f1c2d3e-0000-4000-8000-000000000000","type":"user.registered","source":"auth",'
    older += b'"occurred_at":"2026-01-01T00:00:00Z","data":{"user_id":"u"}}'
    event = msgspec.json.decode(older, type=Event)
    assert event.trace is None and event.data == {"user_id": "u"}
