"""``python -m <service> [serve|migrate|downgrade|revision]`` for every service, and for a service
that consumes events ``dead-letters list|replay|drop`` and ``prune-processed-events``."""

import argparse
import asyncio
import gc
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import uvicorn
from litestar import Litestar
from redis.exceptions import RedisError

from shared.db import create_engine, create_sessionmaker, utcnow
from shared.dead_letters import DeadLetterEntry, DeadLetters
from shared.events import EventConsumer, prune_processed_events
from shared.logs import configure_logging
from shared.settings import ServiceSettings, SettingsError, load_settings
from shared.stores import create_redis

ExtraCommand = Callable[[ServiceSettings, argparse.Namespace], int]
Command = tuple[Callable[[argparse.ArgumentParser], None], ExtraCommand]
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_DURATION = re.compile(r"^(\d+)([dhms]?)$")
# uvicorn as every service runs it: our JSON logs and access log, no Server header, no trust in
# X-Forwarded-* (TRUSTED_PROXIES decides), 10 s for requests in progress to finish on SIGTERM.
SERVER_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "access_log": False,
    "server_header": False,
    "proxy_headers": False,
    "timeout_graceful_shutdown": 10,
}


def run_service_cli(
    *,
    package: str,
    settings_cls: type[ServiceSettings],
    create_app: Callable[[Any], Litestar],
    argv: Sequence[str] | None = None,
    extra_commands: dict[str, Command] | None = None,
    events: EventConsumer | None = None,
    migrations: bool = True,
    serve_app: Callable[[Any, Any], None] | None = None,
) -> int:
    """``serve_app(app, settings)`` serves instead of ``serve`` (the gateway: its protocol, its workers)."""
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP service (default)")
    commands.add_parser("migrate", help="apply this service's migrations up to head")
    down = commands.add_parser("downgrade", help="revert migrations to a revision")
    down.add_argument("revision")
    rev = commands.add_parser("revision", help="autogenerate a migration from the models")
    rev.add_argument("-m", "--message", required=True)
    extra_commands = {**(event_commands(events) if events else {}), **(extra_commands or {})}
    for name, (add_arguments, _) in extra_commands.items():
        add_arguments(commands.add_parser(name))
    args = parser.parse_args(argv)

    try:
        settings = load_settings(settings_cls)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.service_name, settings.log_level)
    command = args.command or "serve"
    if command in ("migrate", "downgrade", "revision") and not migrations:
        print(f"{package} has no database: nothing to migrate")
        return 0
    if command in ("migrate", "downgrade", "revision"):
        # Imported for these commands only: Alembic (and Mako) would stay in a serving process's
        # memory (about 8 MB of its RSS) for nothing.
        from shared import migrations as alembic_migrations
    if command == "migrate":
        alembic_migrations.upgrade(settings, package)
    elif command == "downgrade":
        alembic_migrations.downgrade(settings, package, args.revision)
    elif command == "revision":
        alembic_migrations.revision(settings, package, args.message)
    elif command == "serve":
        try:
            app = create_app(settings)
        except SettingsError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        (serve_app or serve)(app, settings)
    else:
        return extra_commands[command][1](settings, args)
    return 0


def serve(app: Any, settings: ServiceSettings, **uvicorn_options: Any) -> None:
    # Everything built so far (modules, the app, its routes) lives as long as the process: moved out
    # of the collector's generations, a full collection no longer walks ~100k long-lived objects.
    gc.freeze()
    uvicorn.run(app, host=settings.host, port=settings.port, **SERVER_OPTIONS, **uvicorn_options)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m``, ``10s``; a bare number is days."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 30d, 12h, 45m or 10s")
    return timedelta(**{_UNITS[match.group(2) or "d"]: int(match.group(1))})


# -- commands of a service that consumes events ----------------------------------------------------


def event_commands(consumer: EventConsumer) -> dict[str, Command]:
    def add_dead_letter_arguments(parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{list,replay,drop}")
        listing = actions.add_parser("list", help="show this service's dead letters")
        listing.add_argument("--type", choices=consumer.event_types, help="only this event type")
        replay = actions.add_parser("replay", help="put dead letters back on their stream and remove them")
        replay.add_argument("--type", choices=consumer.event_types, help="only this event type")
        replay.add_argument("--id", help="only this event id")
        drop = actions.add_parser("drop", help="remove a dead letter")
        drop.add_argument("--id", required=True, help="the event id")

    def dead_letters_command(settings: ServiceSettings, args: argparse.Namespace) -> int:
        if not settings.redis_url:
            print(
                "dead-letters: REDIS_URL is not set. Without Redis the bus is in memory: its dead letters"
                " live in the service's process and are only logged ('event dead-lettered').",
                file=sys.stderr,
            )
            return 2
        try:
            return asyncio.run(_dead_letters(settings, consumer, args))
        except (RedisError, OSError) as exc:
            print(f"dead-letters: Redis is unavailable: {exc}", file=sys.stderr)
            return 1

    def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--older-than",
            type=parse_duration,
            default=None,
            help="forget event ids processed at least this long ago (default: EVENT_DEDUP_RETENTION_DAYS days)",
        )

    def prune_command(settings: ServiceSettings, args: argparse.Namespace) -> int:
        age: timedelta = args.older_than or timedelta(days=settings.event_dedup_retention_days)
        if age.total_seconds() <= settings.redelivery_window_seconds:
            print(
                f"prune-processed-events: --older-than must be longer than a redelivery can come"
                f" ({settings.redelivery_window_seconds:g} s: EVENT_RECLAIM_SECONDS * EVENT_MAX_ATTEMPTS)",
                file=sys.stderr,
            )
            return 2
        forgotten = asyncio.run(_prune(settings, consumer, utcnow() - age))
        print(f"forgot {forgotten} processed event id(s)")
        return 0

    return {
        "dead-letters": (add_dead_letter_arguments, dead_letters_command),
        "prune-processed-events": (add_prune_arguments, prune_command),
    }


async def _prune(settings: ServiceSettings, consumer: EventConsumer, before: datetime) -> int:
    engine = create_engine(settings)
    try:
        return await prune_processed_events(create_sessionmaker(engine), consumer.processed_events, before)
    finally:
        await engine.dispose()


async def _dead_letters(settings: ServiceSettings, consumer: EventConsumer, args: argparse.Namespace) -> int:
    redis = create_redis(settings, timeout=5.0)
    try:
        dead_letters = DeadLetters(redis, settings.redis_namespace)
        entries = await _select(dead_letters, consumer, getattr(args, "type", None), getattr(args, "id", None))
        if args.action == "list":
            print(_table(entries))
            return 0
        if args.id is not None and not entries:
            print(f"dead-letters: no dead letter of group {consumer.group!r} with id {args.id}", file=sys.stderr)
            return 1
        if args.action == "drop":
            for entry in entries:
                await dead_letters.drop(entry)
            print(f"dropped {len(entries)} dead letter(s)")
            return 0
        return await _replay(dead_letters, entries)
    finally:
        await redis.aclose()


async def _select(
    dead_letters: DeadLetters, consumer: EventConsumer, event_type: str | None, event_id: str | None
) -> list[DeadLetterEntry]:
    """The group's dead letters; of one type, and with one id, when given."""
    entries: list[DeadLetterEntry] = []
    for each_type in [event_type] if event_type else consumer.event_types:
        entries += [
            entry for entry in await dead_letters.list(each_type, consumer.group) if event_id in (None, entry.id)
        ]
    return entries


async def _replay(dead_letters: DeadLetters, entries: list[DeadLetterEntry]) -> int:
    undecodable = [entry for entry in entries if entry.event_id is None]
    for entry in entries:
        if entry.event_id is not None:
            await dead_letters.replay(entry)
    print(f"replayed {len(entries) - len(undecodable)} dead letter(s)")
    for entry in undecodable:
        print(f"dead-letters: {entry.id} does not decode and cannot be replayed; drop it", file=sys.stderr)
    return 1 if undecodable else 0


def _table(entries: list[DeadLetterEntry]) -> str:
    if not entries:
        return "no dead letters"
    now = utcnow()
    rows = [("ID", "TYPE", "GROUP", "ATTEMPTS", "AGE", "ERROR")] + [
        (e.id, e.event_type, e.group, str(e.attempts), _age(now - e.dead_since), e.reason) for e in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[5]]) for row in rows
    )


def _age(elapsed: timedelta) -> str:
    """The largest two units: ``3d4h``, ``5m12s``, ``40s``."""
    seconds = max(0, int(elapsed.total_seconds()))
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return "".join(shown[:2]) or "0s"
