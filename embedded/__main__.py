"""python -m embedded [serve|migrate]: the whole platform in one process on :8080."""

import argparse
import sys

import uvicorn

from embedded.app import create_app, listen_address, migrate_all
from shared.logs import configure_logging
from shared.settings import SettingsError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args()
    configure_logging("platform")
    try:
        if args.command == "migrate":
            migrate_all()
            return 0
        app = create_app()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    host, port = listen_address()
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
