"""``python -m <service> [serve|migrate|downgrade|revision]`` for every service."""

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from litestar import Litestar

from shared import migrations as alembic_migrations
from shared.logs import configure_logging
from shared.settings import ServiceSettings, SettingsError, load_settings

ExtraCommand = Callable[[ServiceSettings, argparse.Namespace], int]


def run_service_cli(
    *,
    package: str,
    settings_cls: type[ServiceSettings],
    create_app: Callable[[Any], Litestar],
    argv: Sequence[str] | None = None,
    extra_commands: dict[str, tuple[Callable[[argparse.ArgumentParser], None], ExtraCommand]] | None = None,
    migrations: bool = True,
    uvicorn_options: dict[str, Any] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP service (default)")
    commands.add_parser("migrate", help="apply this service's migrations up to head")
    down = commands.add_parser("downgrade", help="revert migrations to a revision")
    down.add_argument("revision")
    rev = commands.add_parser("revision", help="autogenerate a migration from the models")
    rev.add_argument("-m", "--message", required=True)
    for name, (add_arguments, _) in (extra_commands or {}).items():
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
    elif command == "migrate":
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
        serve(app, settings, **(uvicorn_options or {}))
    else:
        return (extra_commands or {})[command][1](settings, args)
    return 0


def serve(app: Any, settings: ServiceSettings, **uvicorn_options: Any) -> None:
    # Everything built so far (modules, the app, its routes) lives as long as the process: moved out
    # of the collector's generations, a full collection no longer walks ~100k long-lived objects.
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        **uvicorn_options,
    )
