"""The access log: one JSON line per proxied request, the same line ``shared.logs.JSONFormatter``
would write for ``logging.getLogger("gateway.access").info("request", extra=...)``, built without
the ``logging`` machinery (a ``LogRecord``, its extras scan and a locked, flushed write each cost
more than the proxying itself on this path: docs/PERFORMANCE.md). Lines are encoded by a prebuilt
msgspec encoder into a buffer that is written to stdout once per event-loop turn, so the lines
of requests finishing together leave in one write, a loop turn after they finished at most.

Off when ``ACCESS_LOG=false`` or when the ``gateway.access`` logger is not enabled for INFO
(``LOG_LEVEL=WARNING``), as before.
"""

import asyncio
import logging
import sys
import time

import msgspec

LOGGER_NAME = "gateway.access"


class AccessLine(msgspec.Struct):
    """The fields, in the order JSONFormatter writes them."""

    ts: str
    level: str
    service: str
    logger: str
    msg: str
    request_id: str | None
    method: str
    route: str
    status: int
    latency_ms: float
    user_id: str | None
    client_ip: str


class AccessLog:
    def __init__(self, service: str, enabled: bool = True) -> None:
        self.service = service
        self.switched_on = enabled
        self._logger = logging.getLogger(LOGGER_NAME)
        self._encoder = msgspec.json.Encoder()
        self._pending = bytearray()
        self._flush_scheduled = False
        self._second = -1
        self._second_text = ""

    @property
    def enabled(self) -> bool:
        return self.switched_on and self._logger.isEnabledFor(logging.INFO)

    def request(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        user_id: str | None,
        request_id: str | None,
        client_ip: str,
    ) -> None:
        """Log one finished request (``seconds``: its latency)."""
        line = AccessLine(
            self._timestamp(),
            "INFO",
            self.service,
            LOGGER_NAME,
            "request",
            request_id,
            method,
            route,
            status,
            round(seconds * 1000, 2),
            user_id,
            client_ip,
        )
        self._encoder.encode_into(line, self._pending, -1)
        self._pending += b"\n"
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running: write now
                self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            text = self._pending.decode("utf-8", "replace")
            self._pending.clear()
            stream = sys.stdout  # looked up each time: whatever stdout is now (a test may capture it)
            stream.write(text)
            stream.flush()

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once per second, as JSONFormatter does
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return self._second_text + f".{int((now - second) * 1000):03d}Z"
