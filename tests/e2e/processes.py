"""Starting, waiting for and stopping real service processes on loopback ports.

Every process runs in a session of its own, so stopping it ends its children too (``make``'s
Python, a shell's ``exec``-ed service); its output goes to a log file shown when it misbehaves.
"""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import LOADED_DATABASE_ENVIRON, WAIT_SECONDS, DatabaseFactory, signed_access_token
from tests.mail_server import Inbox, token_in
from tests.private_servers import free_port

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Only these variables of the test run reach a service: its settings come from the test alone.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT")
# A gateway routes only what its test gives it: an empty URL drops a default route.
NO_DEFAULT_ROUTES = dict.fromkeys(
    ("AUTH_SERVICE_URL", "USER_SERVICE_URL", "AIRTABLE_GATEWAY_URL", "ANALYTICS_SERVICE_URL"), ""
)
JWT_SECRET = "e2e-gateway-processes-secret-" + "x" * 32
# The cheapest argon2id parameters the auth service accepts (OWASP's minimum): fast sign-ins.
FAST_ARGON2 = {"ARGON2_MEMORY_KIB": "19456", "ARGON2_TIME_COST": "2", "ARGON2_PARALLELISM": "1"}


def environment(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    # A PostgreSQL connect or statement on a loaded machine (two test runs side by side) can take
    # longer than production's bounds; the tests of a hung PostgreSQL pass those back explicitly.
    env.update(
        DATA_DIR=str(data_dir),
        JWT_SECRET=JWT_SECRET,
        PYTHONUNBUFFERED="1",
        **LOADED_DATABASE_ENVIRON,
    )
    env.update(settings)
    return env


def access_token(
    secret: str = JWT_SECRET, ttl: int = 600, *, org: uuid.UUID | None = None, org_role: str = "member"
) -> str:
    """An access token as the auth service would issue it, for routes behind the gateway; with
    ``org``, acting in that organisation with ``org_role``."""
    organisation = {"tid": str(org), "org_role": org_role} if org is not None else {}
    expires = int(time.time()) + ttl
    return signed_access_token(secret, email="e2e@example.com", roles=[], sid=None, exp=expires, **organisation)


class Service:
    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def wait_healthy(self, timeout: float = 45.0) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        pytest.fail(f"{self.name} never became healthy (exit {self.process.poll()}):\n{self.log_tail()}")

    def release(self) -> None:
        """Let a process started with ``wait_stdin`` bind its port now."""
        stdin: IO[bytes] | None = self.process.stdin
        assert stdin is not None
        stdin.write(b"go\n")
        stdin.flush()


class Processes:
    """The processes of one test; all of them are stopped when it ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Service] = []

    def start(
        self, name: str, command: list[str], env: dict[str, str], port: int, *, wait_stdin: bool = False
    ) -> Service:
        log = self.logs / f"{name}.log"
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE if wait_stdin else subprocess.DEVNULL,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        service = Service(name, process, log, port)
        self.started.append(service)
        return service

    def python(
        self, name: str, args: list[str], env: dict[str, str], port: int, *, wait_stdin: bool = False
    ) -> Service:
        return self.start(name, [PYTHON, *args], env, port, wait_stdin=wait_stdin)

    def gateway(self, name: str, data_dir: Path, **settings: str) -> Service:
        port = free_port()
        env = environment(data_dir, **{**NO_DEFAULT_ROUTES, **settings, "GATEWAY_PORT": str(port)})
        return self.python(name, ["-m", "gateway", "serve"], env, port)

    def gateway_in_front(self, data_dir: Path, upstreams: dict[str, Service], **settings: str) -> Service:
        """A gateway (named "gateway") whose ``upstreams`` are these services (URL variable →
        service), returned once they and it answer ``/health`` (a service migrates first: 60 s)."""
        urls = {variable: service.url for variable, service in upstreams.items()}
        gateway = self.gateway("gateway", data_dir, **urls, **settings)
        for service in upstreams.values():
            service.wait_healthy(60)
        gateway.wait_healthy()
        return gateway

    def gateway_with_breaker(self, data_dir: Path, users_port: int, things: Service, reset_seconds: str) -> Service:
        """A gateway (named "gateway") routing /api/v1/users to ``users_port`` on loopback (an upstream
        a test takes down) and /api/v1/things to ``things``: a connect waits 1 s, and 3 failures open
        the breaker for ``reset_seconds``; rate limits out of the way."""
        return self.gateway(
            "gateway",
            data_dir,
            EXTRA_ROUTES=f"/api/v1/users=http://127.0.0.1:{users_port},/api/v1/things={things.url}",
            CONNECT_TIMEOUT="1",
            REQUEST_TIMEOUT="5",
            BREAKER_FAILURES="3",
            BREAKER_RESET_SECONDS=reset_seconds,
            RATE_LIMIT_PER_MINUTE="10000",
            RATE_LIMIT_BURST="10000",
        )

    def upstream(self, mode: str, port: int | None = None, *, wait_stdin: bool = False, sleep: float = 3.0) -> Service:
        port = port or free_port()
        args = ["-m", "tests.e2e.upstreams", mode, "--port", str(port), "--sleep", str(sleep)]
        if wait_stdin:
            args.append("--wait-stdin")
        env = environment(self.logs)
        return self.python(f"{mode}-{port}", args, env, port, wait_stdin=wait_stdin)

    def stop(self, service: Service, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the process's whole group, then SIGKILL it if it has not exited within 5 s."""
        _signal_group(service, sig)
        self._reap(service, 5.0)

    def stop_all(self) -> None:
        for service in self.started:
            _signal_group(service, signal.SIGTERM)
            _signal_group(service, signal.SIGCONT)  # a process a test stopped (SIGSTOP) too
        for service in self.started:
            self._reap(service, 5.0)

    @staticmethod
    def _reap(service: Service, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=timeout)
        _signal_group(service, signal.SIGKILL)  # the group's other members, too
        service.process.wait(timeout=5)
        if service.process.stdin is not None:
            service.process.stdin.close()


def _signal_group(service: Service, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(service.process.pid, sig)


def metric(base_url: str, name: str) -> float:
    """One sample of a service's Prometheus ``/metrics``."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def start_service(
    processes: Processes, name: str, package: str, env_prefix: str, data_dir: Path, database_url: str, **settings: str
) -> Service:
    """``package`` migrated, then served (the shell ``exec``s it), on ``database_url`` and a free
    port (``<env_prefix>_DATABASE_URL``, ``<env_prefix>_PORT``); ``settings``: more of its environment."""
    port = free_port()
    own = {f"{env_prefix}_DATABASE_URL": database_url, f"{env_prefix}_PORT": str(port)}
    env = environment(data_dir, **own, **settings)
    python = shlex.quote(PYTHON)
    command = f"{python} -m {package} migrate && exec {python} -m {package} serve"
    return processes.start(name, ["sh", "-c", command], env, port)


def start_auth_service(
    processes: Processes, data_dir: Path, database_url: str, redis_url: str, namespace: str, **settings: str
) -> Service:
    """The auth service, migrated then served, on its own database and the test's Redis namespace
    (``settings``: more of its environment)."""
    redis = {"REDIS_URL": redis_url, "REDIS_NAMESPACE": namespace}
    return start_service(
        processes, "auth", "auth_service", "AUTH", data_dir, database_url, **redis, **FAST_ARGON2, **settings
    )


@dataclass(frozen=True)
class Stack:
    """A test's processes and what they share: its data directory, its databases and its Redis
    namespace (the ``stack`` fixture), so that a test names only what is its own."""

    processes: Processes
    data_dir: Path
    databases: DatabaseFactory
    redis_url: str
    namespace: str

    @property
    def redis(self) -> dict[str, str]:
        """The environment that puts a process on the test's Redis namespace."""
        return {"REDIS_URL": self.redis_url, "REDIS_NAMESPACE": self.namespace}

    def auth(self, **settings: str) -> Service:
        """The auth service on a new database of its own (:func:`start_auth_service`)."""
        database_url = self.databases.create("auth")
        return start_auth_service(
            self.processes, self.data_dir, database_url, self.redis_url, self.namespace, **settings
        )

    def gateway(self, name: str, **settings: str) -> Service:
        """A gateway process on the test's Redis namespace (:meth:`Processes.gateway`)."""
        return self.processes.gateway(name, self.data_dir, **self.redis, **settings)

    def gateway_in_front(self, upstreams: dict[str, Service], **settings: str) -> Service:
        """A healthy gateway on the test's Redis namespace (:meth:`Processes.gateway_in_front`)."""
        return self.processes.gateway_in_front(self.data_dir, upstreams, **self.redis, **settings)


def arrivals(url: str) -> int:
    """How many requests an upstream of ``tests.e2e.upstreams`` has received."""
    count: int = httpx.get(f"{url}/__arrivals", timeout=5).json()["count"]
    return count


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``check`` until it returns something truthy: a bound on waiting for something
    eventually true (a process's state), never a timing test."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return result


def wait_for_mail(inbox: Inbox, address: str, count: int) -> EmailMessage:
    deadline = time.monotonic() + WAIT_SECONDS
    while len(inbox.to(address)) < count:
        assert time.monotonic() < deadline, f"mail #{count} to {address} never came"
        time.sleep(0.05)
    return inbox.to(address)[count - 1]


def mailed_invitation(
    client: httpx.Client, organization_url: str, inviter: dict[str, str], inbox: Inbox, email: str, role: str
) -> str:
    """The invitation token mailed to ``email`` once ``inviter`` (a bearer header) invited them to
    the organisation at ``organization_url`` with ``role``."""
    invited = client.post(f"{organization_url}/invitations", json={"email": email, "role": role}, headers=inviter)
    assert invited.status_code == 201, invited.text
    return token_in(wait_for_mail(inbox, email, 1))
