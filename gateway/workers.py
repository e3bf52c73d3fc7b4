"""``python -m gateway serve``: one process, or ``GATEWAY_WORKERS`` processes serving one port.

Several workers run under uvicorn's own supervisor (``uvicorn.run(..., workers=N)``): it binds the
port once and hands the socket to each spawned worker (the kernel gives each new connection to
one of them), replaces a worker that dies or stops answering its health pings, restarts them all
on SIGHUP, and on SIGTERM or Ctrl-C stops every worker gracefully before it exits itself. Each
worker builds its own app from the environment (``worker_app``); what must hold across workers
(rate limits, revocations, idempotency keys) is in Redis, as between replicas, which the settings
require for more than one worker. Metrics: prometheus_client's multiprocess mode, in a directory
made for the run (gateway/metrics.py).
"""

import contextlib
import gc
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator

import uvicorn
from litestar import Litestar

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.transport.serving import GatewayHttpProtocol
from shared.cli import SERVER_OPTIONS, serve
from shared.logs import configure_logging
from shared.settings import load_settings

METRICS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"


def serve_gateway(app: Litestar, settings: GatewaySettings) -> None:
    """Serve ``app`` in this process, or (several workers) let each worker build its own: the app
    built here then only proved that the settings make an app, before any worker was started."""
    if settings.worker_count == 1:
        serve(app, settings, http=GatewayHttpProtocol)
        return
    del app
    with metrics_directory():
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=settings.worker_count,
            host=settings.host,
            port=settings.port,
            http=GatewayHttpProtocol,
            **SERVER_OPTIONS,
        )


def worker_app() -> Litestar:
    """One worker's app (a fresh interpreter: uvicorn spawns its workers), logging as the parent does."""
    settings = load_settings(GatewaySettings)
    configure_logging(settings.service_name, settings.log_level)
    app = create_app(settings)
    gc.freeze()  # as shared.cli.serve: the long-lived objects built so far leave the collector's view
    return app


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """The directory of the workers' metric files: PROMETHEUS_MULTIPROC_DIR when the operator set it
    (emptied first: a previous run's counts would be added to this one's), else a temporary one,
    removed when the gateway stops. Set in the environment before the workers start, so that their
    prometheus_client, imported afresh, writes there."""
    given = os.environ.get(METRICS_DIRECTORY)
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        yield given
        return
    directory = tempfile.mkdtemp(prefix="pyairtable-gateway-metrics-")
    os.environ[METRICS_DIRECTORY] = directory
    try:
        yield directory
    finally:
        del os.environ[METRICS_DIRECTORY]
        shutil.rmtree(directory, ignore_errors=True)
