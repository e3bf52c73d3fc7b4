"""Private Redis and PostgreSQL servers that a fault test may kill, hang and restart.

The machine's shared servers (Redis on 6379, PostgreSQL on 5432) are never touched: each private
server listens on a free loopback port of its own and lives in a temporary folder that goes away
with it. Used by the fault tests in ``tests/`` and by the fault harness in ``bench/``.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import redis as redis_sync

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} never answered")
        time.sleep(0.05)


class PrivateRedis:
    """A ``redis-server`` on a free port, keeping nothing on disk: a restart comes back empty."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        assert self.port != 6379, "never the machine's shared Redis"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "PrivateRedis":
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait(self.answers, f"redis-server on {self.port}")
        return self

    def answers(self) -> bool:
        try:
            return bool(redis_sync.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis_sync.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: everything it held is gone; ``start()`` brings back an empty server."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def hang(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self.kill()


class PrivatePostgres:
    """A PostgreSQL cluster made by ``initdb`` in a temporary folder, on a free port, trust auth.

    PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
    ``postgres`` system user (``runuser``)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        assert self.port != 5432, "never the machine's shared PostgreSQL"
        self.bindir = _postgres_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="pyairtable-pg-"))
        self.data = self.folder / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run(prefix + list(command), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> "PrivatePostgres":
        if not (self.data / "PG_VERSION").exists():
            self._run(f"{self.bindir}/initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "start")
        _wait(self.answers, f"PostgreSQL on {self.port}")
        return self

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m immediate``: every connection dropped at once, as in a crash."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", mode, "stop")

    def hang(self) -> None:
        """SIGSTOP the postmaster: new connections are never answered (existing backends still run)."""
        os.kill(self.postmaster_pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.postmaster_pid(), signal.SIGCONT)

    def destroy(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.resume()
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _postgres_bindir() -> str:
    found = shutil.which("pg_ctl")
    if found:
        return str(Path(found).parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not versions:
        raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    return str(versions[-1].parent)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().start()
    try:
        yield server
    finally:
        server.destroy()
