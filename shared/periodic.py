"""The loops in the background of a service: the relays, the pruner, the retention purge, the usage
pipeline and the gateway's usage flusher. One base, :class:`BackgroundWorker`, starts them, stops
them with grace and logs a crash; :class:`PeriodicTask` runs a job every so often on it."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("shared.periodic")

FIRST_RUN_DELAY_SECONDS = 60.0


class BackgroundWorker:
    """A loop that runs until :meth:`stop`. Subclasses write :meth:`run`, checking ``stopping``
    between units of work and sleeping with :meth:`_stopped_within` so a stop or a :meth:`wake` ends
    the wait at once.

    Stopping lets the unit in progress finish, for ``grace_seconds``: cancelling mid-query can wedge
    a connection, and mid-send can send twice. On Python 3.11 a cancellation landing inside
    redis-py's own ``wait_for`` can be lost, so the loop ends on its flag, and the cancellation
    after the grace is only the last resort."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self.stopping = False
            self._task = asyncio.create_task(self._run_logging_a_crash(), name=self.name)

    def wake(self) -> None:
        """End the current wait (after the unit of work in progress, if any)."""
        self._wakeup.set()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        if self._task is None:
            return
        self.stopping = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
        except TimeoutError:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)  # a lost cancellation must not hang shutdown
        self._task = None

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if woken or stopped; True once stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()
        return self.stopping

    async def _run_logging_a_crash(self) -> None:
        # A loop catches what it expects; anything else ends it, and must not end it silently (an
        # unawaited task's exception is only reported when the task is collected, if ever).
        try:
            await self.run()
        except Exception:
            logger.exception(f"{self.name} crashed; it stays stopped until the service restarts")


class PeriodicTask(BackgroundWorker):
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
        super().__init__(name)
        self.job = job
        self.interval_seconds = interval_seconds
        self.first_run_delay_seconds = first_run_delay_seconds

    async def run(self) -> None:
        delay = min(self.first_run_delay_seconds, self.interval_seconds)
        while not await self._stopped_within(delay):
            try:
                await self.job()
            except Exception as exc:
                logger.warning(f"{self.name} failed; will retry", extra={"error": type(exc).__name__})
            delay = self.interval_seconds
