""".ci/run on a stock Debian: it installs what is missing and gets the tests signed in to PostgreSQL.

The script is sourced and its steps run one by one, against a private PostgreSQL cluster set up as
Debian sets up its own (the postgres role has no password, loopback asks for one with
scram-sha-256, the postgres system user gets in over the socket), never against the machine's.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.private_servers import PrivatePostgres

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "run"
STOCK_DEBIAN_HBA = """\
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""

needs_a_private_cluster = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("su") is None or shutil.which("psql") is None,
    reason="needs root (to act as the postgres system user), su and psql",
)


def run_steps(steps: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """``steps`` (bash) after sourcing .ci/run, which then runs nothing by itself."""
    env = {key: value for key, value in os.environ.items() if key not in ("PGPASSWORD", "TEST_POSTGRES_URL")}
    env |= environ
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; {steps}'], env=env, capture_output=True, text=True, check=False
    )


def test_sourcing_the_script_runs_nothing_and_a_machine_with_everything_installs_nothing() -> None:
    done = run_steps("missing_packages", CI_MAKE="false")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"this machine has everything, yet the script would install {done.stdout.split()}"


@pytest.fixture
def stock_debian_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().start()
    try:
        (server.data / "pg_hba.conf").write_text(STOCK_DEBIAN_HBA)
        server._run(f"{server.bindir}/pg_ctl", "-D", str(server.data), "reload")
        yield server
    finally:
        server.destroy()


def refused_without_password(server: PrivatePostgres) -> bool:
    try:
        psycopg.connect(server.url, connect_timeout=5).close()
    except psycopg.OperationalError as error:
        return "password" in str(error)
    return False


@needs_a_private_cluster
def test_a_stock_debian_postgres_gets_a_password_that_the_tests_are_handed(
    stock_debian_postgres: PrivatePostgres,
) -> None:
    server = stock_debian_postgres
    for _ in range(50):  # the reload is asynchronous
        if refused_without_password(server):
            break
        psycopg.connect(server.url, connect_timeout=5).close()
    assert refused_without_password(server), "the cluster is not set up as Debian's"

    done = run_steps(
        'sign_in_over_tcp; echo "$TEST_POSTGRES_URL"; echo "$PGPASSWORD"',
        CI_POSTGRES_PORT=str(server.port),
        PGHOST=str(server.folder),  # the private cluster's socket, for the step over the socket
    )
    assert done.returncode == 0, done.stderr
    url, password = done.stdout.strip().splitlines()[-2:]
    assert url == f"postgresql://postgres:{password}@127.0.0.1:{server.port}/postgres"
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert refused_without_password(server), "pg_hba.conf was changed: loopback no longer asks for a password"
    assert (server.data / "pg_hba.conf").read_text() == STOCK_DEBIAN_HBA


@needs_a_private_cluster
def test_a_postgres_that_trusts_loopback_is_left_as_it_is() -> None:
    server = PrivatePostgres().start()
    try:
        done = run_steps(
            'sign_in_over_tcp; echo "url=${TEST_POSTGRES_URL:-}"',
            CI_POSTGRES_PORT=str(server.port),
            PGHOST=str(server.folder),
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "url=", "the tests' default URL is replaced"
        with psycopg.connect(server.url) as conn:
            row = conn.execute("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'").fetchone()
        assert row == (True,), "the postgres role got a password it did not need"
    finally:
        server.destroy()
