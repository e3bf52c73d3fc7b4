"""Processes that stop half way through an event, for the crash tests to SIGKILL:

    python -m tests.e2e.event_crash consume --hang before-commit|after-commit
    python -m tests.e2e.event_crash commit-then-publish --user-id UUID

``consume`` runs the user service's real ``user.registered`` handler in the ``users`` consumer
group and hangs on the first event: inside its transaction (``before-commit``), or once the
transaction committed but before the message is acknowledged (``after-commit``).
``commit-then-publish`` soft-deletes a profile through the user service's own code (the change
and its ``user.deleted`` outbox row in one transaction), then starts the outbox relay with a bus
whose publish never returns. Each prints ``HANGING`` when it reached that point.
Settings come from the environment, as for ``python -m user_service``.
"""

import argparse
import asyncio
import sys
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import create_engine, create_sessionmaker, utcnow
from shared.events import Event, RedisStreamBus, idempotent
from shared.outbox import OutboxRelay
from shared.security import Identity
from shared.settings import load_settings
from shared.stores import create_redis
from user_service.config import UserSettings
from user_service.models import outbox, processed_events
from user_service.services import ProfileService


def hang() -> asyncio.Future[None]:
    print("HANGING", flush=True)
    return asyncio.get_running_loop().create_future()  # never done


async def consume(settings: UserSettings, hang_at: str) -> None:
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)

    async def apply(session: AsyncSession, event: Event) -> None:
        await ProfileService(session, utcnow).apply_account_event(event)
        if hang_at == "before-commit":
            await session.flush()
            await hang()

    handler = idempotent(sessionmaker, processed_events, "users", apply)

    async def handle(event: Event) -> None:
        await handler(event)
        if hang_at == "after-commit":
            await hang()

    bus = RedisStreamBus(create_redis(settings), settings.redis_namespace, consumer="doomed")
    bus.subscribe("user.registered", "users", handle)
    await bus.start()
    await hang_forever()


async def commit_then_publish(settings: UserSettings, user_id: uuid.UUID) -> None:
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    admin = Identity(
        user_id=uuid.uuid4(), email="", roles=("admin",), jti="", session_id=None, issued_at=0, expires_at=0
    )
    async with sessionmaker() as session, session.begin():
        await ProfileService(session, utcnow).delete(admin, user_id)

    class StuckBus:
        async def publish(self, event: Event) -> None:
            await hang()

    relay = OutboxRelay(sessionmaker, outbox, StuckBus(), poll_seconds=3600)  # type: ignore[arg-type]
    await relay.publish_pending()


async def hang_forever() -> None:
    await asyncio.get_running_loop().create_future()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.event_crash")
    commands = parser.add_subparsers(dest="command", required=True)
    consumer = commands.add_parser("consume")
    consumer.add_argument("--hang", choices=["before-commit", "after-commit"], required=True)
    producer = commands.add_parser("commit-then-publish")
    producer.add_argument("--user-id", type=uuid.UUID, required=True)
    args = parser.parse_args()
    settings = load_settings(UserSettings)
    if args.command == "consume":
        asyncio.run(consume(settings, args.hang))
    else:
        asyncio.run(commit_then_publish(settings, args.user_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
