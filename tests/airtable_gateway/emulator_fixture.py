"""The Airtable emulator as a real process, for tests that talk to "Airtable" over HTTP.

Use ``run_emulator(...)`` for an emulator of your own (a seed, tokens, a rate limit, a penalty), or import
the fixtures into a conftest or a test module (their functions have other names than the fixtures, so a
test's ``emulator`` parameter does not shadow an import)::

    from tests.airtable_gateway.emulator_fixture import emulator_per_test, emulator_per_session  # noqa: F401

``emulator_process`` is one process per test session (5 requests/s per base, a 1 s penalty after a 429);
``emulator`` is that process reset (seed, stats, penalties, injected failures, latency) before each test.
"""

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from airtable_gateway.emulator.app import create_emulator_app
from tests.e2e.processes import Processes, Service, environment, free_port

TOKEN = "emulator-token"
CRM_BASE = "appEmuCrmBase0000"  # the default seed: tables Contacts (250 records) and Companies (5)
OPS_BASE = "appEmuOpsBase0000"  # the default seed: table Tasks (20 records)
CONTACTS = "tblEmuContacts000"
COMPANIES = "tblEmuCompanies00"
TASKS = "tblEmuTasks000000"


@dataclass
class Emulator:
    url: str
    token: str
    service: Service

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stats(self) -> dict[str, Any]:
        return dict(self._control("GET", "stats").json())

    def reset(self) -> None:
        self._control("POST", "reset")

    def fail(self, base: str, status: int, count: int = 1) -> None:
        """The next ``count`` requests to ``base`` answer ``status`` (429 also starts the penalty)."""
        self._control("POST", "fail", {"base": base, "status": status, "count": count})

    def set_latency(self, seconds: float) -> None:
        self._control("POST", "latency", {"seconds": seconds})

    def _control(self, method: str, name: str, body: dict[str, Any] | None = None) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/_emulator/{name}", json=body, timeout=10)
        response.raise_for_status()
        return response


@contextlib.asynccontextmanager
async def in_process(seed: dict[str, Any] | Path | None = None, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an emulator app in this process (no socket), authenticated with TOKEN."""
    app = create_emulator_app(seed, **options)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator.test", headers=headers) as client:
        yield client


def wait_ready(service: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and service.process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.url}/_emulator/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"the Airtable emulator never answered (exit {service.process.poll()}):\n{service.log_tail()}")


@contextlib.contextmanager
def run_emulator(
    log_dir: Path,
    *,
    seed: Path | None = None,
    tokens: Sequence[str] = (TOKEN,),
    requests_per_second: int = 5,
    requests_per_second_per_token: int = 50,
    penalty_seconds: float = 30.0,
) -> Iterator[Emulator]:
    """``python -m airtable_gateway emulator`` on a free port; stopped when the block ends."""
    processes = Processes(log_dir)
    port = free_port()
    args = ["-m", "airtable_gateway", "emulator", "--port", str(port)]
    args += ["--requests-per-second", str(requests_per_second), "--penalty-seconds", str(penalty_seconds)]
    args += ["--requests-per-second-per-token", str(requests_per_second_per_token)]
    for token in tokens:
        args += ["--token", token]
    if seed is not None:
        args += ["--seed", str(seed)]
    service = processes.python(f"airtable-emulator-{port}", args, environment(log_dir), port)
    try:
        wait_ready(service)
        yield Emulator(service.url, tokens[0], service)
    finally:
        processes.stop_all()


@pytest.fixture(scope="session", name="emulator_process")
def emulator_per_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with run_emulator(tmp_path_factory.mktemp("airtable-emulator"), penalty_seconds=1.0) as running:
        yield running


@pytest.fixture(name="emulator")
def emulator_per_test(emulator_process: Emulator) -> Emulator:
    emulator_process.reset()
    return emulator_process
