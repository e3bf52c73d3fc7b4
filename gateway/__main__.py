"""python -m gateway [serve]"""

import sys

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.workers import serve_gateway
from shared.cli import run_service_cli


def main() -> int:
    return run_service_cli(
        package="gateway",
        settings_cls=GatewaySettings,
        create_app=create_app,
        migrations=False,
        serve_app=serve_gateway,
    )


if __name__ == "__main__":
    sys.exit(main())
