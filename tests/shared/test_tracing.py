"""When traces are on (shared/tracing.py): only with an OTLP endpoint, never with the SDK disabled."""

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
