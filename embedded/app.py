import os
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Litestar

from airtable_gateway.config import AirtableSettings
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewaySettings
from shared import migrations
from shared.events import InMemoryBus
from shared.registry import SERVICES, ServiceEntry
from shared.settings import ServiceSettings, load_settings
from shared.stores import MemoryStore
from shared.usage import InMemoryUsageChannel


def migrate_all() -> None:
    """Every in-process service's migrations (each its own database); not those proxied by URL."""
    for entry in SERVICES:
        if entry.url_variable not in os.environ:
            migrations.upgrade(load_settings(entry.settings()), entry.package)


def airtable_settings(environ: Mapping[str, str], emulated: dict[str, Any]) -> AirtableSettings:
    """With the emulator (no AIRTABLE_TOKEN), every organisation may read and write its bases, so
    that a newcomer's ``make run`` works without a platform administrator's grants; never in
    production, nor when AIRTABLE_GRANT_ALL says otherwise."""
    settings = load_settings(AirtableSettings, environ, **emulated)
    uses_emulator = settings.airtable_emulator and not settings.airtable_token
    if uses_emulator and not settings.is_production and "AIRTABLE_GRANT_ALL" not in environ:
        settings = msgspec.structs.replace(settings, airtable_grant_all="write")
    return settings


def create_app(gateway_settings: GatewaySettings | None = None, environ: Mapping[str, str] | None = None) -> Litestar:
    """The gateway with every service mounted in-process, except those whose URL is configured
    (``AUTH_SERVICE_URL``, ...): those are proxied over HTTP as in production. One store and one
    bus for all in-process parts (in-memory unless REDIS_URL is set), so a logout seen by auth is
    seen by the gateway."""
    environ = os.environ if environ is None else environ
    gateway_settings = gateway_settings or load_settings(GatewaySettings)
    shared_parts: dict[str, Any] = {}
    usage = None  # with Redis, the gateway's usage records go through its stream
    if not gateway_settings.redis_url:
        shared_parts = {"store": MemoryStore(), "bus": InMemoryBus()}
        usage = InMemoryUsageChannel()
    urls = gateway_settings.upstream_urls()
    # Without AIRTABLE_TOKEN the Airtable gateway talks to the built-in emulator, in process.
    emulated = {} if "AIRTABLE_EMULATOR" in environ else {"airtable_emulator": True}

    def settings_of(entry: ServiceEntry) -> ServiceSettings:
        if entry.package == "airtable_gateway":
            return airtable_settings(environ, emulated)
        settings: ServiceSettings = load_settings(entry.settings(), environ)
        return settings

    def in_process(entry: ServiceEntry) -> Litestar:
        parts = {**shared_parts, "usage": usage} if entry.package == "analytics_service" else shared_parts
        app: Litestar = entry.app_factory()(settings_of(entry), **parts)
        return app

    # EXTRA_ROUTES are proxied here as in production (one that names a service's prefix replaces it).
    proxied = {prefix: urls[prefix] for prefix, _ in gateway_settings.extra_route_pairs}
    services = {}
    for entry in SERVICES:
        if entry.url_variable in environ:
            proxied.setdefault(entry.prefix, urls[entry.prefix])
        elif entry.prefix not in proxied:
            services[entry.prefix] = in_process(entry)
    usage = usage if "/api/v1/analytics" in services else None
    return create_gateway_app(gateway_settings, services=services, proxied=proxied, **shared_parts, usage=usage)
