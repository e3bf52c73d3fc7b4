import contextlib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec

from shared.registry import SERVICES
from shared.settings import ServiceSettings, SettingsError, check_secret

_EXTRA_PREFIX = re.compile(r"^/api/v1(/[A-Za-z0-9._~-]+)+$")

# Where each service of the registry is: one setting per service (AUTH_SERVICE_URL, ...), made from
# shared/registry.py so that a new service needs no edit here.
if TYPE_CHECKING:
    _WithServiceUrls = ServiceSettings
else:
    _WithServiceUrls = msgspec.defstruct(
        "_WithServiceUrls",
        [(entry.url_variable.lower(), str, entry.default_url) for entry in SERVICES],
        bases=(ServiceSettings,),
        kw_only=True,
        frozen=True,
    )


class GatewaySettings(_WithServiceUrls, kw_only=True, frozen=True):
    env_prefix: ClassVar[str] = "GATEWAY"

    service_name: str = "gateway"
    port: int = 8080
    # Worker processes serving the port (uvicorn's supervisor): a whole number, or "auto" for the CPUs
    # this process may use. More than one needs REDIS_URL, where the workers share their state.
    workers: str = "1"
    # Extra or overriding routes: "prefix=url,prefix=url", e.g. "/api/v1/billing=http://billing:8006".
    extra_routes: str = ""
    connect_timeout: float = 2.0
    request_timeout: float = 30.0
    # The longest wait for the next piece of a request body (a client that stalls mid-body → 408).
    client_body_timeout: float = 15.0
    upstream_pool_size: int = 200
    retry_idempotent: bool = True
    breaker_failures: int = 5
    breaker_reset_seconds: float = 10.0
    rate_limit_per_minute: int = 100
    rate_limit_burst: int = 20
    auth_rate_limit_per_minute: int = 20
    auth_rate_limit_burst: int = 5
    rate_limit_key: Literal["ip", "user"] = "ip"
    rate_limit_redis_timeout: float = 0.05
    # IPv6 clients are limited per network of this many bits: one subscriber holds a whole /64.
    rate_limit_ipv6_prefix: int = 64
    cors_origins: str = ""
    cors_allow_credentials: bool = True
    access_log: bool = True
    openapi_cache_seconds: float = 60.0
    # The older platform service's clients send X-API-Key on its routes (/auth/*, /login, ...).
    api_key: str = ""
    require_api_key: bool = True
    # How long a key's check at the auth service is trusted: the longest a revoked key keeps working
    # when Redis (its revocation mark) cannot be read.
    api_key_cache_seconds: float = 4.0

    def validate(self) -> None:
        super().validate()
        if self.rate_limit_per_minute <= 0 or self.auth_rate_limit_per_minute <= 0:
            raise SettingsError("RATE_LIMIT_PER_MINUTE: must be positive")
        if self.client_body_timeout <= 0:
            raise SettingsError("CLIENT_BODY_TIMEOUT: must be positive")
        if self.rate_limit_burst < 1 or self.auth_rate_limit_burst < 1:
            raise SettingsError("RATE_LIMIT_BURST: must be at least 1")
        if not 1 <= self.rate_limit_ipv6_prefix <= 128:
            raise SettingsError("RATE_LIMIT_IPV6_PREFIX: must be between 1 and 128")
        if "*" in self.cors_origin_list and self.cors_allow_credentials:
            raise SettingsError("CORS_ORIGINS: '*' cannot be combined with credentials; list the origins")
        if self.api_key:
            check_secret("API_KEY", self.api_key, production=self.is_production, min_length=16)
        elif self.is_production and self.require_api_key:
            raise SettingsError("API_KEY: required when REQUIRE_API_KEY=true in production")
        if not 0 <= self.api_key_cache_seconds <= 5:
            raise SettingsError("API_KEY_CACHE_SECONDS: must be between 0 and 5")
        self._check_extra_routes()
        self._check_workers()

    def _check_workers(self) -> None:
        """A whole number ≥ 1 or ``auto``; several workers only with Redis: rate limits, revocations
        and idempotency keys are otherwise each process's own, and N workers would grant N times a
        client's limit and let a retry run twice."""
        if self.workers.strip().lower() != "auto" and not (self.workers.strip().isdigit() and int(self.workers) >= 1):
            raise SettingsError(f"WORKERS: {self.workers[:20]!r} is not a whole number of at least 1 or 'auto'")
        if self.worker_count > 1 and not self.redis_url:
            raise SettingsError(
                f"WORKERS: {self.worker_count} workers need REDIS_URL, where they share rate limits, revocations"
                " and idempotency keys (in memory each worker would keep its own); set REDIS_URL or run one worker"
            )

    @property
    def worker_count(self) -> int:
        """How many worker processes ``python -m gateway serve`` runs."""
        if self.workers.strip().lower() == "auto":
            return available_cpus()
        return int(self.workers)

    def _check_extra_routes(self) -> None:
        """Each item ``/api/v1/<segments>=http(s)://host[:port][/path]``, each prefix once: a typo
        refused at start-up rather than a route that silently goes nowhere."""
        seen: set[str] = set()
        for item in filter(str.strip, self.extra_routes.split(",")):
            prefix, equals, url = (part.strip() for part in item.partition("="))
            prefix = prefix.rstrip("/")
            if not equals or not _EXTRA_PREFIX.match(prefix) or {".", ".."} & set(prefix.split("/")):
                raise SettingsError(
                    f"EXTRA_ROUTES: {item.strip()[:80]!r} is not /api/v1/<segment>[/...]=<URL> (segments of"
                    " letters, digits, '.', '_', '~' and '-')"
                )
            parsed = urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
                raise SettingsError(f"EXTRA_ROUTES: the URL of {prefix} must be http(s)://host[:port][/path]")
            if prefix in seen:
                raise SettingsError(f"EXTRA_ROUTES: {prefix} is given twice")
            seen.add(prefix)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def extra_route_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for item in self.extra_routes.split(","):
            if item.strip():
                prefix, _, url = item.partition("=")
                pairs.append((prefix.strip().rstrip("/"), url.strip()))
        return pairs

    def upstream_urls(self) -> dict[str, str]:
        """Route prefix → upstream base URL."""
        routes: dict[str, str] = {entry.prefix: getattr(self, entry.url_variable.lower()) for entry in SERVICES}
        routes.update(dict(self.extra_route_pairs))
        return {prefix: url.rstrip("/") for prefix, url in routes.items() if url}


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use, at least 1: its affinity (``taskset``, a cpuset), capped by a
    container's CPU quota (cgroup v2 ``cpu.max``, Kubernetes ``limits.cpu``) rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    return max(1, cpus)
