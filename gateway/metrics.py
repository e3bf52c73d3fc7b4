"""The proxy's per-request metrics, kept without a lock per update, and the upstreams' breakers.

``prometheus_client`` takes a lock for every counter increment and two for every histogram
observation (sum and bucket): six per proxied request here (docs/PERFORMANCE.md has the cost).
Only the event loop's thread
updates these, and the scrape (``/metrics``, an async handler) runs in that thread too, so plain
Python numbers suffice; this collector turns them into the same families, names, labels and
buckets that ``Counter``/``Histogram`` would expose. Series appear once first used, as with
``labels()``.

With several worker processes (``GATEWAY_WORKERS``), prometheus_client's multiprocess mode is on
(``PROMETHEUS_MULTIPROC_DIR``): its own metrics write to per-process files, and ``/metrics``, in
whichever worker answers, sums the files of every worker. Collectors like the ones here keep their
numbers in their process, so ``MultiprocessMirror`` copies them into that process's files once a
second: a scrape sees the whole gateway (the other workers' latest second excepted).
"""

import asyncio
import contextlib
import glob
import logging
import os
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, multiprocess, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

from gateway.transport.breaker import CircuitBreaker

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


logger = logging.getLogger("gateway.metrics")
MIRROR_INTERVAL_SECONDS = 1.0
_LIVE_GAUGE_FILE = "gauge_live*_*.db"  # prometheus_client: gauge_<mode>_<pid>.db


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes this process's metrics to files (PROMETHEUS_MULTIPROC_DIR)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class MultiprocessMirror:
    """Writes the samples of collectors that keep their numbers in memory into this process's
    multiprocess files, as prometheus_client's own values would: counters and histogram buckets
    summed over workers (a dead worker's counts stay in the total), gauges by ``gauge_mode``
    (``livemax``: the worst worker's state; ``livesum``: the workers' total)."""

    def __init__(self, collectors: Sequence[tuple[Collector, str]], value_class: Any = None) -> None:
        self.collectors = collectors
        self.value_class = value_class or values.ValueClass  # prometheus_client's, writing this pid's files
        self._values: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[Any, float]] = {}

    def write(self) -> None:
        for collector, gauge_mode in self.collectors:
            for family in collector.collect():
                if family.type == "histogram":
                    self._write_histogram(family)
                elif family.type in ("counter", "gauge"):
                    for sample in family.samples:
                        if not sample.name.endswith("_created"):
                            self._set(family, gauge_mode, sample.name, sample.labels, sample.value)

    def _write_histogram(self, family: Metric) -> None:
        """The files hold each bucket's own count (the collector adds them up) and the sum."""
        below: dict[tuple[tuple[str, str], ...], float] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                self._set(family, "", sample.name, sample.labels, sample.value - below.get(series, 0.0))
                below[series] = sample.value
            elif sample.name.endswith("_sum"):
                self._set(family, "", sample.name, sample.labels, sample.value)

    def _set(self, family: Metric, gauge_mode: str, name: str, labels: dict[str, str], value: float) -> None:
        key = (family.name, name, tuple(labels.items()))
        known = self._values.get(key)
        if known is None:
            kind = "gauge" if family.type == "gauge" else family.type
            file_value = self.value_class(
                kind,
                family.name,
                name,
                list(labels),
                list(labels.values()),
                family.documentation,
                multiprocess_mode=gauge_mode,
            )
            # A worker that reuses a dead one's pid finds its counts in the file: it goes on from them.
            known = self._values[key] = (file_value, 0.0 if kind == "gauge" else file_value.get())
        file_value, base = known
        file_value.set(base + value)


def forget_dead_workers(directory: str) -> None:
    """Remove the live gauges (in flight, degraded) of workers that are gone without saying so
    (killed, replaced by the supervisor): their last values would count for ever otherwise."""
    for path in glob.glob(os.path.join(directory, _LIVE_GAUGE_FILE)):
        pid = int(os.path.basename(path).rsplit("_", 1)[1].removesuffix(".db"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            # Every worker sweeps: another may have removed the files between the glob and here.
            with contextlib.suppress(FileNotFoundError):
                multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, someone else's
            pass


@contextlib.asynccontextmanager
async def shared_with_other_workers(collectors: Sequence[tuple[Collector, str]]) -> AsyncIterator[None]:
    """In multiprocess mode, mirror ``collectors`` every second while the app runs and once at the
    end; on the way out this worker's live gauges go (prometheus_client's ``mark_process_dead``)."""
    if not multiprocess_mode():
        yield
        return
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    mirror = MultiprocessMirror(collectors)

    async def keep_mirroring() -> None:
        while True:
            try:
                mirror.write()
                forget_dead_workers(directory)
            except Exception:  # a full disk, say: the next second tries again, the gateway serves on
                logger.exception("metrics not mirrored for the other workers")
            await asyncio.sleep(MIRROR_INTERVAL_SECONDS)

    task = asyncio.create_task(keep_mirroring())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        mirror.write()
        with contextlib.suppress(FileNotFoundError):  # a worker's sweep may have seen this one go first
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
