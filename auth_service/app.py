import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.api_keys import KeyIntrospectionController, KeySecrets, PersonalKeyController, ServiceKeyController
from auth_service.config import AuthSettings
from auth_service.controllers import (
    AccountAdminController,
    AccountCreationController,
    AuthController,
    TwoFactorController,
)
from auth_service.deps import auth_service, provide_client
from auth_service.models import mail_outbox, outbox, processed_events
from auth_service.organizations import (
    InvitationController,
    OrganizationController,
    OrganizationServiceKeyController,
)
from auth_service.passwords import Passwords
from auth_service.services import PASSWORD_RESET_REQUESTED, VERIFICATION_REQUESTED, Clock
from auth_service.throttle import Throttle
from auth_service.tokens import TokenIssuer
from auth_service.two_factor import secret_cipher
from shared.db import utcnow
from shared.events import Event, EventBus, EventConsumer
from shared.mail import Mailer, MailRelay, create_mailer
from shared.service import create_service_app
from shared.settings import load_settings
from shared.stores import KeyValueStore

logger = logging.getLogger("auth_service")
# Events this service applies, each once (their ids go into processed_events): the users' and its
# own requests for mail.
EVENTS = EventConsumer(
    group="auth",
    event_types=("user.deleted", PASSWORD_RESET_REQUESTED, VERIFICATION_REQUESTED),
    processed_events=processed_events,
)


def create_app(
    settings: AuthSettings | None = None,
    *,
    clock: Clock = utcnow,
    store: KeyValueStore | None = None,
    bus: EventBus | None = None,
    mailer: Mailer | None = None,
) -> Litestar:
    settings = settings or load_settings(AuthSettings)
    mailer = mailer or create_mailer(settings.smtp_url, settings.smtp_ca_file, production=settings.is_production)

    @asynccontextmanager
    async def auth_resources(app: Litestar) -> AsyncIterator[None]:
        app.state.issuer = TokenIssuer(settings)
        app.state.key_secrets = KeySecrets.load(settings)
        app.state.passwords = Passwords(settings)
        await app.state.passwords.prepare()
        app.state.throttle = Throttle(app.state.store, settings)
        app.state.totp_cipher = secret_cipher(settings)
        if app.state.totp_cipher is None:
            logger.warning("no TOTP_ENCRYPTION_KEY: two-factor enrolment is refused")
        mail_relay = MailRelay(
            app.state.sessionmaker, mail_outbox, mailer, settings.mail_from, settings.outbox_poll_seconds, clock
        )
        app.state.mail_relay = mail_relay
        mail_relay.start()
        if settings.is_production and not settings.smtp_url:
            logger.warning("no SMTP_URL: mail (password resets, verifications) is not sent")

        async def apply_event(session: AsyncSession, event: Event) -> None:
            auth = auth_service(session, app.state)
            if event.type == PASSWORD_RESET_REQUESTED:
                await auth.send_password_reset(event.data["email"])
            elif event.type == VERIFICATION_REQUESTED:
                await auth.send_verification(event.data["email"])
            else:
                await auth.deactivate_deleted_user(uuid.UUID(event.data["user_id"]))

        EVENTS.subscribe(app.state.bus, app.state.sessionmaker, apply_event)
        try:
            yield
        finally:
            await mail_relay.stop()

    return create_service_app(
        settings,
        title="PyAirtable auth service",
        route_handlers=[
            AuthController,
            AccountAdminController,
            AccountCreationController,
            TwoFactorController,
            PersonalKeyController,
            ServiceKeyController,
            KeyIntrospectionController,
            OrganizationController,
            InvitationController,
            OrganizationServiceKeyController,
        ],
        # Every handler may know its client: its address goes into audit entries.
        dependencies={"client": Provide(provide_client, sync_to_thread=False)},
        lifespan=[auth_resources],
        store=store,
        bus=bus,
        consumer=EVENTS,
        outbox=outbox,
        state={"clock": clock},
    )
