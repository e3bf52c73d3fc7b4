"""``make run-distributed``: the platform as it is deployed, on this machine, with honcho.

``python deploy/local.py prepare`` connects to the local PostgreSQL as an administrator, creates
the four databases and one login role per service (the owner of its database, with a generated
password) if missing, runs every service's migrations as that role, and writes each process's
environment and a Procfile into DATA_DIR (secrets in files of mode 0600). ``start`` does that,
then ``honcho start``: the Airtable emulator, auth, users, the Airtable gateway, analytics and the
gateway, each its own process, logs prefixed per process, Ctrl-C stops them all.
``exec <process>`` is what the Procfile runs: one process with its own environment only.

Settings (environment): ``POSTGRES_ADMIN_URL`` (else ``PGHOST``/``PGPORT``/``PGUSER``; default
postgresql://postgres@127.0.0.1:5432/postgres), ``REDIS_URL`` (redis://127.0.0.1:6379/0),
``REDIS_NAMESPACE`` (pyairtable-local), ``DATA_DIR`` (data/distributed), the ports
``GATEWAY_PORT`` (8080), ``AUTH_PORT`` (8001), ``USERS_PORT`` (8002), ``AIRTABLE_GATEWAY_PORT``
(8003), ``ANALYTICS_PORT`` (8005), ``AIRTABLE_EMULATOR_PORT`` (8099), and the database names
``AUTH_DATABASE_NAME`` (pyairtable_auth), ``USERS_DATABASE_NAME`` (pyairtable_users),
``AIRTABLE_GATEWAY_DATABASE_NAME`` (pyairtable_airtable), ``ANALYTICS_DATABASE_NAME``
(pyairtable_analytics); each service's role is named after its database.

This script imports no part of the platform: it only starts it, as an operator would.
"""

import argparse
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from shared.registry import SERVICES, ServiceEntry

REPO = Path(__file__).resolve().parents[1]
# Only these variables of the caller's environment reach a process: its settings come from here.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "TZ")


DATABASE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Where the script's own secrets live (one JSON object, mode 0600), kept across runs.
SECRETS_FILE = "secrets.json"


def admin_url(environ: dict[str, str]) -> str:
    if url := environ.get("POSTGRES_ADMIN_URL"):
        return url
    host = environ.get("PGHOST", "127.0.0.1")
    port = environ.get("PGPORT", "5432")
    user = environ.get("PGUSER", "postgres")
    return f"postgresql://{quote(user)}@{host}:{port}/postgres"


def database_url(server_url: str, role: str, password: str, database: str) -> str:
    """``server_url`` with the service's own role, password and database instead of the admin's."""
    parts = urlsplit(server_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(role)}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(("postgresql", netloc, f"/{database}", parts.query, ""))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file made earlier with a wider mode is narrowed too
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def load_secrets(data_dir: Path) -> dict[str, str]:
    """The development secrets of this DATA_DIR, made on first use and kept (tokens stay valid)."""
    path = data_dir / SECRETS_FILE
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = ("jwt_secret", "api_key", "api_key_pepper", "airtable_token_encryption_key", "emulator_token")
    changed = False
    for name in wanted:
        if not stored.get(name):
            stored[name] = secrets.token_urlsafe(48)
            changed = True
    if changed:
        write_private(path, json.dumps(stored, indent=2))
    return stored


def role_password(data_dir: Path, stored: dict[str, str], role: str) -> str:
    key = f"role:{role}"
    if not stored.get(key):
        stored[key] = secrets.token_urlsafe(32)
        write_private(data_dir / SECRETS_FILE, json.dumps(stored, indent=2))
    return stored[key]


def ensure_database(conn: psycopg.Connection, database: str, role: str, password: str) -> None:
    """The role (login, with this password) and its database, owned by it; both made if missing."""
    found = conn.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if found and found[0]:
        raise SystemExit(f"{role}: an administrator's role, not one for a service; choose another database name")
    verb = "ALTER" if found else "CREATE"
    conn.execute(sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
    else:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(role)))


def refuse_tables_of_another_role(server_url: str, database: str, role: str) -> None:
    """A database migrated earlier as another role (the superuser) cannot be migrated by its own:
    say so, rather than fail half way through a migration."""
    with psycopg.connect(urlunsplit(urlsplit(server_url)._replace(path=f"/{database}")), connect_timeout=5) as conn:
        other = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')"
            " AND pg_get_userbyid(c.relowner) <> %s LIMIT 1",
            (role,),
        ).fetchone()
    if other:
        raise SystemExit(
            f"database {database}: its table {other[0]} belongs to {other[1]}, not to the service's role {role}; "
            "drop the database (it was made another way) or name another one"
        )


def port(environ: dict[str, str], variable: str, default: int) -> int:
    value = environ.get(variable, str(default))
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SystemExit(f"{variable}: must be a port number, got {value!r}")
    return int(value)


def database_name(environ: dict[str, str], service: ServiceEntry) -> str:
    variable = f"{service.env_prefix}_DATABASE_NAME"
    name = environ.get(variable, service.database)
    if not DATABASE_NAME.fullmatch(name):
        raise SystemExit(f"{variable}: lower-case letters, digits and _ (at most 63, a letter first), got {name!r}")
    return name


def common_env(environ: dict[str, str], data_dir: Path, stored: dict[str, str]) -> dict[str, str]:
    """What every process shares: the JWT secret, Redis and its namespace, DATA_DIR."""
    return {
        "ENVIRONMENT": "development",
        "DATA_DIR": str(data_dir),
        "JWT_SECRET": stored["jwt_secret"],
        "REDIS_URL": environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "REDIS_NAMESPACE": environ.get("REDIS_NAMESPACE", "pyairtable-local"),
        "LOG_LEVEL": environ.get("LOG_LEVEL", "INFO"),
        "PYTHONUNBUFFERED": "1",
        # Traces (README, "Traces"): the caller's OpenTelemetry variables reach every process.
        **{name: value for name, value in environ.items() if name.startswith("OTEL_")},
    }


def service_envs(environ: dict[str, str], data_dir: Path, stored: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each service's environment, its database and role made ready on the way."""
    server = admin_url(environ)
    common = common_env(environ, data_dir, stored)
    envs = {}
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"cannot reach PostgreSQL as an administrator ({urlsplit(server).hostname}): {exc}") from None
    with admin:
        for service in SERVICES:
            database = database_name(environ, service)
            password = role_password(data_dir, stored, database)
            ensure_database(admin, database, database, password)
            refuse_tables_of_another_role(server, database, database)
            envs[service.name] = {
                **common,
                f"{service.env_prefix}_DATABASE_URL": database_url(server, database, password, database),
                f"{service.env_prefix}_PORT": str(port(environ, f"{service.env_prefix}_PORT", service.port)),
            }
    envs["auth"].update(API_KEY=stored["api_key"], API_KEY_PEPPER=stored["api_key_pepper"])
    # The Airtable gateway reads the emulator, a process of its own, with the emulator's token; every
    # organisation may use its bases (no administrator's grants needed), as `make run` decides for
    # the emulator: a development setting the services refuse in production.
    envs["airtable"].update(
        AIRTABLE_API_URL=f"http://127.0.0.1:{port(environ, 'AIRTABLE_EMULATOR_PORT', 8099)}",
        AIRTABLE_TOKEN=stored["emulator_token"],
        AIRTABLE_TOKEN_ENCRYPTION_KEY=stored["airtable_token_encryption_key"],
        AIRTABLE_GRANT_ALL="write",
    )
    return envs


def process_specs(environ: dict[str, str], data_dir: Path, stored: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every process of the Procfile: its arguments to Python and its environment."""
    common = common_env(environ, data_dir, stored)
    emulator_port = port(environ, "AIRTABLE_EMULATOR_PORT", 8099)
    gateway = {**common, "GATEWAY_PORT": str(port(environ, "GATEWAY_PORT", 8080)), "API_KEY": stored["api_key"]}
    specs: dict[str, dict[str, Any]] = {
        "emulator": {
            "args": ["-m", "airtable_gateway", "emulator", "--port", str(emulator_port)],
            "env": {**common, "AIRTABLE_EMULATOR_TOKEN": stored["emulator_token"]},
        }
    }
    for service, env in zip(SERVICES, service_envs(environ, data_dir, stored).values(), strict=True):
        specs[service.name] = {"args": ["-m", service.package, "serve"], "env": env}
        gateway[service.url_variable] = f"http://127.0.0.1:{env[f'{service.env_prefix}_PORT']}"
    specs["gateway"] = {"args": ["-m", "gateway", "serve"], "env": gateway}
    return specs


def prepare(environ: dict[str, str]) -> Path:
    """Databases, roles, migrations, each process's environment and the Procfile; returns its path."""
    data_dir = Path(environ.get("DATA_DIR", "data/distributed")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    specs = process_specs(environ, data_dir, load_secrets(data_dir))
    for name, spec in specs.items():
        write_private(data_dir / "env" / f"{name}.json", json.dumps(spec, indent=2))
    for service in SERVICES:
        migrate(service, specs[service.name]["env"])
    procfile = data_dir / "Procfile"
    procfile.write_text(procfile_text(data_dir))
    return procfile


def migrate(service: ServiceEntry, env: dict[str, str]) -> None:
    print(f"migrating {service.package}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", service.package, "migrate"],
        cwd=REPO,
        env=process_env(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{service.package} migrate failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def procfile_text(data_dir: Path) -> str:
    run = f"exec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"
    where = f"--data-dir {shlex.quote(str(data_dir))}"
    names = ["emulator", *(service.name for service in SERVICES), "gateway"]
    lines = [f"{name}: {run} exec {name} {where}" for name in names]
    return "\n".join(lines) + "\n"


def process_env(env: dict[str, str]) -> dict[str, str]:
    """A process's environment: its own settings and the few variables a program needs to run."""
    return {name: os.environ[name] for name in INHERITED if name in os.environ} | env


def exec_process(data_dir: Path, name: str) -> None:
    """Replace this process with ``name`` (as prepared), so that honcho's signals reach it."""
    spec = json.loads((data_dir / "env" / f"{name}.json").read_text())
    command = [sys.executable, *spec["args"]]
    os.chdir(REPO)
    os.execve(sys.executable, command, process_env(spec["env"]))


def start(environ: dict[str, str]) -> None:
    procfile = prepare(environ)
    honcho = [sys.executable, "-m", "honcho", "start", "-f", str(procfile), "-d", str(REPO)]
    print(f"starting the platform (honcho, {procfile}); Ctrl-C stops it", flush=True)
    os.execv(sys.executable, honcho)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/local.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="databases, roles, migrations, environments and the Procfile")
    commands.add_parser("start", help="prepare, then honcho start")
    one = commands.add_parser("exec", help="run one process of the Procfile with its environment")
    one.add_argument("name", choices=["emulator", *(service.name for service in SERVICES), "gateway"])
    one.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    if args.command == "prepare":
        print(prepare(environ))
    elif args.command == "start":
        start(environ)
    else:
        exec_process(args.data_dir, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
