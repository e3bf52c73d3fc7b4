"""The proxy's per-request metrics, kept without a lock per update, and the upstreams' breakers.

``prometheus_client`` takes a lock for every counter increment and two for every histogram
observation (sum and bucket): six per proxied request here, ≈ 6 µs. Only the event loop's thread
updates these, and the scrape (``/metrics``, an async handler) runs in that thread too, so plain
Python numbers suffice; this collector turns them into the same families, names, labels and
buckets that ``Counter``/``Histogram`` would expose. Series appear once first used, as with
``labels()``.
"""

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

from gateway.breaker import CircuitBreaker

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, INF)  # the defaults
_BUCKET_LABELS = [floatToGoString(bound) for bound in BUCKETS]  # type: ignore[no-untyped-call]


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        self.counts[bisect_left(BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds

    def cumulative(self) -> list[tuple[str, float]]:
        total, buckets = 0, []
        for label, count in zip(_BUCKET_LABELS, self.counts, strict=True):
            total += count
            buckets.append((label, float(total)))
        return buckets


class ProxyMetrics(Collector):
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.upstream_latency: dict[str, Histogram] = {}

    def finished(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram()
        histogram.observe(seconds)

    def upstream_answered(self, route: str, seconds: float) -> None:
        histogram = self.upstream_latency.get(route)
        if histogram is None:
            histogram = self.upstream_latency[route] = Histogram()
        histogram.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "pyairtable_gateway_requests", "Proxied requests", labels=["route", "method", "status"]
        )
        for labels, count in list(self.requests.items()):
            requests.add_metric(list(labels), count)
        yield requests
        for name, documentation, histograms in (
            ("pyairtable_gateway_request_duration_seconds", "Time in the gateway, upstream included", self.latency),
            ("pyairtable_gateway_upstream_duration_seconds", "Time waiting on the upstream", self.upstream_latency),
        ):
            family = HistogramMetricFamily(name, documentation, labels=["route"])
            for route, histogram in list(histograms.items()):
                family.add_metric([route], histogram.cumulative(), sum_value=histogram.sum)
            yield family


PROXY_METRICS = ProxyMetrics()
REGISTRY.register(PROXY_METRICS)


class BreakerMetrics(Collector):
    """Each upstream's circuit breaker, read at scrape time: its state and how often it opened."""

    STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

    def __init__(self) -> None:
        self.breakers: dict[str, CircuitBreaker] = {}

    def track(self, upstream: str, breaker: CircuitBreaker) -> None:
        self.breakers[upstream] = breaker

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "pyairtable_gateway_upstream_breaker_state",
            "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open",
            labels=["upstream"],
        )
        opened = CounterMetricFamily(
            "pyairtable_gateway_upstream_breaker_opened",
            "Times the upstream's breaker opened after consecutive transport failures",
            labels=["upstream"],
        )
        for upstream, breaker in list(self.breakers.items()):
            state.add_metric([upstream], self.STATE_VALUES[breaker.state])
            opened.add_metric([upstream], breaker.times_opened)
        yield state
        yield opened


BREAKER_METRICS = BreakerMetrics()
REGISTRY.register(BREAKER_METRICS)
