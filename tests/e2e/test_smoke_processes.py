"""The smoke walk (``make smoke``, bench/smoke.py) against both ways of running the platform as
processes: ``python -m embedded serve`` (what ``make run`` starts) and the distributed platform of
``make run-distributed`` (deploy/local.py: databases, a role per service, migrations, honcho).

Deadlines are generous bounds that prove "no hang" on a busy machine, never performance claims.
"""

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import DatabaseFactory
from tests.e2e.processes import FAST_ARGON2, PYTHON, REPO, Processes, environment, free_port, wait_for

API_KEY = "e2e-smoke-legacy-api-key-" + "k" * 24


def run_smoke(url: str, api_key: str) -> subprocess.CompletedProcess[str]:
    """``make smoke URL=... API_KEY=...`` as an operator runs it (the module behind the target)."""
    env = {"PATH": "/usr/bin:/bin", "URL": url, "API_KEY": api_key}
    return subprocess.run(
        [PYTHON, "-m", "bench.smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def assert_walked(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    steps = ("gateway ready", "users me", "airtable records", "usage me", "legacy login (key)", "old token refused")
    for step in steps:
        assert step in done.stdout, done.stdout
    assert "smoke walk passed" in done.stdout


def every_upstream_ready(url: str) -> bool:
    try:
        response = httpx.get(f"{url}/ready", timeout=2)
    except httpx.HTTPError:
        return False
    checks = response.json().get("checks", {}) if response.status_code == 200 else {}
    upstreams = [check for name, check in checks.items() if name.startswith("upstream:")]
    return len(upstreams) == 4 and all(check["status"] == "ok" for check in upstreams)


def test_smoke_walks_the_embedded_platform_and_fails_loudly_on_a_wrong_key(
    tmp_path: Path, processes: Processes
) -> None:
    port = free_port()
    # Two walks from one address: more sign-ins a minute than the default limit lets through.
    env = environment(tmp_path, GATEWAY_PORT=str(port), API_KEY=API_KEY, AUTH_RATE_LIMIT_BURST="100", **FAST_ARGON2)
    assert processes.python("migrate", ["-m", "embedded", "migrate"], env, port).process.wait(120) == 0
    platform = processes.python("platform", ["-m", "embedded", "serve"], env, port).wait_healthy(60)

    assert_walked(run_smoke(platform.url, API_KEY))

    refused = run_smoke(platform.url, "not-the-deployment-key-" + "x" * 16)
    assert refused.returncode == 1, refused.stdout
    assert "FAILED legacy login (key): expected 200, got 401" in refused.stderr, refused.stderr
    assert "old token refused" not in refused.stdout  # the walk stopped at the first failure


def drop_databases_and_roles(server_url: str, names: list[str]) -> None:
    """The databases first (their tables belong to the roles), then the roles made for them."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_smoke_walks_the_distributed_platform_started_in_one_command(
    tmp_path: Path,
    processes: Processes,
    databases: DatabaseFactory,
    postgres_url: str,
    redis_url: str,
    redis_namespace: str,
) -> None:
    names = {
        prefix: urlsplit(databases.create(prefix.lower())).path.lstrip("/")
        for prefix in ("AUTH", "USERS", "AIRTABLE_GATEWAY", "ANALYTICS")
    }
    ports = {
        f"{service}_PORT": str(free_port())
        for service in ("GATEWAY", "AUTH", "USERS", "AIRTABLE_GATEWAY", "ANALYTICS", "AIRTABLE_EMULATOR")
    }
    env = environment(
        tmp_path / "data",
        POSTGRES_ADMIN_URL=postgres_url,
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=redis_namespace,
        **{f"{prefix}_DATABASE_NAME": name for prefix, name in names.items()},
        **ports,
    )
    url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
    try:
        platform = processes.start(
            "run-distributed", [PYTHON, "deploy/local.py", "start"], env, int(ports["GATEWAY_PORT"])
        )
        wait_for(lambda: every_upstream_ready(url) or platform.process.poll() is not None, "the platform", 60)
        assert platform.process.poll() is None, platform.log_tail()
        log = platform.log_tail()
        assert "auth.1" in log and "gateway.1" in log  # one process each, logs prefixed by name

        secrets_file = tmp_path / "data" / "secrets.json"
        assert secrets_file.stat().st_mode & 0o077 == 0  # development secrets readable by their owner only
        assert_walked(run_smoke(url, json.loads(secrets_file.read_text())["api_key"]))

        # Each service connects as its own role, the owner of its database (not the superuser).
        with psycopg.connect(postgres_url) as conn:
            for name in names.values():
                owner = conn.execute(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                assert owner == (name,)
                sessions = conn.execute(
                    "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = %s", (name,)
                ).fetchall()
                assert sessions and all(user == name for (user,) in sessions), sessions
    finally:
        processes.stop_all()
        drop_databases_and_roles(postgres_url, list(names.values()))


@pytest.mark.parametrize("bad", ["0", "70000", "eighty"])
def test_run_distributed_refuses_a_port_that_is_not_one(tmp_path: Path, bad: str) -> None:
    env = environment(tmp_path, GATEWAY_PORT=bad, POSTGRES_ADMIN_URL="postgresql://postgres@127.0.0.1:1/postgres")
    done = subprocess.run(
        [PYTHON, "deploy/local.py", "prepare"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert f"GATEWAY_PORT: must be a port number, got '{bad}'" in done.stderr


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("postgres", "postgres: an administrator's role, not one for a service"),
        ('auth"; DROP DATABASE postgres; --', "AUTH_DATABASE_NAME: lower-case letters, digits and _"),
    ],
)
def test_run_distributed_never_takes_over_an_administrator_nor_a_strange_name(
    tmp_path: Path, postgres_url: str, name: str, refusal: str
) -> None:
    def administrators() -> list[tuple[object, ...]]:
        with psycopg.connect(postgres_url) as conn:
            return conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolsuper ORDER BY 1").fetchall()

    before = administrators()
    env = environment(tmp_path, POSTGRES_ADMIN_URL=postgres_url, AUTH_DATABASE_NAME=name)
    done = subprocess.run(
        [PYTHON, "deploy/local.py", "prepare"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert refusal in done.stderr
    assert administrators() == before  # no administrator's password changed


def test_run_distributed_says_so_when_a_database_was_migrated_as_another_role(
    tmp_path: Path, databases: DatabaseFactory, postgres_url: str
) -> None:
    url = databases.create("auth")
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(url) as conn:  # as the superuser, as the README's earlier examples did
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    env = environment(tmp_path, POSTGRES_ADMIN_URL=postgres_url, AUTH_DATABASE_NAME=name)
    try:
        done = subprocess.run(
            [PYTHON, "deploy/local.py", "prepare"], cwd=REPO, env=env, capture_output=True, text=True, check=False
        )
    finally:
        drop_databases_and_roles(postgres_url, [name])
    assert done.returncode != 0
    assert f"database {name}: its table alembic_version belongs to " in done.stderr
    assert "not to the service's role" in done.stderr
