"""Structured JSON logging; every line carries the current request ID."""

import contextvars
import logging
import sys
import time
import traceback
from typing import Any

import msgspec

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_encoder = msgspec.json.Encoder(enc_hook=str)
# Errors from the database and its drivers quote what they were given: PostgreSQL's "Failing row
# contains (...)", "Key (email)=(...) already exists", a value that is not an integer.
_QUOTING_MODULES = ("sqlalchemy.", "psycopg", "sqlite3", "aiosqlite")


def stack_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` and the exceptions chained to it, each exception by type only:
    where it failed, and nothing of the values it failed on."""
    parts = []
    for item in _chain(exc):
        frames = "".join(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        parts.append(f"{frames}{type(item).__module__}.{type(item).__qualname__}")
    return "\n-- caused by --\n".join(parts)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def quotes_data(exc: BaseException) -> bool:
    """Whether ``exc`` (or one chained to it) comes from the database, whose messages quote values."""
    return any(type(item).__module__.startswith(_QUOTING_MODULES) for item in _chain(exc))


class JSONFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once per second, not once per line
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return self._second_text + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                # Bytes (a Redis stream ID, say) as text, not the encoder's base64.
                entry[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None and quotes_data(exc):
                entry["exc"] = stack_without_messages(exc)
            else:
                entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode("utf-8", "replace")


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stdout as JSON lines. Idempotent."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter(service))
    root.handlers = [handler]
    root.setLevel(level)
    # Record attributes the JSON lines never show, each costly on a per-request log call: the
    # caller's file and line (a stack walk), thread and process names (logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # httpx logs every request at INFO: costly on hot paths and noisy; keep warnings only.
    for noisy in ("httpx", "httpcore", "aiosqlite", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
