"""A small circuit breaker: closed → open after N consecutive failures → half-open probe."""

import math
import time


class CircuitBreaker:
    def __init__(self, failures: int, reset_seconds: float) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.reset_seconds else "open"

    def allow(self) -> bool:
        """Whether a call may go ahead now (one probe at a time when half-open)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def retry_after(self) -> int:
        if self.opened_at is None:
            return 0
        return max(1, math.ceil(self.reset_seconds - (time.monotonic() - self.opened_at)))

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self._probing = False
        if self.opened_at is not None or self.consecutive_failures >= self.threshold:
            self.opened_at = time.monotonic()
