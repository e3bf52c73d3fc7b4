"""python -m embedded [serve|migrate]: the whole platform in one process, behind the gateway on :8080."""

import argparse
import sys

from embedded.app import create_app, migrate_all
from gateway.config import GatewaySettings
from shared.cli import serve
from shared.logs import configure_logging
from shared.settings import SettingsError, load_settings


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args()
    try:
        settings = load_settings(GatewaySettings)
        if settings.worker_count > 1:  # its services' in-memory stores and SQLite files are one process's
            raise SettingsError("GATEWAY_WORKERS: the embedded platform runs in one process; run the gateway alone")
        configure_logging("platform", settings.log_level)
        if args.command == "migrate":
            migrate_all()
            return 0
        app = create_app(settings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    serve(app, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
