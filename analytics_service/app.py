import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from analytics_service.config import AnalyticsSettings
from analytics_service.controllers import AnalyticsController
from analytics_service.models import processed_events
from analytics_service.services.audit import apply_audit_event
from analytics_service.services.common import Clock
from analytics_service.workers import UsagePipeline, periodic_purge
from shared.audit import AUDIT_EVENT
from shared.db import utcnow
from shared.events import EventBus, EventConsumer
from shared.service import create_service_app
from shared.settings import load_settings
from shared.stores import KeyValueStore, create_redis
from shared.usage import RedisUsageConsumer, UsageConsumer

USAGE_BLOCK_SECONDS = 1.0
GROUP = "analytics"
# The services' audit events, kept in the audit log (GET /api/v1/analytics/audit).
EVENTS = EventConsumer(group=GROUP, event_types=(AUDIT_EVENT,), processed_events=processed_events)


def create_app(
    settings: AnalyticsSettings | None = None,
    *,
    clock: Clock = utcnow,
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
    usage: UsageConsumer | None = None,
) -> Litestar:
    """The analytics service. ``usage`` is the in-memory channel the gateway publishes to (embedded
    mode); without it, usage records are read from the Redis stream when REDIS_URL is set."""
    settings = settings or load_settings(AnalyticsSettings)

    @asynccontextmanager
    async def analytics_resources(app: Litestar) -> AsyncIterator[None]:
        consumer, redis = usage, None
        if consumer is None and settings.redis_url:
            # A client of its own: its reads block for a second, longer than the shared client's timeout.
            redis = create_redis(settings, timeout=USAGE_BLOCK_SECONDS + 2)
            consumer = RedisUsageConsumer(
                redis,
                settings.redis_namespace,
                consumer=f"{settings.service_name}-{socket.gethostname()}-{os.getpid()}",
                reclaim_after_seconds=settings.usage_reclaim_seconds,
            )
        pipeline = None
        if consumer is not None and settings.usage_consumer_enabled:
            pipeline = UsagePipeline(
                consumer, app.state.sessionmaker, clock, settings.usage_read_count, USAGE_BLOCK_SECONDS
            )
            pipeline.start()
        app.state.usage_pipeline = pipeline
        EVENTS.subscribe(app.state.bus, app.state.sessionmaker, apply_audit_event)
        purger = periodic_purge(app.state.sessionmaker, settings, clock)
        purger.start()
        try:
            yield
        finally:
            await purger.stop()
            if pipeline is not None:
                await pipeline.stop()
            if redis is not None:
                await redis.aclose()

    return create_service_app(
        settings,
        title="PyAirtable analytics service",
        route_handlers=[AnalyticsController],
        lifespan=[analytics_resources],
        store=store,
        bus=bus,
        consumer=EVENTS,
        state={"clock": clock},
    )
