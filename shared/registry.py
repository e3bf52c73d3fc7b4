"""The platform's services, declared once.

The gateway's upstream settings and public routes, the embedded composition, ``make run-<service>``,
``make run-distributed``, the architecture test and the Compose and Kubernetes consistency tests all
read this list. Adding a service is its package plus one entry here (the recipe is in
docs/ARCHITECTURE.md, "Add a service").

Plain data and the standard library only: the gateway and the Makefile read it without importing
any service (services never import each other; :meth:`ServiceEntry.settings` and
:meth:`ServiceEntry.app_factory` import a service's module only when called, by the embedded
composition and the tests).
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class ServiceEntry:
    name: str  # its segment under /api/v1, its process's name and SERVICE_NAME
    package: str  # `python -m <package>` runs it
    port: int
    env_prefix: str  # its settings' variables: <ENV_PREFIX>_DATABASE_URL, <ENV_PREFIX>_PORT, ...
    database: str  # its PostgreSQL database's conventional name
    settings_class: str  # "module:Class", a ServiceSettings
    # Anonymous routes that take a credential or an address: the gateway's strict rate-limit policy.
    credential_routes: frozenset[str] = frozenset()
    # Other routes the gateway lets through without a token, (method, path).
    public_routes: frozenset[tuple[str, str]] = frozenset()

    @property
    def prefix(self) -> str:
        return f"{API_PREFIX}/{self.name}"

    @property
    def url_variable(self) -> str:
        """The gateway's variable for where the service is (``AUTH_SERVICE_URL``, ...)."""
        return f"{self.package.upper()}_URL"

    @property
    def default_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> type[Any]:
        settings_class: type[Any] = _load(self.settings_class)
        return settings_class

    def app_factory(self) -> Callable[..., Any]:
        """Every service's ``create_app(settings, **parts) -> Litestar``, in its ``app.py``."""
        factory: Callable[..., Any] = _load(f"{self.package}.app:create_app")
        return factory


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


AUTH = f"{API_PREFIX}/auth"

SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry(
        name="auth",
        package="auth_service",
        port=8001,
        env_prefix="AUTH",
        database="pyairtable_auth",
        settings_class="auth_service.config:AuthSettings",
        credential_routes=frozenset(
            f"{AUTH}/{route}"
            for route in (
                "register",
                "login",
                "login/mfa",
                "refresh",
                "password/forgot",
                "password/reset",
                "email/verify",
                "email/verify/resend",
            )
        ),
        public_routes=frozenset(
            {
                ("GET", f"{AUTH}/.well-known/jwks.json"),
                # A refresh token alone signs its session out (RFC 7009); a bearer sent along is
                # verified by the auth service, revocations included.
                ("POST", f"{AUTH}/logout"),
            }
        ),
    ),
    ServiceEntry(
        name="users",
        package="user_service",
        port=8002,
        env_prefix="USERS",
        database="pyairtable_users",
        settings_class="user_service.config:UserSettings",
    ),
    ServiceEntry(
        name="airtable",
        package="airtable_gateway",
        port=8003,
        env_prefix="AIRTABLE_GATEWAY",
        database="pyairtable_airtable",
        settings_class="airtable_gateway.config:AirtableSettings",
    ),
    ServiceEntry(
        name="analytics",
        package="analytics_service",
        port=8005,
        env_prefix="ANALYTICS",
        database="pyairtable_analytics",
        settings_class="analytics_service.config:AnalyticsSettings",
    ),
)


def by_package(package: str) -> ServiceEntry:
    return next(entry for entry in SERVICES if entry.package == package)


if __name__ == "__main__":  # the Makefile's list of packages: `python3 -m shared.registry`
    print(" ".join(entry.package for entry in SERVICES))
