from typing import Any

from litestar import Litestar

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewaySettings
from shared import migrations
from shared.events import InMemoryBus
from shared.settings import ServiceSettings, load_settings
from shared.stores import MemoryStore

# (package, settings, route prefix); each service keeps its own database.
SERVICES: list[tuple[str, type[ServiceSettings], str]] = [("auth_service", AuthSettings, "/api/v1/auth")]


def migrate_all() -> None:
    for package, settings_cls, _ in SERVICES:
        migrations.upgrade(load_settings(settings_cls), package)


def create_app(gateway_settings: GatewaySettings | None = None) -> Litestar:
    """The gateway with every service mounted in-process; one store and one bus for all of them
    (in-memory unless REDIS_URL is set), so a logout seen by auth is seen by the gateway."""
    gateway_settings = gateway_settings or load_settings(GatewaySettings)
    shared_parts: dict[str, Any] = {}
    if not gateway_settings.redis_url:
        shared_parts = {"store": MemoryStore(), "bus": InMemoryBus()}
    services = {"/api/v1/auth": create_auth_app(load_settings(AuthSettings), **shared_parts)}
    return create_gateway_app(gateway_settings, services=services, **shared_parts)
