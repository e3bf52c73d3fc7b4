"""The circuit breaker itself (gateway/transport/breaker.py), on a clock the test moves: when it opens, one
probe at a time when half-open, a failed probe re-opening it for twice as long (up to the reset
period), a probe without a verdict freeing its place, and the background recovery probe.
How the proxy feeds it (which answers count) is tested in test_breakers.py."""

import pytest

from gateway.transport import breaker as breaker_module
from gateway.transport.breaker import CircuitBreaker
from tests.conftest import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(breaker_module, "time", fake)
    return fake


def opened(failures: int = 3, reset_seconds: float = 8.0, first_open_seconds: float = 1.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failures, reset_seconds, first_open_seconds=first_open_seconds)
    for _ in range(failures):
        breaker.record_failure()
    return breaker


def test_it_opens_after_the_threshold_of_consecutive_failures_only(clock: Clock) -> None:
    breaker = CircuitBreaker(3, 8.0)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    breaker.record_failure()
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == ("closed", True)
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == ("open", False)
    assert breaker.times_opened == 1


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    breaker = opened()
    clock.now += 1.0
    assert breaker.state == "half-open"
    assert [breaker.allow() for _ in range(3)] == [True, False, False]


def test_a_failed_probe_reopens_it_for_twice_as_long_up_to_the_reset_period(clock: Clock) -> None:
    breaker = opened(first_open_seconds=1.0, reset_seconds=3.0)
    open_periods = []
    for _ in range(4):
        started = clock.now
        while not breaker.allow():
            clock.now += 0.25
        open_periods.append(clock.now - started)
        breaker.record_failure()  # the probe failed
    assert open_periods == [1.0, 2.0, 3.0, 3.0]


def test_a_successful_probe_closes_it_and_the_next_opening_starts_short_again(clock: Clock) -> None:
    breaker = opened(first_open_seconds=1.0, reset_seconds=8.0)
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_failure()  # open for 2 s now
    clock.now += 2.0
    assert breaker.allow()
    breaker.record_success()
    assert (breaker.state, breaker.allow(), breaker.retry_after()) == ("closed", True, 0)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 1.0
    assert breaker.state == "half-open", "the open period starts again from the first one"


def test_a_probe_that_ends_without_a_verdict_frees_its_place(clock: Clock) -> None:
    breaker = opened()
    clock.now += 1.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release_probe()  # the client went away mid-probe: nothing learnt about the upstream
    assert breaker.state == "half-open"
    assert breaker.allow(), "the next call probes"


def test_retry_after_counts_down_the_open_period_in_whole_seconds(clock: Clock) -> None:
    breaker = opened(first_open_seconds=4.0, reset_seconds=8.0)
    assert breaker.retry_after() == 4
    clock.now += 2.5
    assert breaker.retry_after() == 2
    clock.now += 1.4
    assert breaker.retry_after() == 1


async def test_the_recovery_probe_closes_it_on_the_first_answer() -> None:
    answers = [OSError("still down"), OSError("still down"), "ok"]
    calls = 0

    async def probe() -> object:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    breaker = CircuitBreaker(1, 3600.0, recovery_probe=probe, probe_interval=0.01)
    breaker.record_failure()
    assert breaker.state == "open"
    await eventually(lambda: breaker.state == "closed", "the breaker closed by its recovery probe")
    assert calls == 3, "two failed probes, then the one that closed it"
    assert breaker.allow()
    breaker.stop_watching()
