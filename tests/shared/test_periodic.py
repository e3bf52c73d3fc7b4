"""PeriodicTask and BackgroundWorker (shared/periodic.py), the loops behind the relays, the pruner,
the retention purge, the usage pipeline and the gateway's usage flusher: a failing run is logged by
type and tried again, a wake runs the job at once, stop lets a run in progress finish, a run that
outlives the grace period is cancelled, and a loop that crashes says so in the log."""

import asyncio
import logging

import pytest

from shared.periodic import BackgroundWorker, PeriodicTask
from tests.conftest import WAIT_SECONDS, eventually

HOUR = 3600.0  # an interval that never elapses during a test: every run here is asked for


async def test_a_failing_run_is_logged_by_type_and_the_next_one_still_happens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise ConnectionError("db://user:secret@host refused")  # a message that must not be logged

    task = PeriodicTask("flaky job", flaky, HOUR, first_run_delay_seconds=0)
    with caplog.at_level(logging.WARNING, logger="shared.periodic"):
        task.start()
        try:
            await eventually(lambda: len(runs) == 1, "the first run")
            task.wake()
            await eventually(lambda: len(runs) == 2, "the run after the failure")
        finally:
            await task.stop()
    [record] = [r for r in caplog.records if r.name == "shared.periodic"]
    assert record.getMessage() == "flaky job failed; will retry"
    assert record.__dict__["error"] == "ConnectionError"
    assert "secret" not in caplog.text


async def test_wake_runs_the_job_now_and_the_first_run_waits_otherwise() -> None:
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1

    task = PeriodicTask("job", job, HOUR)  # the first run would wait a minute
    task.start()
    try:
        await asyncio.sleep(0)
        assert runs == 0
        task.wake()
        await eventually(lambda: runs == 1, "the woken run")
    finally:
        await task.stop()
    assert runs == 1, "stopping does not run the job again"


async def test_stop_lets_a_run_in_progress_finish() -> None:
    started, finished = asyncio.Event(), asyncio.Event()
    release = asyncio.Event()

    async def job() -> None:
        started.set()
        await release.wait()
        finished.set()

    task = PeriodicTask("job", job, HOUR, first_run_delay_seconds=0)
    task.start()
    await asyncio.wait_for(started.wait(), WAIT_SECONDS)
    stopping = asyncio.create_task(task.stop(grace_seconds=WAIT_SECONDS))
    await asyncio.sleep(0)
    assert not stopping.done(), "stop waits for the run in progress"
    release.set()
    await asyncio.wait_for(stopping, WAIT_SECONDS)
    assert finished.is_set(), "the run was finished, not cut off"


async def test_a_run_that_outlives_the_grace_period_is_cancelled() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: a query on a hung database
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = PeriodicTask("stuck job", stuck, HOUR, first_run_delay_seconds=0)
    task.start()
    await asyncio.wait_for(started.wait(), WAIT_SECONDS)
    await asyncio.wait_for(task.stop(grace_seconds=0.05), WAIT_SECONDS)
    assert cancelled.is_set()


class Crashing(BackgroundWorker):
    """A loop with a bug: an error it does not expect ends it."""

    async def run(self) -> None:
        await self._stopped_within(0)
        raise KeyError("a bug")


async def test_a_loop_that_crashes_is_logged_with_its_traceback_and_stop_still_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Crashing("usage pipeline")
    with caplog.at_level(logging.ERROR, logger="shared.periodic"):
        worker.start()
        await eventually(lambda: bool(caplog.records), "the crash to be logged")
    [record] = caplog.records
    assert record.getMessage() == "usage pipeline crashed; it stays stopped until the service restarts"
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    await asyncio.wait_for(worker.stop(), WAIT_SECONDS)
