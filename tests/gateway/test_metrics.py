"""The proxy's lock-free metrics (gateway/metrics.py) expose exactly what prometheus_client's own
Counter and Histogram would for the same observations, and /metrics shows them per route template."""

import re

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import ProxyMetrics
from tests.gateway.conftest import USERS, access_token, bearer

OBSERVATIONS = [0.0, 0.001, 0.005, 0.0050001, 0.03, 0.3, 0.75, 2.0, 9.99, 10.0, 12.5, 600.0]


def exposition(registry: CollectorRegistry) -> set[str]:
    """The sample lines, without the ``_created`` timestamps that only prometheus_client adds."""
    lines = generate_latest(registry).decode().splitlines()
    return {line for line in lines if line and not line.startswith("#") and "_created" not in line}


def test_the_same_samples_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = ProxyMetrics()
    ours.register(metrics)
    requests = Counter(
        "pyairtable_gateway_requests", "Proxied requests", ["route", "method", "status"], registry=theirs
    )
    latency = Histogram(
        "pyairtable_gateway_request_duration_seconds", "Time in the gateway", ["route"], registry=theirs
    )
    upstream = Histogram(
        "pyairtable_gateway_upstream_duration_seconds", "Time waiting on the upstream", ["route"], registry=theirs
    )
    for index, seconds in enumerate(OBSERVATIONS):
        route, status = ("/api/v1/users/*", 200) if index % 3 else ("/api/v1/auth/*", 401)
        metrics.finished(route, "GET", status, seconds)
        requests.labels(route, "GET", str(status)).inc()
        latency.labels(route).observe(seconds)
        if status == 200:
            metrics.upstream_answered(route, seconds / 2)
            upstream.labels(route).observe(seconds / 2)
    assert exposition(ours) == exposition(theirs)


async def test_metrics_endpoint_shows_the_proxied_requests(client: httpx.AsyncClient) -> None:
    def count(text: str) -> float:
        pattern = rf'^pyairtable_gateway_requests_total\{{method="GET",route="{USERS}/\*",status="200"\}} (\S+)$'
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    before = count((await client.get("/metrics")).text)
    for _ in range(3):
        assert (await client.get(f"{USERS}/me", headers=bearer(access_token()))).status_code == 200
    text = (await client.get("/metrics")).text
    assert count(text) == before + 3
    assert f'pyairtable_gateway_request_duration_seconds_bucket{{le="+Inf",route="{USERS}/*"}}' in text
    assert f'pyairtable_gateway_upstream_duration_seconds_count{{route="{USERS}/*"}}' in text
