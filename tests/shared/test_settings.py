"""Settings come from the environment and a bad one is named before anything starts."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from auth_service.config import MIN_ARGON2_MEMORY_KIB, AuthSettings
from shared.settings import (
    ServiceSettings,
    SettingsError,
    ensure_dev_secret,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "k" * 48


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"AUTH_PORT": "abc"}, "AUTH_PORT"),
        ({"PORT": "8001", "AUTH_PORT": "abc"}, "AUTH_PORT"),
        ({"ENVIRONMENT": "staging"}, "ENVIRONMENT"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM"),
        ({"AUTH_ACCESS_TOKEN_TTL": "15m"}, "AUTH_ACCESS_TOKEN_TTL"),
        ({"REDIS_TIMEOUT_SECONDS": "fast"}, "REDIS_TIMEOUT_SECONDS"),
    ],
)
def test_a_malformed_value_is_named(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(AuthSettings, environ)
    assert str(error.value).startswith(f"{variable}: "), str(error.value)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"AUTH_ARGON2_MEMORY_KIB": "1024"}, "AUTH_ARGON2_MEMORY_KIB"),
        ({"ARGON2_MEMORY_KIB": "1024"}, "ARGON2_MEMORY_KIB"),
        ({"AUTH_JWT_LEEWAY_SECONDS": "3600"}, "AUTH_JWT_LEEWAY_SECONDS"),
        ({"JWT_LEEWAY_SECONDS": "-1"}, "JWT_LEEWAY_SECONDS"),
        ({"AUTH_EVENT_DEDUP_RETENTION_DAYS": "0"}, "AUTH_EVENT_DEDUP_RETENTION_DAYS"),
        # Redeliveries may come for 5 x 1 day: forgetting ids after 1 day would apply some twice.
        ({"EVENT_DEDUP_RETENTION_DAYS": "1", "EVENT_RECLAIM_SECONDS": "86400"}, "EVENT_DEDUP_RETENTION_DAYS"),
        ({"EVENT_DEDUP_PRUNE_SECONDS": "0"}, "EVENT_DEDUP_PRUNE_SECONDS"),
        ({"REDIS_TIMEOUT_SECONDS": "0"}, "REDIS_TIMEOUT_SECONDS"),
        ({"AUTH_REDIS_BREAKER_FAILURES": "0"}, "AUTH_REDIS_BREAKER_FAILURES"),
        ({"REDIS_BREAKER_RESET_SECONDS": "-1"}, "REDIS_BREAKER_RESET_SECONDS"),
        ({"DB_CONNECT_TIMEOUT_SECONDS": "0"}, "DB_CONNECT_TIMEOUT_SECONDS"),
        ({"DB_STATEMENT_TIMEOUT_MS": "0"}, "DB_STATEMENT_TIMEOUT_MS"),
    ],
)
def test_an_out_of_range_value_names_the_variable_that_was_set(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(AuthSettings, environ)
    assert str(error.value).startswith(f"{variable}: "), str(error.value)


def test_values_are_read_and_converted() -> None:
    settings = load_settings(
        AuthSettings,
        {"PORT": "9000", "REDIS_TIMEOUT_SECONDS": "0.25", "ENVIRONMENT": "test", "ARGON2_PARALLELISM": "2"},
    )
    assert settings.port == 9000
    assert settings.redis_timeout_seconds == 0.25
    assert settings.environment == "test"
    assert settings.argon2_parallelism == 2


def test_defaults_work_without_any_environment() -> None:
    settings = load_settings(AuthSettings, {})
    assert settings.port == 8001
    assert settings.service_name == "auth"
    assert settings.environment == "development"


def test_dependency_timeouts_default_to_answers_within_the_targets() -> None:
    """Redis at most 50 ms a call; a PostgreSQL fault answered within 2 s: a connection waited for
    in the pool or made (below libpq's 2 s floor: the kernel bounds it), a statement cancelled."""
    settings = load_settings(AuthSettings, {})
    assert settings.redis_timeout_seconds <= 0.05
    assert settings.db_connect_timeout_seconds < 2
    assert settings.db_statement_timeout_ms < 2000


def test_prefixed_variables_win_over_plain_ones() -> None:
    settings = load_settings(
        AuthSettings,
        {
            "PORT": "9000",
            "AUTH_PORT": "9001",
            "DATABASE_URL": "postgresql://db/shared",
            "AUTH_DATABASE_URL": "postgresql://db/pyairtable_auth",
            "JWT_ISSUER": "shared-issuer",
        },
    )
    assert settings.port == 9001
    assert settings.database_url == "postgresql://db/pyairtable_auth"
    assert settings.jwt_issuer == "shared-issuer"  # no prefixed one: the plain one applies


def test_another_services_prefix_is_ignored() -> None:
    settings = load_settings(AuthSettings, {"USERS_PORT": "9999"})
    assert settings.port == 8001


def test_database_urls_are_normalised_for_the_async_drivers(tmp_path: Path) -> None:
    postgres = load_settings(ServiceSettings, {"DATABASE_URL": "postgres://u@db:5432/app"})
    assert postgres.sqlalchemy_url() == "postgresql+psycopg://u@db:5432/app"
    sqlite = load_settings(ServiceSettings, {"DATA_DIR": str(tmp_path), "SERVICE_NAME": "users"})
    assert sqlite.sqlalchemy_url() == f"sqlite+aiosqlite:///{tmp_path}/users.sqlite3"


# -- production refuses weak or missing secrets ------------------------------------------------


def test_production_requires_a_jwt_secret() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(AuthSettings, {"ENVIRONMENT": "production"})
    assert str(error.value).startswith("JWT_SECRET: ")


@pytest.mark.parametrize("environment", ["production", "development"])
def test_a_short_jwt_secret_is_refused(environment: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(AuthSettings, {"ENVIRONMENT": environment, "JWT_SECRET": "s" * 31})
    assert str(error.value).startswith("JWT_SECRET: ")


@pytest.mark.parametrize(
    "secret",
    [
        "your-jwt-secret-key",
        "changeme",
        # Placeholders long enough to pass a length check, from the earlier deployments' examples.
        "super_secret_jwt_key_change_in_production_12345",
        "your-jwt-secret-at-least-32-characters-long",
        "YOUR-JWT-SECRET-AT-LEAST-32-CHARACTERS-LONG",
    ],
)
def test_production_refuses_a_well_known_default_secret(secret: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(AuthSettings, {"ENVIRONMENT": "production", "JWT_SECRET": secret})
    assert str(error.value).startswith("JWT_SECRET: ")


def test_production_accepts_a_strong_secret() -> None:
    settings = load_settings(AuthSettings, {"ENVIRONMENT": "production", "JWT_SECRET": GOOD_SECRET})
    assert settings.is_production
    assert ensure_dev_secret(settings) == GOOD_SECRET


def test_production_with_asymmetric_keys_requires_a_public_key_or_jwks() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(AuthSettings, {"ENVIRONMENT": "production", "JWT_ALGORITHM": "EdDSA"})
    assert "JWT_PUBLIC_KEY_FILE" in str(error.value)


def test_development_generates_a_private_secret_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = load_settings(ServiceSettings, {"DATA_DIR": str(data_dir)})
    first = ensure_dev_secret(settings)
    secret_file = data_dir / "jwt_secret"
    assert secret_file.read_text() == first
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(first.encode()) >= 32
    again = ensure_dev_secret(load_settings(ServiceSettings, {"DATA_DIR": str(data_dir)}))
    assert again == first
    other_dir = ensure_dev_secret(load_settings(ServiceSettings, {"DATA_DIR": str(tmp_path / "other")}))
    assert other_dir != first


def test_production_never_generates_a_secret(tmp_path: Path) -> None:
    settings = ServiceSettings(environment="production", data_dir=str(tmp_path))
    with pytest.raises(SettingsError):
        ensure_dev_secret(settings)
    assert not (tmp_path / "jwt_secret").exists()


# -- argon2 minimums ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ARGON2_MEMORY_KIB", str(MIN_ARGON2_MEMORY_KIB - 1)),
        ("ARGON2_TIME_COST", "1"),
        ("ARGON2_PARALLELISM", "0"),
    ],
)
def test_argon2_below_the_minimum_is_refused(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(AuthSettings, {variable: value})
    assert str(error.value).startswith(f"{variable}: ")


def test_argon2_at_the_minimum_is_accepted() -> None:
    settings = load_settings(AuthSettings, {"ARGON2_MEMORY_KIB": str(MIN_ARGON2_MEMORY_KIB), "ARGON2_TIME_COST": "2"})
    assert settings.argon2_memory_kib == MIN_ARGON2_MEMORY_KIB


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AUTH_PORT", "abc"), ("ARGON2_MEMORY_KIB", "1024"), ("ENVIRONMENT", "production")],
)
def test_serve_with_a_bad_variable_exits_with_status_2_naming_it(variable: str, value: str, tmp_path: Path) -> None:
    environ = {
        name: content
        for name, content in os.environ.items()
        if name in ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")
    }
    # Everything else valid, so only the bad variable can stop the start-up; nothing is listening.
    environ |= {"DATA_DIR": str(tmp_path), "AUTH_HOST": "127.0.0.1", "PYTHONPATH": str(REPO_ROOT), variable: value}
    completed = subprocess.run(
        [sys.executable, "-m", "auth_service", "serve"],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    expected = "JWT_SECRET" if variable == "ENVIRONMENT" else variable
    assert completed.returncode == 2, completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr
