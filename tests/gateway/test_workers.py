"""GATEWAY_WORKERS: what the settings accept, and the metrics of several workers adding up to what
one process serving every request would show (the processes themselves:
tests/e2e/test_gateway_workers_processes.py)."""

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.config import GatewaySettings, available_cpus
from gateway.metrics import BreakerMetrics, MultiprocessMirror, ProxyMetrics, forget_dead_workers
from gateway.transport.breaker import CircuitBreaker
from gateway.workers import metrics_directory
from shared.settings import SettingsError, load_settings

REDIS = {"REDIS_URL": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize("workers", ["0", "-1", "two", "1.5", ""])
def test_a_worker_count_that_is_not_a_whole_number_of_at_least_one_or_auto_is_refused(workers: str) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_WORKERS: .* not a whole number of at least 1 or 'auto'"):
        load_settings(GatewaySettings, {"GATEWAY_WORKERS": workers, **REDIS})


def test_several_workers_without_redis_are_refused_because_they_would_not_share_limits() -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_WORKERS: 2 workers need REDIS_URL"):
        load_settings(GatewaySettings, {"GATEWAY_WORKERS": "2"})
    assert load_settings(GatewaySettings, {"GATEWAY_WORKERS": "1"}).worker_count == 1  # one needs nothing
    assert load_settings(GatewaySettings, {"GATEWAY_WORKERS": "2", **REDIS}).worker_count == 2


def test_auto_is_the_number_of_cpus_the_gateway_may_use() -> None:
    settings = load_settings(GatewaySettings, {"GATEWAY_WORKERS": "auto", **REDIS})
    assert settings.worker_count == available_cpus()
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert load_settings(GatewaySettings, {}).worker_count == 1  # the default


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_auto_follows_a_containers_cpu_quota_rounded_up(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(quota) == min(affinity, expected or affinity)


def samples(registry: CollectorRegistry) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    return {
        (sample.name, frozenset(sample.labels.items()), sample.value)
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def observe(metrics: ProxyMetrics, requests: list[tuple[str, int, float]]) -> None:
    for route, status, seconds in requests:
        metrics.finished(route, "GET", status, seconds)
        metrics.upstream_answered(route, seconds / 2)


def test_two_workers_mirrored_metrics_add_up_to_one_process_serving_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    first_requests = [("/api/v1/users/*", 200, 0.003), ("/api/v1/users/*", 200, 0.2), ("/api/v1/auth/*", 401, 0.001)]
    second_requests = [("/api/v1/users/*", 200, 0.04), ("/api/v1/users/*", 429, 7.0)]
    first, second, whole = ProxyMetrics(), ProxyMetrics(), ProxyMetrics()
    observe(whole, first_requests + second_requests)
    mirrors = []
    for pid, metrics, requests in ((1001, first, first_requests), (1002, second, second_requests)):
        mirror = MultiprocessMirror([(metrics, "")], value_class=values.MultiProcessValue(lambda pid=pid: pid))
        observe(metrics, requests[:1])
        mirror.write()  # a second's mirror, then the rest of the requests, then the next one
        observe(metrics, requests[1:])
        mirror.write()
        mirrors.append(mirror)

    scraped, expected = CollectorRegistry(), CollectorRegistry()
    MultiProcessCollector(scraped, path=str(tmp_path))
    expected.register(whole)
    assert samples(scraped) == samples(expected)


def test_a_killed_workers_breaker_state_leaves_the_gauge_and_the_worst_live_state_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    dead_pid = 2**22 + 17  # above the largest pid Linux allows: no such process
    for pid, failures in ((os.getpid(), 0), (dead_pid, 5)):
        breaker = CircuitBreaker(5, 60.0, name="users")
        for _ in range(failures):
            breaker.record_failure()
        metrics = BreakerMetrics()
        metrics.track("users", breaker)
        MultiprocessMirror([(metrics, "livemax")], value_class=values.MultiProcessValue(lambda pid=pid: pid)).write()

    def state() -> float:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))
        return registry.get_sample_value("pyairtable_gateway_upstream_breaker_state", {"upstream": "users"}) or 0.0

    assert state() == 2.0  # open in one worker: the gateway's worst
    forget_dead_workers(str(tmp_path))
    assert state() == 0.0  # that worker is gone: the live one's breaker is closed


def test_the_metrics_directory_an_operator_gives_starts_empty_and_a_made_one_goes_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "counter_999.db").write_bytes(b"a previous run's counts")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with metrics_directory() as directory:
        assert directory == str(tmp_path) and not list(tmp_path.iterdir())
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    with metrics_directory() as directory:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory and os.path.isdir(directory)
    assert not os.path.exists(directory) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
