"""docker-compose.phase1.yml would deploy safely: checked against the code, as tests/test_deploy.py
checks the Kubernetes manifests.

The file is interpolated the way Compose does it (``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``,
``$$``) from env.example, each empty secret given a value, and each service's environment is handed
to its own settings loader. No Docker engine is needed; where Compose v2 is installed, it validates
the file too. The init script that gives each service its PostgreSQL role runs for real.
"""

import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

import psycopg
import pytest
import yaml
from psycopg import sql

from gateway.config import GatewaySettings
from shared.registry import SERVICES
from shared.settings import ServiceSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.phase1.yml"
ENV_EXAMPLE = ROOT / "env.example"
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "init-databases.sh"
# Every service of the registry (shared/registry.py) and the gateway.
SETTINGS: dict[str, type[ServiceSettings]] = {entry.package: entry.settings() for entry in SERVICES} | {
    "gateway": GatewaySettings
}
WITH_DATABASE = [entry.package for entry in SERVICES]
PLACEHOLDERS = {"AIRTABLE_TOKEN": "patPlaceholder.0123456789abcdef"}
REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>.*))?", re.DOTALL)


class MissingVariable(Exception):
    """Compose's refusal: a ``${VAR:?message}`` whose variable is unset or empty."""


# --- Compose's interpolation -------------------------------------------------------------------------


def interpolate_text(text: str, environ: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return environ.get(match["named"], "")
        braced = BRACED.fullmatch(match["braced"])
        assert braced, f"not a variable Compose knows: ${{{match['braced']}}}"
        name, operator, argument = braced["name"], braced["operator"], braced["argument"]
        value = environ.get(name)
        unset_or_empty = not value
        missing = unset_or_empty if operator and operator.startswith(":") else value is None
        if operator in (":?", "?") and missing:
            raise MissingVariable(f"{name}: {argument}")
        if operator in (":-", "-") and missing:
            return argument
        if operator in (":+", "+"):
            return "" if missing else argument
        return value or ""

    return REFERENCE.sub(replace, text)


def interpolate(node: Any, environ: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_text(node, environ)
    if isinstance(node, dict):
        return {key: interpolate(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, environ) for item in node]
    return node


def strings_in(node: Any) -> Iterator[str]:
    """The strings Compose interpolates (values, not comments)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def referenced_variables() -> dict[str, str | None]:
    """Every variable the compose file reads, with its operator (``:?``, ``:-``, ... or None)."""
    found: dict[str, str | None] = {}
    for match in REFERENCE.finditer("\n".join(strings_in(yaml.safe_load(COMPOSE.read_text())))):
        if match["braced"] and (braced := BRACED.fullmatch(match["braced"])):
            found[braced["name"]] = braced["operator"]
        elif match["named"]:
            found[match["named"]] = None
    return found


def required_variables() -> set[str]:
    return {name for name, operator in referenced_variables().items() if operator in (":?", "?")}


def env_example() -> dict[str, str]:
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def filled_environment(*, with_optional_secrets: bool = True) -> dict[str, str]:
    """env.example as an operator fills it in: every required secret, and the optional ones or not."""
    environ = env_example()
    for name, value in environ.items():
        if not value and (with_optional_secrets or name in required_variables()):
            environ[name] = PLACEHOLDERS.get(name, secrets.token_hex(24))
    return environ


def compose(environ: dict[str, str]) -> dict[str, Any]:
    loaded: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE.read_text()), environ)
    return loaded


def platform_services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the platform's image: name → service."""
    image = project["services"]["gateway"]["image"]
    return {name: service for name, service in project["services"].items() if service.get("image") == image}


def settings_of(service: dict[str, Any]) -> ServiceSettings:
    package = service["command"][0]
    environ = {name: str(value) for name, value in service["environment"].items()}
    return load_settings(SETTINGS[package], environ)  # raises SettingsError naming a bad variable


def database_password_variable(package: str) -> str:
    return {
        "auth_service": "AUTH_DATABASE_PASSWORD",
        "user_service": "USERS_DATABASE_PASSWORD",
        "airtable_gateway": "AIRTABLE_DATABASE_PASSWORD",
        "analytics_service": "ANALYTICS_DATABASE_PASSWORD",
    }[package]


def init_script_databases() -> dict[str, str]:
    """Database (and role) name → the variable of its password, as init-databases.sh creates them."""
    calls = re.findall(
        r'^create_database "\$\{\w+_DATABASE_NAME:-(\w+)\}"\s*\\?\s*"\$\{(\w+_DATABASE_PASSWORD):\?',
        INIT_SCRIPT.read_text(),
        flags=re.MULTILINE,
    )
    return dict(calls)


# --- secrets ---------------------------------------------------------------------------------------


def test_every_variable_compose_reads_is_in_env_example_and_no_secret_has_a_value_there() -> None:
    example = env_example()
    assert set(referenced_variables()) <= set(example), "compose reads variables env.example does not name"
    for name in required_variables():
        assert example[name] == "", f"env.example gives the required {name} a value: a default secret"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines(), "an operator's .env could be committed"


@pytest.mark.parametrize("missing", sorted(required_variables()))
def test_compose_refuses_to_start_without_each_required_secret(missing: str) -> None:
    environ = filled_environment()
    compose(environ)  # complete: accepted
    environ[missing] = ""
    with pytest.raises(MissingVariable, match=f"{missing}: set {missing} in .env"):
        compose(environ)


def test_the_secrets_an_operator_must_set_are_the_ones_without_a_safe_default() -> None:
    assert required_variables() >= {
        "JWT_SECRET",
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        *(database_password_variable(package) for package in WITH_DATABASE),
    }


# --- each service's settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_optional_secrets", [True, False], ids=["all-secrets", "required-secrets-only"])
def test_every_platform_container_loads_its_production_settings(with_optional_secrets: bool) -> None:
    environ = filled_environment(with_optional_secrets=with_optional_secrets)
    project = compose(environ)
    for name, service in platform_services(project).items():
        settings = settings_of(service)
        assert settings.is_production, name
        redis = urlsplit(settings.redis_url)
        assert redis.password == environ["REDIS_PASSWORD"], f"{name}: its REDIS_URL carries no password"
        assert redis.hostname in project["services"] and redis.port == 6379, name


def test_each_service_connects_as_its_own_role_to_its_own_database() -> None:
    environ = filled_environment()
    project = compose(environ)
    created = init_script_databases()
    seen: dict[str, str] = {}
    for name, service in platform_services(project).items():
        package = service["command"][0]
        if package not in WITH_DATABASE:
            continue
        url = urlsplit(settings_of(service).database_url)
        database = url.path.lstrip("/")
        assert url.hostname == "postgres" and url.hostname in project["services"], name
        assert url.username == database, f"{name}: connects as {url.username}, not its database's own role"
        assert url.username != "postgres", f"{name}: connects as the superuser"
        assert url.password == environ[database_password_variable(package)], name
        assert created.get(database) == database_password_variable(package), f"{name}: init script disagrees"
        assert seen.setdefault(package, database) == database, f"{package}: two databases"
    assert sorted(seen) == sorted(WITH_DATABASE)
    assert len(set(seen.values())) == len(WITH_DATABASE), "two services share a database"
    assert sorted(created) == sorted(seen.values()), "the init script creates databases no service uses"


def test_the_postgres_service_hands_the_init_script_every_role_password() -> None:
    environ = filled_environment()
    postgres = compose(environ)["services"]["postgres"]
    mounted = [volume.split(":") for volume in postgres["volumes"] if isinstance(volume, str)]
    assert ["./deploy/postgres/init-databases.sh", "/docker-entrypoint-initdb.d/init-databases.sh", "ro"] in mounted
    for variable in init_script_databases().values():
        assert postgres["environment"][variable] == environ[variable], variable
    assert postgres["environment"]["POSTGRES_PASSWORD"] == environ["POSTGRES_PASSWORD"]


def test_redis_requires_the_password_every_service_sends() -> None:
    environ = filled_environment()
    redis = compose(environ)["services"]["redis"]
    assert redis["environment"]["REDIS_PASSWORD"] == environ["REDIS_PASSWORD"]
    assert '--requirepass "$REDIS_PASSWORD"' in " ".join(redis["command"])
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"]), "the healthcheck would be refused"


def test_the_gateway_routes_reach_the_compose_services_that_own_them() -> None:
    project = compose(filled_environment())
    services = platform_services(project)
    gateway = settings_of(services["gateway"])
    assert isinstance(gateway, GatewaySettings)
    owners = {"/api/v1/auth": "auth_service", "/api/v1/users": "user_service"}
    owners |= {"/api/v1/airtable": "airtable_gateway", "/api/v1/analytics": "analytics_service"}
    for prefix, package in owners.items():
        url = urlsplit(gateway.upstream_urls()[prefix])
        target = services.get(str(url.hostname))
        assert target is not None, f"{prefix}: no compose service {url.hostname}"
        assert target["command"] == [package, "serve"], prefix
        assert url.port == settings_of(target).port, f"{prefix}: {url.hostname} listens elsewhere"


# --- health and exposure ----------------------------------------------------------------------------


def test_healthchecks_ask_each_service_whether_it_is_ready_on_its_own_port() -> None:
    for name, service in platform_services(compose(filled_environment())).items():
        if service["command"][1:] != ["serve"]:
            continue
        probe = " ".join(service["healthcheck"]["test"])
        match = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", probe)
        assert match, f"{name}: no HTTP healthcheck"
        assert match[2] == "/ready", f"{name}: the healthcheck asks {match[2]}, not /ready"
        assert int(match[1]) == settings_of(service).port, name


def published_ports(project: dict[str, Any]) -> dict[str, list[str]]:
    return {name: service["ports"] for name, service in project["services"].items() if service.get("ports")}


@pytest.mark.parametrize("publish", [None, "from env.example"])
def test_only_the_gateway_is_published_and_only_on_the_hosts_loopback_by_default(publish: str | None) -> None:
    environ = filled_environment()
    if publish is None:
        del environ["GATEWAY_PUBLISH"]
    ports = published_ports(compose(environ))
    assert list(ports) == ["gateway"], "PostgreSQL, Redis and the services' /metrics stay on the compose network"
    assert ports["gateway"] == ["127.0.0.1:8080:8080"]


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0
    if shutil.which("docker")
    else True,
    reason="Docker Compose v2 (`docker compose`) is not installed",
)
def test_compose_v2_accepts_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in filled_environment().items()))
    checked = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not installed")
def test_compose_v1_accepts_all_but_the_top_level_name_which_the_documents_warn_of(tmp_path: Path) -> None:
    """Where only v1 is installed it still checks the rest of the file: services, interpolation, ..."""
    text = COMPOSE.read_text()
    assert re.search(r"^name: ", text, flags=re.MULTILINE)
    for document in ("README.md", "deploy/README.md"):
        assert "`docker-compose` v1 refuse" in (ROOT / document).read_text(), f"{document} does not warn"
    without_name = tmp_path / "docker-compose.yml"
    without_name.write_text(re.sub(r"^name: .*$", "", text, flags=re.MULTILINE))
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in filled_environment().items()))
    command = ["docker-compose", "--project-directory", str(ROOT), "--env-file", str(env_file)]
    checked = subprocess.run([*command, "-f", str(without_name), "config", "--quiet"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# --- the init script, for real ------------------------------------------------------------------------


def with_user(url: str, user: str, password: str | None, database: str) -> str:
    parts: SplitResult = urlsplit(url)
    credentials = quote(user) + (f":{quote(password, safe='')}" if password else "")
    netloc = f"{credentials}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


@pytest.fixture
def initialised(postgres_url: str) -> Iterator[dict[str, tuple[str, str]]]:
    """init-databases.sh run against the test server with names of this test's own:
    package → (database/role name, password). Dropped afterwards."""
    server = urlsplit(postgres_url)
    suffix = uuid.uuid4().hex[:8]
    names = {package: f"itest_{package}_{suffix}" for package in WITH_DATABASE}
    passwords = {package: secrets.token_hex(16) + "'\"$" for package in WITH_DATABASE}  # quotes survive
    environ = {
        "PATH": os.environ["PATH"],
        "PGHOST": server.hostname or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "PGUSER": server.username or "postgres",
    }
    if server.password:
        environ["PGPASSWORD"] = server.password
    for package in WITH_DATABASE:
        prefix = database_password_variable(package).removesuffix("_PASSWORD")
        environ[f"{prefix}_NAME"] = names[package]
        environ[f"{prefix}_PASSWORD"] = passwords[package]
    try:
        for _ in range(2):  # a second run (a restarted container) changes nothing and does not fail
            done = subprocess.run(["sh", str(INIT_SCRIPT)], env=environ, capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
        yield {package: (names[package], passwords[package]) for package in WITH_DATABASE}
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for name in names.values():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


needs_psql = pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")


@needs_psql
def test_the_init_script_gives_each_service_an_unprivileged_role_owning_its_database(
    postgres_url: str, initialised: dict[str, tuple[str, str]]
) -> None:
    with psycopg.connect(postgres_url) as conn:
        for package, (name, _) in initialised.items():
            row = conn.execute(
                "SELECT pg_get_userbyid(d.datdba), r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin"
                " FROM pg_database d JOIN pg_roles r ON r.rolname = %s WHERE d.datname = %s",
                (name, name),
            ).fetchone()
            assert row == (name, False, False, False, True), package


@needs_psql
def test_a_service_role_cannot_connect_to_another_services_database(
    postgres_url: str, initialised: dict[str, tuple[str, str]]
) -> None:
    (auth, auth_password), (users, _) = initialised["auth_service"], initialised["user_service"]
    with psycopg.connect(with_user(postgres_url, auth, auth_password, auth)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (auth,)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(with_user(postgres_url, auth, auth_password, users)).close()


@needs_psql
def test_each_service_migrates_its_database_as_its_own_role(
    postgres_url: str, initialised: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    for package, (name, password) in initialised.items():
        variable = f"{SETTINGS[package].env_prefix}_DATABASE_URL"
        own_url = with_user(postgres_url, name, password, name)
        environ = {"PATH": os.environ["PATH"], "DATA_DIR": str(tmp_path), variable: own_url}
        command = [sys.executable, "-m", package, "migrate"]
        done = subprocess.run(command, env=environ, cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{package}: {done.stderr[-2000:]}"
        with psycopg.connect(with_user(postgres_url, name, password, name)) as conn:
            owners = conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert owners == [(name,)], package
