"""`make run` and `make run-auth_service` serve register and login with no PostgreSQL or Redis:
SQLite files in DATA_DIR, in-memory stores, a generated development secret."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.private_servers import free_port

REPO = Path(__file__).resolve().parents[2]
PLATFORM_VARIABLES = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "PORT", "HOST", "ENVIRONMENT")


def clean_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not any(key == name or key.endswith("_" + name) for name in PLATFORM_VARIABLES)
    }
    env.update(DATA_DIR=str(data_dir), ARGON2_MEMORY_KIB="19456", ARGON2_TIME_COST="2", **extra)
    return env


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def start(target: str, env: dict[str, str], processes: list[subprocess.Popen[bytes]], log: Path) -> None:
    process = subprocess.Popen(
        ["make", "--no-print-directory", target],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.append(process)


def wait_until_healthy(base_url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"{base_url} never became healthy:\n{log.read_text()[-3000:]}")


def register_and_login(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        credentials = {"email": "grace@example.com", "password": "a long enough passphrase"}
        registered = client.post("/api/v1/auth/register", json=credentials)
        assert registered.status_code == 201, registered.text
        logged_in = client.post("/api/v1/auth/login", json=credentials)
        assert logged_in.status_code == 200, logged_in.text
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {logged_in.json()['access_token']}"})
        assert me.json()["email"] == "grace@example.com"


def test_make_run_auth_service_serves_register_and_login(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    log = tmp_path / "auth.log"

    start("run-auth_service", clean_environment(tmp_path / "data", AUTH_PORT=str(port)), started, log)
    wait_until_healthy(f"http://127.0.0.1:{port}", started[0], log)

    register_and_login(f"http://127.0.0.1:{port}")
    assert (tmp_path / "data" / "auth.sqlite3").exists()
    assert (tmp_path / "data" / "jwt_secret").stat().st_mode & 0o077 == 0


def test_make_run_serves_the_platform_on_one_port(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    log = tmp_path / "platform.log"

    start("run", clean_environment(tmp_path / "data", PORT=str(port)), started, log)
    wait_until_healthy(f"http://127.0.0.1:{port}", started[0], log)

    register_and_login(f"http://127.0.0.1:{port}")
    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
    assert ready.status_code == 200
    assert "redis" not in ready.json()["checks"]
    # No mail server: the verification mail, link included, is in the log.
    deadline = time.monotonic() + 30
    while "/verify-email?token=" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "/verify-email?token=" in log.read_text()
