"""Typed settings read from the environment.

Each service declares a msgspec Struct that extends :class:`ServiceSettings`. A field ``foo_bar``
is read from ``<PREFIX>_FOO_BAR`` first (``AUTH_DATABASE_URL``), then from ``FOO_BAR``, so one
environment can hold several services' databases while sharing ``JWT_SECRET`` and the like.
"""

import contextlib
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

Environment = Literal["development", "test", "production"]
JWTAlgorithm = Literal["HS256", "EdDSA", "RS256"]

# Secrets that appear in examples and older deployments; production refuses them.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "",
        "secret",
        "changeme",
        "change-me",
        "your-jwt-secret-key",
        "your-secure-api-key",
        "your-secret-key",
        "dev-secret",
        # Long enough to pass the length check: the earlier deployments' example files.
        "super_secret_jwt_key_change_in_production_12345",
        "your-jwt-secret-at-least-32-characters-long",
        "your-super-secure-api-key-at-least-32-characters-long",
    }
)
MAX_JWT_LEEWAY_SECONDS = 60


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


class ServiceSettings(msgspec.Struct, kw_only=True, frozen=True):
    env_prefix: ClassVar[str] = ""

    service_name: str = "service"
    environment: Environment = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: str = "data"
    database_url: str = ""
    redis_url: str = ""
    redis_namespace: str = "pyairtable"
    # Redis is an accelerator: a call slower than this fails, and after REDIS_BREAKER_FAILURES
    # failures in a row it is not called for REDIS_BREAKER_RESET_SECONDS (per-process fallbacks).
    redis_timeout_seconds: float = 0.05
    redis_breaker_failures: int = 5
    redis_breaker_reset_seconds: float = 3.0
    # A PostgreSQL fault answers 503 within about 2 s: a connection is made (or waited for in the
    # pool) within DB_CONNECT_TIMEOUT_SECONDS, a statement runs at most DB_STATEMENT_TIMEOUT_MS.
    db_connect_timeout_seconds: float = 1.0
    db_statement_timeout_ms: int = 1500
    db_pool_size: int = 10
    jwt_algorithm: JWTAlgorithm = "HS256"
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    # The signing key (auth service); outside production the verification key is derived from it.
    jwt_private_key_file: str = ""
    jwt_jwks_url: str = ""
    jwt_issuer: str = "pyairtable-auth"
    jwt_audience: str = "pyairtable-api"
    jwt_leeway_seconds: int = 30
    max_body_size: int = 1_048_576
    trusted_proxies: str = ""
    outbox_poll_seconds: float = 1.0
    # A message left unacknowledged this long is redelivered; after this many deliveries it is
    # moved to the dead-letter stream.
    event_reclaim_seconds: float = 30.0
    event_max_attempts: int = 5
    # A consumer forgets an event id this long after processing it (no redelivery comes that late);
    # its pruner runs every EVENT_DEDUP_PRUNE_SECONDS.
    event_dedup_retention_days: int = 30
    event_dedup_prune_seconds: float = 3600.0

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def redelivery_window_seconds(self) -> float:
        """How late a redelivery of an event can come: every attempt after a reclaim delay."""
        return self.event_reclaim_seconds * self.event_max_attempts

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [part.strip() for part in self.trusted_proxies.split(",") if part.strip()]

    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL: PostgreSQL through psycopg, else a SQLite file in DATA_DIR."""
        url = self.database_url or f"sqlite:///{self.data_path / (self.service_name + '.sqlite3')}"
        return normalise_database_url(url)

    def validate(self) -> None:
        """Checks that span fields; raises SettingsError naming the variable."""
        if not 0 <= self.jwt_leeway_seconds <= MAX_JWT_LEEWAY_SECONDS:
            raise SettingsError(f"JWT_LEEWAY_SECONDS: must be between 0 and {MAX_JWT_LEEWAY_SECONDS}")
        if self.max_body_size <= 0:
            raise SettingsError("MAX_BODY_SIZE: must be positive")
        if (
            self.event_dedup_retention_days < 1
            or self.event_dedup_retention_days * 86400 <= self.redelivery_window_seconds
        ):
            raise SettingsError(
                "EVENT_DEDUP_RETENTION_DAYS: must be at least 1 and longer than a redelivery can come"
                " (EVENT_RECLAIM_SECONDS * EVENT_MAX_ATTEMPTS)"
            )
        if self.event_dedup_prune_seconds <= 0:
            raise SettingsError("EVENT_DEDUP_PRUNE_SECONDS: must be positive")
        for name in ("redis_timeout_seconds", "redis_breaker_reset_seconds", "db_connect_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()}: must be positive")
        if self.redis_breaker_failures < 1:
            raise SettingsError("REDIS_BREAKER_FAILURES: must be at least 1")
        if self.db_statement_timeout_ms < 1:
            raise SettingsError("DB_STATEMENT_TIMEOUT_MS: must be positive")
        if self.jwt_algorithm == "HS256" and self.jwt_secret:
            check_secret("JWT_SECRET", self.jwt_secret, production=self.is_production)
        if self.is_production:
            if self.jwt_algorithm == "HS256" and not self.jwt_secret:
                raise SettingsError("JWT_SECRET: required when ENVIRONMENT=production")
            if self.jwt_algorithm != "HS256" and not (self.jwt_public_key_file or self.jwt_jwks_url):
                raise SettingsError("JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL: required when ENVIRONMENT=production")


def check_secret(name: str, value: str, *, production: bool, min_length: int = 32) -> None:
    if len(value.encode()) < min_length:
        raise SettingsError(f"{name}: must be at least {min_length} bytes long")
    if production and value.lower() in KNOWN_DEFAULT_SECRETS:
        raise SettingsError(f"{name}: a well-known default secret is refused in production")


def normalise_database_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Build ``cls`` from the environment (or ``environ``) plus explicit overrides.

    Raises SettingsError whose message starts with the offending variable's name.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}
    for field in msgspec.structs.fields(cls):
        for name in _candidate_names(field.name, cls.env_prefix):
            if name in environ:
                raw[field.name], source[field.name] = environ[name], name
                break
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_name_the_variable(str(exc), source)) from None
    try:
        settings.validate()
    except SettingsError as exc:
        raise SettingsError(_name_the_variable_set(str(exc), source)) from None
    return settings


def _candidate_names(field: str, prefix: str) -> list[str]:
    plain = field.upper()
    return [f"{prefix}_{plain}", plain] if prefix else [plain]


def _name_the_variable(message: str, source: dict[str, str]) -> str:
    match = re.search(r"at `\$\.(\w+)`", message)
    if not match:
        return message
    field = match.group(1)
    problem = message[: match.start()].rstrip(" -")
    return f"{source.get(field, field.upper())}: {problem}"


def _name_the_variable_set(message: str, source: dict[str, str]) -> str:
    """``ARGON2_MEMORY_KIB: ...`` becomes ``AUTH_ARGON2_MEMORY_KIB: ...`` when that one was set."""
    name, separator, problem = message.partition(": ")
    variable = source.get(name.lower())
    return f"{variable}{separator}{problem}" if separator and variable else message


def ensure_dev_secret(settings: ServiceSettings, filename: str = "jwt_secret") -> str:
    """The JWT secret: the configured one, or (outside production) one kept in DATA_DIR."""
    if settings.jwt_secret:
        return settings.jwt_secret
    if settings.is_production:
        raise SettingsError("JWT_SECRET: required when ENVIRONMENT=production")
    return dev_secret_file(settings, filename)


def dev_secret_file(settings: ServiceSettings, filename: str) -> str:
    """A random secret kept in DATA_DIR/filename (mode 0600), made on first use; development only."""
    path = settings.data_path / filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            _write_private(path, secrets.token_urlsafe(48))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
