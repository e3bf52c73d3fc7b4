"""A job run every so often in the background of a service (retention purges, pruning, the outbox
relays)."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("shared.periodic")

FIRST_RUN_DELAY_SECONDS = 60.0


class PeriodicTask:
    """Runs ``job`` every ``interval_seconds`` until stopped, and at once when woken (:meth:`wake`).
    The first run waits too (at most ``first_run_delay_seconds``): a start-up is busy enough, and a
    service restarting in a loop would run the job in a loop. A failure is logged and tried again
    next time."""

    def __init__(
        self,
        name: str,
        job: Callable[[], Awaitable[None]],
        interval_seconds: float,
        first_run_delay_seconds: float = FIRST_RUN_DELAY_SECONDS,
    ) -> None:
        self.name = name
        self.job = job
        self.interval_seconds = interval_seconds
        self.first_run_delay_seconds = first_run_delay_seconds
        self.stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    async def run(self) -> None:
        delay = min(self.first_run_delay_seconds, self.interval_seconds)
        while not await self._stopped_within(delay):
            try:
                await self.job()
            except Exception as exc:
                logger.warning(f"{self.name} failed; will retry", extra={"error": type(exc).__name__})
            delay = self.interval_seconds

    def wake(self) -> None:
        """Run the job now rather than at its next time (after the run in progress, if any)."""
        self._wakeup.set()

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()
        return self.stopping

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Let a run in progress finish (cancelling mid-query can wedge the connection)."""
        if self._task is not None:
            self.stopping = True
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
            except TimeoutError:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)  # a lost cancellation must not hang shutdown
            self._task = None
