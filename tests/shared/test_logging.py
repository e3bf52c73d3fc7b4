"""One log format everywhere: a JSON object per line, with the request ID."""

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, post
from litestar.params import FromPath, JSONBody
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from auth_service.config import AuthSettings
from shared.db import create_engine
from shared.errors import EXCEPTION_HANDLERS
from shared.http import RequestIdMiddleware, StrictBodyRequest
from shared.logs import JSONFormatter, request_id_var
from tests.auth_service.conftest import PASSWORD, register
from tests.conftest import DatabaseFactory, app_client

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class Opaque:
    """Something JSON cannot encode."""

    def __str__(self) -> str:
        return "<opaque thing>"


class Capture:
    """A logger whose records are formatted by JSONFormatter into a buffer."""

    def __init__(self, name: str) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(JSONFormatter("auth"))
        self.logger = logging.getLogger(name)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = True
        self.logger.setLevel(logging.NOTSET)


@pytest.fixture
def capture() -> Iterator[Capture]:
    capturing = Capture("tests.shared.logging")
    yield capturing
    capturing.close()


def test_each_line_is_a_json_object_with_the_standard_fields(capture: Capture) -> None:
    capture.logger.info("user %s signed in", "ada")
    [line] = capture.lines()
    entry = json.loads(line)
    assert entry["msg"] == "user ada signed in"
    assert entry["level"] == "INFO"
    assert entry["service"] == "auth"
    assert entry["logger"] == "tests.shared.logging"
    assert TIMESTAMP.match(entry["ts"])
    logged_at = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - logged_at).total_seconds()) < 3600
    assert entry["request_id"] is None


def test_the_request_id_comes_from_the_context(capture: Capture) -> None:
    token = request_id_var.set("req-0123456789")
    try:
        capture.logger.warning("inside a request")
    finally:
        request_id_var.reset(token)
    capture.logger.warning("outside")
    inside, outside = capture.entries()
    assert inside["request_id"] == "req-0123456789"
    assert outside["request_id"] is None


def test_extra_fields_are_included_and_unencodable_ones_become_strings(capture: Capture) -> None:
    capture.logger.info(
        "event handled",
        extra={
            "user_id": "7c0e",
            "attempts": 3,
            "ok": True,
            "thing": Opaque(),
            "where": Path("/srv/data"),
            "message_id": b"1700000000000-0",
        },
    )
    [entry] = capture.entries()
    assert entry["user_id"] == "7c0e"
    assert entry["attempts"] == 3
    assert entry["ok"] is True
    assert entry["thing"] == "<opaque thing>"
    assert entry["where"] == "/srv/data"
    assert entry["message_id"] == "1700000000000-0"


def test_exceptions_are_kept_on_one_line(capture: Capture) -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        capture.logger.exception("it failed")
    [line] = capture.lines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert "RuntimeError: boom" in entry["exc"]
    assert "Traceback" in entry["exc"]


def test_non_ascii_messages_survive(capture: Capture) -> None:
    capture.logger.info("Zoë signed in from München")
    assert capture.entries()[0]["msg"] == "Zoë signed in from München"


@pytest.fixture
def root_capture() -> Iterator[Capture]:
    """Everything any logger emits while the test runs."""
    previous = logging.getLogger().level
    capturing = Capture("")
    yield capturing
    capturing.logger.removeHandler(capturing.handler)
    capturing.logger.setLevel(previous)


async def test_failed_logins_never_log_the_password(client: httpx.AsyncClient, root_capture: Capture) -> None:
    wrong = "Tr0ub4dor&3-not-the-password"
    unknown_user_password = "hunter2-for-nobody"
    await register(client)
    refused = await client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": wrong})
    assert refused.status_code == 401
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": unknown_user_password}
    )
    assert unknown.status_code == 401
    accepted = await client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert accepted.status_code == 200

    text = root_capture.buffer.getvalue()
    for secret in (PASSWORD, wrong, unknown_user_password, accepted.json()["refresh_token"]):
        assert secret not in text
    entries = root_capture.entries()
    failures = [entry for entry in entries if entry["msg"] == "login failed"]
    assert failures, "a failed login is worth a log line"
    assert failures[0]["request_id"] == refused.headers["x-request-id"]
    assert all(line.startswith("{") for line in root_capture.lines())


async def test_a_500_is_logged_with_its_request_id_and_nothing_of_the_request(root_capture: Capture) -> None:
    secret = "s3cret-value-from-the-body"

    @post("/boom/{name:str}", status_code=200)
    async def boom(name: FromPath[str], data: JSONBody[dict[str, str]]) -> None:
        raise ValueError(f"cannot use {data['password']} for {name}")  # a careless message

    app = Litestar(
        [boom],
        middleware=[RequestIdMiddleware],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=StrictBodyRequest,
        logging_config=None,  # as every service: the platform's JSON lines only
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the test's client logs the URLs it calls
    async with app_client(app) as client:
        response = await client.post(
            "/boom/ada@example.com", json={"password": secret}, headers={"X-Request-ID": "req-boom-0001"}
        )

    assert response.status_code == 500
    assert secret not in response.text
    text = root_capture.buffer.getvalue()
    assert secret not in text and "ada@example.com" not in text
    [entry] = [entry for entry in root_capture.entries() if entry["msg"] == "unhandled error"]
    assert entry["request_id"] == "req-boom-0001"
    assert entry["route"] == "/boom/{name}"
    assert entry["error"] == "ValueError"
    assert "builtins.ValueError" in entry["stack"] and "in boom" in entry["stack"]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_a_failing_statement_never_shows_its_parameters(
    backend: str, databases: DatabaseFactory, tmp_path: Path
) -> None:
    url = databases.create("hide_parameters") if backend == "postgresql" else ""
    engine = create_engine(AuthSettings(database_url=url, data_dir=str(tmp_path)))
    secret = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0"
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as failed:  # an overflow: the database's message quotes no value
                await connection.execute(text("SELECT :secret, abs(:lowest)"), {"secret": secret, "lowest": -(2**63)})
    finally:
        await engine.dispose()

    assert secret not in str(failed.value)
    assert "hidden due to hide_parameters" in str(failed.value)


def test_a_database_error_is_logged_without_the_values_it_quotes(capture: Capture) -> None:
    email = "ada" + "@example.com"  # built here: the traceback's source lines must not show it either
    try:
        try:
            raise RuntimeError(f"new row violates check constraint DETAIL: Failing row contains ({email})")
        except RuntimeError as driver_error:
            raise DBAPIError("INSERT INTO profiles ...", None, driver_error) from driver_error
    except DBAPIError:
        capture.logger.exception("write failed")
    [entry] = capture.entries()
    assert "ada@example.com" not in entry["exc"]
    assert "sqlalchemy.exc.DBAPIError" in entry["exc"] and "test_logging.py" in entry["exc"]
