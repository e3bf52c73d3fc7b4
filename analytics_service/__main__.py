"""python -m analytics_service [serve|migrate|downgrade|revision|purge|dead-letters|prune-processed-events]"""

import argparse
import asyncio
import sys

from analytics_service.app import EVENTS, create_app
from analytics_service.config import AnalyticsSettings
from analytics_service.workers import purge
from shared.cli import run_service_cli
from shared.db import create_engine, create_sessionmaker, utcnow
from shared.settings import ServiceSettings


def purge_command(settings: ServiceSettings, _args: argparse.Namespace) -> int:
    assert isinstance(settings, AnalyticsSettings)
    deleted = asyncio.run(_purge(settings))
    print(" ".join(f"{table}={count}" for table, count in deleted.items()))
    return 0


async def _purge(settings: AnalyticsSettings) -> dict[str, int]:
    engine = create_engine(settings)
    try:
        return await purge(create_sessionmaker(engine), settings, utcnow())
    finally:
        await engine.dispose()


def main() -> int:
    return run_service_cli(
        package="analytics_service",
        settings_cls=AnalyticsSettings,
        create_app=create_app,
        extra_commands={"purge": (lambda parser: None, purge_command)},
        events=EVENTS,
    )


if __name__ == "__main__":
    sys.exit(main())
