import os
from typing import Any

from litestar import Litestar

from auth_service.app import create_app as create_auth_app
from auth_service.config import AuthSettings
from shared import migrations
from shared.events import InMemoryBus
from shared.settings import ServiceSettings, load_settings
from shared.stores import MemoryStore

SERVICES: list[tuple[str, type[ServiceSettings]]] = [("auth_service", AuthSettings)]
DEFAULT_PORT = 8080


def migrate_all() -> None:
    for package, settings_cls in SERVICES:
        migrations.upgrade(load_settings(settings_cls), package)


def create_app() -> Litestar:
    """Until the gateway exists, the platform's only public routes are the auth service's."""
    auth_settings = load_settings(AuthSettings)
    shared_parts: dict[str, Any] = {}
    if not auth_settings.redis_url:
        shared_parts = {"store": MemoryStore(), "bus": InMemoryBus()}
    return create_auth_app(auth_settings, **shared_parts)


def listen_address() -> tuple[str, int]:
    return os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", DEFAULT_PORT))
