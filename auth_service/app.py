from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from auth_service.config import AuthSettings
from auth_service.controllers import AuthController
from auth_service.models import outbox
from auth_service.passwords import Passwords
from auth_service.services import Clock
from auth_service.throttle import Throttle
from auth_service.tokens import TokenIssuer
from shared.db import utcnow
from shared.events import EventBus
from shared.outbox import OutboxRelay
from shared.service import create_service_app
from shared.settings import load_settings
from shared.stores import KeyValueStore


def create_app(
    settings: AuthSettings | None = None,
    *,
    clock: Clock = utcnow,
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
) -> Litestar:
    settings = settings or load_settings(AuthSettings)

    @asynccontextmanager
    async def auth_resources(app: Litestar) -> AsyncIterator[None]:
        app.state.issuer = TokenIssuer(settings)
        app.state.passwords = Passwords(settings)
        await app.state.passwords.prepare()
        app.state.throttle = Throttle(app.state.store, settings)
        relay = OutboxRelay(app.state.sessionmaker, outbox, app.state.bus, settings.outbox_poll_seconds)
        app.state.outbox_relay = relay
        relay.start()
        try:
            yield
        finally:
            await relay.stop()

    return create_service_app(
        settings,
        title="PyAirtable auth service",
        route_handlers=[AuthController],
        lifespan=[auth_resources],
        store=store,
        bus=bus,
        state={"clock": clock},
    )
