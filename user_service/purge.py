"""``python -m user_service purge --older-than 30d``: remove soft-deleted profiles for good, and
forget the ids of events processed that long ago, but never before the dedup retention
(``EVENT_DEDUP_RETENTION_DAYS``): an id forgotten sooner could let a redelivered event apply twice."""

import argparse
import asyncio
from datetime import datetime, timedelta

from shared.cli import parse_duration
from shared.db import create_engine, create_sessionmaker, utcnow
from shared.events import forget_processed_events
from shared.settings import ServiceSettings
from user_service.config import UserSettings
from user_service.models import processed_events
from user_service.services import ProfileService


def add_purge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        default=None,
        help="purge profiles deleted at least this long ago (default: PURGE_AFTER_DAYS days)",
    )


def purge_command(settings: ServiceSettings, args: argparse.Namespace) -> int:
    assert isinstance(settings, UserSettings)
    age: timedelta = args.older_than or timedelta(days=settings.purge_after_days)
    profiles, event_ids = asyncio.run(purge(settings, utcnow() - age))
    print(f"purged {profiles} deleted profile(s) and {event_ids} processed event id(s)")
    return 0


async def purge(settings: UserSettings, before: datetime) -> tuple[int, int]:
    """Profiles deleted before ``before`` and event ids processed before it; how many of each."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            profiles = await ProfileService(session, utcnow).purge(before)
            retained = utcnow() - timedelta(days=settings.event_dedup_retention_days)
            event_ids = await forget_processed_events(session, processed_events, min(before, retained))
            return profiles, event_ids
    finally:
        await engine.dispose()
