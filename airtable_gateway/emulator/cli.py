"""``python -m airtable_gateway emulator``: serve the Airtable emulator with uvicorn."""

import argparse
import logging
import os
import socket
import sys
from typing import Any

import uvicorn

from airtable_gateway.emulator.app import DEFAULT_TOKEN, create_emulator_app
from airtable_gateway.emulator.store import SeedError

logger = logging.getLogger("airtable_gateway.emulator")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airtable_gateway emulator", description="A local Airtable Web API v0 emulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--seed", help="a seed JSON file (default: the packaged demo seed)")
    parser.add_argument(
        "--token",
        action="append",
        dest="tokens",
        help="a bearer token the emulator accepts (repeatable; default: $AIRTABLE_EMULATOR_TOKEN or emulator-token)",
    )
    parser.add_argument("--requests-per-second", type=int, default=5, help="per base; 0 turns the limit off")
    parser.add_argument(
        "--requests-per-second-per-token", type=int, default=50, help="per token, all bases; 0 turns the limit off"
    )
    parser.add_argument("--penalty-seconds", type=float, default=30.0, help="how long a base answers 429 once over")
    return parser.parse_args(argv)


class _Server(uvicorn.Server):
    """Says so once its socket listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            config: Any = self.config
            logger.info("airtable emulator ready on http://%s:%d", config.host, config.port)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    tokens = args.tokens or [os.environ.get("AIRTABLE_EMULATOR_TOKEN") or DEFAULT_TOKEN]
    try:
        app = create_emulator_app(
            args.seed,
            tokens=tokens,
            requests_per_second=args.requests_per_second,
            requests_per_second_per_token=args.requests_per_second_per_token,
            penalty_seconds=args.penalty_seconds,
        )
    except (OSError, ValueError, SeedError) as error:
        print(f"airtable emulator: cannot start: {error}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on")
    _Server(config).run()
    return 0
