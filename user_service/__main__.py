"""python -m user_service [serve|migrate|downgrade|revision|purge|dead-letters|prune-processed-events]"""

import sys

from shared.cli import run_service_cli
from user_service.app import EVENTS, create_app
from user_service.config import UserSettings
from user_service.purge import add_purge_arguments, purge_command


def main() -> int:
    return run_service_cli(
        package="user_service",
        settings_cls=UserSettings,
        create_app=create_app,
        extra_commands={"purge": (add_purge_arguments, purge_command)},
        events=EVENTS,
    )


if __name__ == "__main__":
    sys.exit(main())
