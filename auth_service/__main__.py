"""python -m auth_service [serve|migrate|downgrade|revision|create-admin|dead-letters|prune-processed-events]"""

import sys

from auth_service.admin import add_create_admin_arguments, create_admin_command
from auth_service.app import EVENTS, create_app
from auth_service.config import AuthSettings
from shared.cli import run_service_cli


def main() -> int:
    return run_service_cli(
        package="auth_service",
        settings_cls=AuthSettings,
        create_app=create_app,
        extra_commands={"create-admin": (add_create_admin_arguments, create_admin_command)},
        events=EVENTS,
    )


if __name__ == "__main__":
    sys.exit(main())
