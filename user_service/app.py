from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import utcnow
from shared.events import Event, EventBus, EventConsumer
from shared.service import create_service_app
from shared.settings import load_settings
from shared.stores import KeyValueStore
from user_service.config import UserSettings
from user_service.controllers import UserController
from user_service.models import outbox, processed_events
from user_service.services import Clock, MembershipService, ProfileService

# Auth's events that carry the account: each one creates or refreshes the profile's copy.
ACCOUNT_EVENTS = (
    "user.registered",
    "user.email_verified",
    "user.email_changed",
    "user.logged_in",
    "user.account_changed",
)
# Auth's membership events: the users service keeps who belongs to which organisation, with the role.
MEMBERSHIP_EVENTS = (
    "organization.member_added",
    "organization.member_changed",
    "organization.member_removed",
    "organization.deleted",
)
GROUP = "users"
EVENTS = EventConsumer(group=GROUP, event_types=ACCOUNT_EVENTS + MEMBERSHIP_EVENTS, processed_events=processed_events)


def create_app(
    settings: UserSettings | None = None,
    *,
    clock: Clock = utcnow,
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
) -> Litestar:
    settings = settings or load_settings(UserSettings)

    @asynccontextmanager
    async def user_resources(app: Litestar) -> AsyncIterator[None]:
        async def apply_event(session: AsyncSession, event: Event) -> None:
            if event.type in MEMBERSHIP_EVENTS:
                await MembershipService(session).apply_event(event)
            else:
                await ProfileService(session, clock).apply_account_event(event)

        EVENTS.subscribe(app.state.bus, app.state.sessionmaker, apply_event)
        yield

    return create_service_app(
        settings,
        title="PyAirtable user service",
        route_handlers=[UserController],
        lifespan=[user_resources],
        store=store,
        bus=bus,
        consumer=EVENTS,
        outbox=outbox,
        state={"clock": clock},
    )
