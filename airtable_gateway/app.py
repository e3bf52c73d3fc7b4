from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import msgspec
from litestar import Litestar

from airtable_gateway.cache import ResponseCache
from airtable_gateway.client import AirtableClient, create_http_client
from airtable_gateway.config import AirtableSettings
from airtable_gateway.controllers import AirtableController, MirrorController, TokenController
from airtable_gateway.errors import EXCEPTION_HANDLERS
from airtable_gateway.scheduler import Limits, MemoryScheduler, RedisScheduler, Scheduler
from airtable_gateway.services import Upstream, UserTokens
from airtable_gateway.tokens import token_cipher
from shared.events import EventBus
from shared.service import create_service_app
from shared.settings import load_settings
from shared.stores import KeyValueStore

EMULATOR_URL = "http://airtable-emulator"
EMULATOR_TOKEN = "emulator-token"  # noqa: S105 (the in-process emulator's own token)


def create_app(
    settings: AirtableSettings | None = None,
    *,
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
) -> Litestar:
    """The Airtable gateway. With ``AIRTABLE_EMULATOR`` and no ``AIRTABLE_TOKEN`` (the embedded run
    mode's default) Airtable is the built-in emulator, called in process."""
    settings = settings or load_settings(AirtableSettings)

    @asynccontextmanager
    async def airtable_resources(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            api_settings, platform_token, transport = settings, settings.airtable_token, None
            if settings.airtable_emulator and not settings.airtable_token:
                from airtable_gateway.emulator.app import create_emulator_app

                transport = httpx.ASGITransport(app=create_emulator_app())
                api_settings = msgspec.structs.replace(settings, airtable_api_url=EMULATOR_URL)
                platform_token = EMULATOR_TOKEN
            client = AirtableClient(create_http_client(api_settings, transport))
            stack.push_async_callback(client.aclose)
            app.state.upstream = Upstream(
                settings,
                client,
                _scheduler(app, settings),
                ResponseCache(app.state.store, settings.cache_stale_seconds),
            )
            app.state.user_tokens = UserTokens(
                app.state.sessionmaker, token_cipher(settings), platform_token, settings.token_cache_seconds
            )
            yield

    return create_service_app(
        settings,
        title="PyAirtable Airtable gateway",
        route_handlers=[AirtableController, TokenController, MirrorController],
        lifespan=[airtable_resources],
        store=store,
        bus=bus,
        exception_handlers=EXCEPTION_HANDLERS,
    )


def _scheduler(app: Litestar, settings: AirtableSettings) -> Scheduler:
    limits = Limits(settings.airtable_rate_limit, settings.airtable_token_rate_limit, settings.airtable_rate_headroom)
    if app.state.redis is not None:
        return RedisScheduler(app.state.redis, settings.redis_namespace, limits)
    return MemoryScheduler(limits)
