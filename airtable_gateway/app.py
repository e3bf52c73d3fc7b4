import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import msgspec
from litestar import Litestar
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from airtable_gateway.cache import ResponseCache
from airtable_gateway.client import AirtableClient, create_http_client
from airtable_gateway.config import AirtableSettings
from airtable_gateway.controllers import AirtableController, GrantController, MirrorController, TokenController
from airtable_gateway.errors import EXCEPTION_HANDLERS
from airtable_gateway.models import outbox, processed_events
from airtable_gateway.scheduler import Limits, MemoryScheduler, RedisScheduler, ResilientScheduler, Scheduler
from airtable_gateway.services import ORGANIZATION_DELETED, Grants, Upstream, UserTokens, drop_organization_grants
from airtable_gateway.tokens import token_cipher
from shared.events import Event, EventBus, EventConsumer
from shared.service import create_service_app
from shared.settings import load_settings
from shared.stores import KeyValueStore, RedisBreaker, RedisStore
from shared.tracing import instrument_httpx

# auth's organisation.deleted: the organisation's grants go with it (applied once per event).
EVENTS = EventConsumer(group="airtable", event_types=(ORGANIZATION_DELETED,), processed_events=processed_events)
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
            http_client = create_http_client(api_settings, transport)
            if app.state.tracer_provider is not None:  # a CLIENT span per call to Airtable
                instrument_httpx(http_client, app.state.tracer_provider)
            client = AirtableClient(http_client)
            stack.push_async_callback(client.aclose)
            store: KeyValueStore = app.state.store
            scheduler: Scheduler = MemoryScheduler(_limits(settings))
            if app.state.redis is not None:
                scheduler = _resilient_scheduler(settings, app.state.redis, _breaker_of(store, settings))
            cache = ResponseCache(store, settings.cache_stale_seconds, settings.cache_revalidate_seconds)
            stack.push_async_callback(cache.aclose)
            app.state.upstream = Upstream(settings, client, scheduler, cache)
            lookup_seconds = settings.db_statement_timeout_ms / 1000
            app.state.user_tokens = UserTokens(
                app.state.sessionmaker,
                token_cipher(settings),
                platform_token,
                settings.token_cache_seconds,
                store,
                lookup_seconds,
            )
            app.state.grants = Grants(
                app.state.sessionmaker,
                settings.airtable_grant_all,
                settings.airtable_grant_cache_seconds,
                lookup_seconds,
            )

            async def apply_event(session: AsyncSession, event: Event) -> None:
                organization_id = uuid.UUID(str(event.data["organization_id"]))
                await drop_organization_grants(session, app.state.grants, organization_id)

            EVENTS.subscribe(app.state.bus, app.state.sessionmaker, apply_event)
            yield

    return create_service_app(
        settings,
        title="PyAirtable Airtable gateway",
        route_handlers=[AirtableController, TokenController, GrantController, MirrorController],
        lifespan=[airtable_resources],
        store=store,
        bus=bus,
        exception_handlers=EXCEPTION_HANDLERS,
        consumer=EVENTS,
        outbox=outbox,  # the audit events of grant changes
    )


def _limits(settings: AirtableSettings) -> Limits:
    return Limits(
        settings.airtable_rate_limit,
        settings.airtable_token_rate_limit,
        settings.airtable_rate_headroom,
        settings.airtable_fair_share_seconds,
    )


def _breaker_of(store: KeyValueStore, settings: AirtableSettings) -> RedisBreaker:
    """The store's Redis breaker (one view of Redis's health per process), else one of its own."""
    if isinstance(store.shared, RedisStore):
        return store.shared.breaker
    return RedisBreaker(settings.redis_breaker_failures, settings.redis_breaker_reset_seconds)


def _resilient_scheduler(settings: AirtableSettings, redis: Redis, breaker: RedisBreaker) -> ResilientScheduler:
    """Limits shared in Redis, behind the store's breaker; while Redis does not answer each
    replica keeps its part of them (``AIRTABLE_REPLICAS``) on its own."""
    limits = _limits(settings)
    shared = RedisScheduler(redis, settings.redis_namespace, limits)
    return ResilientScheduler(shared, MemoryScheduler(limits.divided(settings.airtable_replicas)), breaker)
