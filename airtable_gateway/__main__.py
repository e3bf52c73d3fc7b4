"""python -m airtable_gateway [serve|migrate|downgrade|revision|dead-letters|prune-processed-events]
| python -m airtable_gateway emulator [...]"""

import sys

from airtable_gateway.app import EVENTS, create_app
from airtable_gateway.config import AirtableSettings
from shared.cli import run_service_cli


def main() -> int:
    if sys.argv[1:2] == ["emulator"]:
        from airtable_gateway.emulator.cli import main as run_emulator

        return run_emulator(sys.argv[2:])
    return run_service_cli(
        package="airtable_gateway", settings_cls=AirtableSettings, create_app=create_app, events=EVENTS
    )


if __name__ == "__main__":
    sys.exit(main())
