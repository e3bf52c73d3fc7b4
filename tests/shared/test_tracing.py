"""When traces are on (shared/tracing.py): only with an OTLP endpoint, never with the SDK disabled."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import tracing


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": "platform", "OTEL_TRACES_SAMPLER": "always_on"}, False),
    ],
)
def test_traces_are_on_only_with_an_otlp_endpoint(environ: dict[str, str], on: bool) -> None:
    assert tracing.tracing_enabled(environ) is on


def test_without_an_endpoint_no_provider_is_made() -> None:
    assert tracing.configure_tracing("auth", {}) is None
    assert tracing.event_trace_context() is None


def test_with_an_endpoint_each_service_gets_its_own_name_over_one_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_process_tracing", None)  # restored after the test
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    auth, users = tracing.configure_tracing("auth", environ), tracing.configure_tracing("users", environ)
    assert auth is not None and users is not None and auth is not users
    assert auth.resource.attributes["service.name"] == "auth"
    assert users.resource.attributes["service.name"] == "users"
    assert tracing.configure_tracing("auth", environ) is auth
    assert "EntryPointsOnly" in auth.sampler.get_description()


UNTRACED_APPS = """
import sys
from airtable_gateway.app import create_app as create_airtable_gateway
from airtable_gateway.config import AirtableSettings
from shared.settings import load_settings
from user_service.app import create_app as create_user_service
from user_service.config import UserSettings
create_user_service(load_settings(UserSettings))
create_airtable_gateway(load_settings(AirtableSettings))
prefixes = ("opentelemetry.sdk", "opentelemetry.instrumentation", "litestar.plugins.opentelemetry")
prefixes += ("wrapt", "httpx._main")
print(sorted(name for name, module in sys.modules.items() if module is not None and name.startswith(prefixes)))
"""


def test_services_without_tracing_load_no_sdk_no_instrumentation_no_unused_extras(tmp_path: Path) -> None:
    """Tracing off costs no memory: service apps built in a fresh process load none of
    OpenTelemetry's SDK (redis-py would load its metrics part), nor the ASGI instrumentation
    Litestar would import to look for its plugin, nor httpx's command-line client (4 MB in all)."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    environ |= {
        "ENVIRONMENT": "development",
        "JWT_SECRET": "x" * 40,
        "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'users.db'}",
        "AIRTABLE_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'airtable.db'}",
    }
    loaded = subprocess.run(
        [sys.executable, "-c", UNTRACED_APPS], env=environ, capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"
