"""One timer for many waits (gateway/transport/deadlines.py): overdue waits expire, finished ones never do,
and the timer stops when nothing waits. The timer's own checks are run by the test, at loop
times it chooses, so nothing here depends on how busy the machine is."""

from collections.abc import Hashable

import pytest

from gateway.transport import deadlines as deadlines_module
from gateway.transport.deadlines import Deadlines


class Loop:
    """The two things Deadlines asks of its event loop, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.scheduled: list[tuple[float, object]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: object, *args: object) -> "Handle":
        self.scheduled.append((self.now + delay, (callback, args)))
        return Handle()

    def run_due(self) -> None:
        due = [entry for entry in self.scheduled if entry[0] <= self.now]
        self.scheduled = [entry for entry in self.scheduled if entry[0] > self.now]
        for _, (callback, args) in due:  # type: ignore[misc]
            callback(*args)


class Handle:
    def cancel(self) -> None:
        pass


def deadlines_on(loop: Loop, monkeypatch: pytest.MonkeyPatch, timeout: float, expired: list[Hashable]) -> Deadlines:
    monkeypatch.setattr(deadlines_module.asyncio, "get_running_loop", lambda: loop)
    return Deadlines(timeout, expired.append)


def test_an_overdue_wait_expires_within_a_quarter_of_its_timeout_and_a_finished_one_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop, expired = Loop(), []
    deadlines = deadlines_on(loop, monkeypatch, 0.2, expired)
    deadlines.add("slow")
    deadlines.add("fast")
    deadlines.discard("fast")  # finished before any check

    loop.now += 0.15
    loop.run_due()
    assert expired == [], "not due yet"
    loop.now += 0.10  # 0.25 s: the timeout and at most one tick (a quarter of it) later
    loop.run_due()
    assert expired == ["slow"]


def test_the_timer_stops_when_nothing_waits_and_starts_again_with_the_next_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop, expired = Loop(), []
    deadlines = deadlines_on(loop, monkeypatch, 0.2, expired)
    deadlines.add("a")
    loop.now += 0.25
    loop.run_due()
    loop.now += 1.0
    loop.run_due()
    assert expired == ["a"] and deadlines.pending == {}
    assert deadlines._timer is None and loop.scheduled == [], "no timer once nothing waits"

    deadlines.add("b")
    assert len(loop.scheduled) == 1, "a new wait starts the timer again"
