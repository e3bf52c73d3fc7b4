"""python -m gateway [serve]"""

import sys

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.serving import GatewayHttpProtocol
from shared.cli import run_service_cli


def main() -> int:
    return run_service_cli(
        package="gateway",
        settings_cls=GatewaySettings,
        create_app=create_app,
        migrations=False,
        uvicorn_options={"http": GatewayHttpProtocol},
    )


if __name__ == "__main__":
    sys.exit(main())
