from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import Processes


@pytest.fixture
def processes(tmp_path: Path, redis_namespace: str) -> Iterator[Processes]:
    """The test's processes; all are stopped when it ends, and their logs shown if it failed.

    It asks for ``redis_namespace`` so that the processes stop before the namespace's keys are
    deleted (fixtures end in the reverse order): a consumer still running would create its
    streams again."""
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
        for service in started.started:  # shown by pytest when the test failed
            print(f"--- {service.name} (exit {service.process.returncode}) ---\n{service.log_tail()[-2000:]}")
