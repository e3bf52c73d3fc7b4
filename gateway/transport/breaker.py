"""A circuit breaker: stop calling a dependency that cannot be reached, and notice at once when it can.

closed → open after ``failures`` consecutive failures. While open, calls are refused without
touching the dependency; once the open period has passed, one call goes through as a probe
(half-open): its success closes the breaker, its failure opens it again for twice as long, from
``first_open_seconds`` up to ``reset_seconds``. A probe that ends without a verdict (the client
went away, or sent too much or too slowly) frees its place for the next call, so no way of ending
leaves the breaker waiting for an answer that never comes.

With a ``recovery_probe`` (a cheap call, such as the upstream's ``GET /ready``, that succeeds when
the dependency answers at all), a background task tries it every ``probe_interval`` while the
breaker is open and closes the breaker on the first success: a dependency that comes back is used
again within about one interval, however long the open period has grown, and an in-band probe
that fired before the dependency listened costs no full open period.

Why not a library: the proxy calls ``allow`` and ``record_success`` on every request, so a
breaker's closed path must cost a couple of attribute reads (the gateway's whole budget is tens of
microseconds per request: docs/PERFORMANCE.md), and the proxy must be able to end a call with no
verdict. pybreaker (1.4) takes a threading lock and reads ``datetime.now()`` on every call, is
synchronous (its async path needs Tornado), and lets every call through when half-open; purgatory
(3.0) sends every call through its unit of work and message bus (objects and awaits per call),
uses wall-clock time and also lets every call through when half-open; aiobreaker (1.2, 2021) is
pybreaker's design, unmaintained. None has a growing open period, a background recovery probe or
a way to end a call without a verdict.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger("gateway")

FIRST_OPEN_SECONDS = 1.0
PROBE_INTERVAL_SECONDS = 0.5


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        reset_seconds: float,
        *,
        first_open_seconds: float | None = None,
        recovery_probe: Callable[[], Awaitable[object]] | None = None,
        probe_interval: float = PROBE_INTERVAL_SECONDS,
        name: str = "",
    ) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds  # the longest open period
        first = reset_seconds if first_open_seconds is None else first_open_seconds
        self.first_open_seconds = min(first, reset_seconds)
        self.open_seconds = self.first_open_seconds
        self.recovery_probe = recovery_probe
        self.probe_interval = probe_interval
        self.name = name
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.times_opened = 0
        self._probing = False
        self._watcher: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.open_seconds else "open"

    def allow(self) -> bool:
        """Whether a call may go ahead now (one probe at a time when half-open)."""
        if self.opened_at is None:
            return True
        if self.state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until a call may go through: the rest of the open period, or less when the
        background probe may close the breaker before then."""
        if self.opened_at is None:
            return 0
        remaining = self.open_seconds - (time.monotonic() - self.opened_at)
        if self.recovery_probe is not None:
            remaining = min(remaining, self.probe_interval)
        return max(1, math.ceil(remaining))

    def record_success(self) -> None:
        if self.opened_at is None and not self.consecutive_failures:
            return  # the usual case: nothing to change
        if self.opened_at is not None and self.name:
            logger.info("circuit breaker closed", extra={"upstream": self.name})
        self.consecutive_failures = 0
        self.opened_at = None
        self.open_seconds = self.first_open_seconds
        self._probing = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.opened_at is not None:
            if self._probing:  # the probe failed: wait longer before the next one
                self.open_seconds = min(self.open_seconds * 2, self.reset_seconds)
            self.opened_at = time.monotonic()
        elif self.consecutive_failures >= self.threshold:
            self.opened_at = time.monotonic()
            self.times_opened += 1
            if self.name:  # an unnamed breaker's owner says what it means (the rate limiter's Redis)
                logger.warning("circuit breaker opened", extra={"upstream": self.name})
            self._watch()
        self._probing = False

    def release_probe(self) -> None:
        """The call ended without a verdict on the dependency: when half-open, the next call probes."""
        self._probing = False

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _watch(self) -> None:
        if self.recovery_probe is None or (self._watcher is not None and not self._watcher.done()):
            return
        self._watcher = asyncio.get_running_loop().create_task(self._probe_until_it_answers(self.recovery_probe))

    async def _probe_until_it_answers(self, probe: Callable[[], Awaitable[object]]) -> None:
        while self.opened_at is not None:
            await asyncio.sleep(self.probe_interval)
            if self.opened_at is None:
                return  # closed meanwhile by a call that went through
            with contextlib.suppress(Exception):  # still unreachable: try again after the interval
                await probe()
                self.record_success()
