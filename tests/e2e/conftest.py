from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DatabaseFactory
from tests.e2e.processes import Processes, Stack
from tests.mail_server import mail_server  # noqa: F401  (pytest finds fixtures by name)


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


@pytest.fixture
def stack(
    processes: Processes, tmp_path: Path, databases: DatabaseFactory, redis_url: str, redis_namespace: str
) -> Stack:
    """The test's processes with its data directory, databases and Redis namespace."""
    return Stack(processes, tmp_path, databases, redis_url, redis_namespace)
