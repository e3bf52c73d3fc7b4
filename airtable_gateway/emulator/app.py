"""The emulator as a plain ASGI app: Airtable Web API v0 routes plus ``/_emulator/*`` test controls.

Plain ASGI rather than Litestar: every answer, including an unknown route, a wrong method and a body that
is not JSON, must be Airtable's error shape, query strings use Airtable's bracket syntax
(``sort[0][field]``), and per-base admission (token, rate limit, injected failures, latency) wraps every
route; a framework would add layers to override rather than building blocks to use.
"""

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgspec

from airtable_gateway.emulator import errors
from airtable_gateway.emulator.errors import AirtableError
from airtable_gateway.emulator.store import JSON, MAX_RECORDS_PER_WRITE, ListQuery, Store, Table, read_seed

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_TOKEN = "emulator-token"  # noqa: S105 - the emulator's documented default, not a secret
MAX_BODY_BYTES = 2 * 1024 * 1024
LOG_ENTRIES = 10_000
SORT_PARAM = re.compile(r"^sort\[(\d+)\]\[(field|direction)\]$")
INJECTABLE = {
    429: ("TOO_MANY_REQUESTS", "Rate limit exceeded. Please try again later"),
    500: ("SERVER_ERROR", "Server error"),
    502: ("BAD_GATEWAY", "Bad gateway"),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable"),
    504: ("GATEWAY_TIMEOUT", "Gateway timeout"),
}
logger = logging.getLogger("airtable_gateway.emulator")


@dataclass
class Request:
    method: str
    segments: list[str]  # the path after /v0/, split and percent-decoded
    query: list[tuple[str, str]]
    body: bytes

    def param(self, name: str) -> str | None:
        values = [value for key, value in self.query if key == name]
        return values[-1] if values else None

    def params(self, *names: str) -> list[str]:
        return [value for key, value in self.query if key in names]

    def json(self) -> JSON:
        if not self.body.strip():
            return {}
        try:
            body = msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            raise AirtableError(400, "INVALID_REQUEST_UNKNOWN", "The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise errors.invalid_request("the request body must be a JSON object")
        return body


@dataclass
class Traffic:
    """Per-base admission (rate limit, penalty, injected failures) and what the test controls report."""

    requests_per_second: int
    penalty_seconds: float
    requests_per_second_per_token: int = 50
    windows: dict[str, deque[float]] = field(default_factory=dict)
    penalties: dict[str, float] = field(default_factory=dict)
    token_windows: dict[str, deque[float]] = field(default_factory=dict)  # keyed by token fingerprint
    token_penalties: dict[str, float] = field(default_factory=dict)
    failures: dict[str, tuple[int, int]] = field(default_factory=dict)  # base -> (status, remaining)
    requests: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    log: deque[JSON] = field(default_factory=lambda: deque(maxlen=LOG_ENTRIES))
    latency: float = 0.0

    def reset(self) -> None:
        parts = (self.windows, self.penalties, self.token_windows, self.token_penalties, self.failures)
        for part in (*parts, self.requests, self.throttled, self.log):
            part.clear()
        self.latency = 0.0

    def admit(self, base_id: str | None, token_key: str) -> AirtableError | None:
        """None when a request (to a base, or to none) with this token may go ahead, else the error to answer."""
        now = time.monotonic()
        if base_id is not None:
            self.requests[base_id] += 1
        if now < self.token_penalties.get(token_key, 0.0):
            return errors.too_many_requests()
        if base_id is not None:
            if now < self.penalties.get(base_id, 0.0):
                return errors.too_many_requests()
            if base_id in self.failures:
                return self._injected_failure(base_id, now)
        if not _take(self.token_windows, token_key, self.requests_per_second_per_token, now):
            self.token_penalties[token_key] = now + self.penalty_seconds
            return errors.too_many_requests()
        if base_id is not None and not _take(self.windows, base_id, self.requests_per_second, now):
            self.penalties[base_id] = now + self.penalty_seconds
            return errors.too_many_requests()
        return None

    def _injected_failure(self, base_id: str, now: float) -> AirtableError:
        status, remaining = self.failures.pop(base_id)
        if remaining > 1:
            self.failures[base_id] = (status, remaining - 1)
        if status == 429:
            self.penalties[base_id] = now + self.penalty_seconds
        return AirtableError(status, *INJECTABLE[status])

    def stats(self) -> JSON:
        return {"requests": dict(self.requests), "throttled": dict(self.throttled), "log": list(self.log)}


def _take(windows: dict[str, deque[float]], key: str, limit: int, now: float) -> bool:
    """Count a request in ``key``'s one-second sliding window unless ``limit`` (0: none) is reached."""
    window = windows.setdefault(key, deque())
    while window and window[0] <= now - 1.0:
        window.popleft()
    if limit > 0 and len(window) >= limit:
        return False
    window.append(now)
    return True


def token_fingerprint(token: str) -> str:
    """What stats and rate limits keep of a token: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _bool_param(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true")


def _int_param(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise errors.invalid_request(f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise errors.invalid_request(f"{name} must be an integer") from None


def _check_cell_format(value: Any) -> None:
    if value not in (None, "json"):
        raise errors.invalid_request("the emulator only supports cellFormat=json")


def _query_from_params(request: Request) -> ListQuery:
    _check_cell_format(request.param("cellFormat"))
    sorts: dict[int, dict[str, str]] = {}
    for key, value in request.query:
        if match := SORT_PARAM.match(key):
            sorts.setdefault(int(match.group(1)), {})[match.group(2)] = value
    fields = request.params("fields[]", "fields")
    page_size, max_records = request.param("pageSize"), request.param("maxRecords")
    return ListQuery(
        page_size=_int_param("pageSize", page_size) if page_size is not None else 100,
        max_records=_int_param("maxRecords", max_records) if max_records is not None else None,
        offset=request.param("offset"),
        fields=fields if fields else None,
        sort=[sorts[index] for index in sorted(sorts)],
        view=request.param("view"),
        formula=request.param("filterByFormula"),
        by_field_id=_bool_param(request.param("returnFieldsByFieldId") or ""),
    )


def _query_from_body(body: JSON) -> ListQuery:
    _check_cell_format(body.get("cellFormat"))
    fields = body.get("fields")
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)):
        raise errors.invalid_request("fields must be a list of field names or ids")
    for name in ("offset", "view", "filterByFormula"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise errors.invalid_request(f"{name} must be a string")
    return ListQuery(
        page_size=_int_param("pageSize", body["pageSize"]) if body.get("pageSize") is not None else 100,
        max_records=_int_param("maxRecords", body["maxRecords"]) if body.get("maxRecords") is not None else None,
        offset=body.get("offset"),
        fields=fields,
        sort=body.get("sort") or [],
        view=body.get("view"),
        formula=body.get("filterByFormula"),
        by_field_id=_bool_param(body.get("returnFieldsByFieldId", False)),
    )


def _write_records(body: JSON, verb: str) -> list[Any]:
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise errors.invalid_records("records must be a non-empty list")
    if len(records) > MAX_RECORDS_PER_WRITE:
        raise errors.invalid_records(
            f"You can {verb} at most {MAX_RECORDS_PER_WRITE} records per request; this one has {len(records)}"
        )
    if not all(isinstance(record, dict) for record in records):
        raise errors.invalid_records("each record must be an object")
    return records


class EmulatorApp:
    """An ASGI app: one in-memory store, one traffic ledger."""

    def __init__(self, store: Store, tokens: Sequence[str], traffic: Traffic) -> None:
        if not tokens:
            raise ValueError("the emulator needs at least one token")
        self.store = store
        self.tokens = [token.encode() for token in tokens]
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        body = await _read_body(receive)
        if path.startswith("/_emulator/"):
            status, payload = self._control(scope["method"], path, body)
        else:
            status, payload = await self._airtable(scope, path, query, body)
        await _respond(send, status, payload)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- Airtable routes ----------------------------------------------------------------------------------

    async def _airtable(
        self, scope: Scope, path: str, query: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, Any]:
        method = scope["method"]
        segments = [unquote(part) for part in path.split("/")[2:]] if path.startswith("/v0/") else []
        base_id = self._base_of(segments)
        token = _bearer(scope)
        try:
            if body is None:
                raise AirtableError(413, "REQUEST_ENTITY_TOO_LARGE", "The request body is too large")
            if token is None or not any(hmac.compare_digest(token.encode(), known) for known in self.tokens):
                raise errors.authentication_required()
            if (refused := self.traffic.admit(base_id, token_fingerprint(token))) is not None:
                raise refused
            status, payload = 200, self._dispatch(Request(method, segments, query, body))
        except AirtableError as error:
            status, payload = error.status, error.body()
        except Exception:
            logger.exception("emulator error on %s %s", method, path)
            status, payload = 500, {"error": {"type": "SERVER_ERROR", "message": "Server error"}}
        if status == 429 and base_id is not None:
            self.traffic.throttled[base_id] += 1
        self.traffic.log.append(
            {
                "at": time.time(),
                "base": base_id,
                "method": method,
                "path": path,
                "status": status,
                "token": token_fingerprint(token) if token is not None else None,
            }
        )
        if self.traffic.latency > 0:
            await asyncio.sleep(self.traffic.latency)
        return status, payload

    def _base_of(self, segments: list[str]) -> str | None:
        """The base a request is about when it exists (rate limits and stats are per base)."""
        if segments[:2] == ["meta", "bases"] and len(segments) >= 3:
            candidate = segments[2]
        elif segments and segments[0] != "meta":
            candidate = segments[0]
        else:
            return None
        return candidate if candidate in self.store.bases else None

    def _dispatch(self, request: Request) -> Any:
        segments, method = request.segments, request.method
        if segments == ["meta", "bases"] and method == "GET":
            return {"bases": [base.info() for base in self.store.bases.values()]}
        if len(segments) == 4 and segments[:2] == ["meta", "bases"] and segments[3] == "tables" and method == "GET":
            return {"tables": [table.schema() for table in self.store.base(segments[2]).tables]}
        if (segments and segments[0] == "meta") or not 2 <= len(segments) <= 3 or not all(segments):
            raise errors.not_found()
        handler = self._record_route(method, len(segments), segments[-1])
        table = self.store.table(segments[0], segments[1])
        return handler(table, request)

    def _record_route(self, method: str, length: int, last: str) -> Callable[[Table, Request], Any]:
        routes: Mapping[tuple[str, bool], Callable[[Table, Request], Any]]
        if length == 3 and last == "listRecords":
            if method == "POST":
                return self._list_post
            raise errors.not_found()
        routes = {
            ("GET", False): self._list_get,
            ("POST", False): self._create,
            ("PATCH", False): self._update_many,
            ("PUT", False): self._update_many,
            ("DELETE", False): self._delete_many,
            ("GET", True): self._get_one,
            ("PATCH", True): self._update_one,
            ("PUT", True): self._update_one,
            ("DELETE", True): self._delete_one,
        }
        handler = routes.get((method, length == 3))
        if handler is None:
            raise errors.not_found()
        return handler

    def _list_get(self, table: Table, request: Request) -> Any:
        return self.store.list_records(table, _query_from_params(request))

    def _list_post(self, table: Table, request: Request) -> Any:
        return self.store.list_records(table, _query_from_body(request.json()))

    def _get_one(self, table: Table, request: Request) -> Any:
        by_field_id = _bool_param(request.param("returnFieldsByFieldId") or "")
        return table.output(table.record(request.segments[2]), by_field_id=by_field_id)

    def _create(self, table: Table, request: Request) -> Any:
        body = request.json()
        typecast, by_field_id = _bool_param(body.get("typecast", False)), _by_field_id(body, request)
        if "records" not in body and isinstance(body.get("fields"), dict):
            (record,) = self.store.create(table, [body["fields"]], typecast=typecast)
            return table.output(record, by_field_id=by_field_id)
        records = _write_records(body, "create")
        created = self.store.create(table, [record.get("fields", {}) for record in records], typecast=typecast)
        return {"records": [table.output(record, by_field_id=by_field_id) for record in created]}

    def _update_many(self, table: Table, request: Request) -> Any:
        body = request.json()
        records = _write_records(body, "update")
        typecast, by_field_id = _bool_param(body.get("typecast", False)), _by_field_id(body, request)
        replace = request.method == "PUT"
        upsert = body.get("performUpsert")
        if upsert is not None:
            merge_on = upsert.get("fieldsToMergeOn") if isinstance(upsert, dict) else None
            if not isinstance(merge_on, list):
                raise errors.invalid_request("performUpsert needs fieldsToMergeOn")
            results, created, updated = self.store.upsert(table, records, merge_on, typecast=typecast, replace=replace)
            return {
                "records": [table.output(record, by_field_id=by_field_id) for record in results],
                "createdRecords": created,
                "updatedRecords": updated,
            }
        if not all(isinstance(record.get("id"), str) for record in records):
            raise errors.invalid_records("each record to update needs an id")
        changes = [(record["id"], record.get("fields", {})) for record in records]
        updated_records = self.store.update(table, changes, typecast=typecast, replace=replace)
        return {"records": [table.output(record, by_field_id=by_field_id) for record in updated_records]}

    def _update_one(self, table: Table, request: Request) -> Any:
        body = request.json()
        if not isinstance(body.get("fields"), dict):
            raise errors.invalid_request("the body needs fields")
        typecast, by_field_id = _bool_param(body.get("typecast", False)), _by_field_id(body, request)
        (record,) = self.store.update(
            table, [(request.segments[2], body["fields"])], typecast=typecast, replace=request.method == "PUT"
        )
        return table.output(record, by_field_id=by_field_id)

    def _delete_one(self, table: Table, request: Request) -> Any:
        (deleted,) = self.store.delete(table, [request.segments[2]])
        return {"id": deleted, "deleted": True}

    def _delete_many(self, table: Table, request: Request) -> Any:
        record_ids = request.params("records[]", "records")
        if not record_ids:
            raise errors.invalid_records("records[] must name at least one record")
        if len(record_ids) > MAX_RECORDS_PER_WRITE:
            raise errors.invalid_records(
                f"You can delete at most {MAX_RECORDS_PER_WRITE} records per request; this one has {len(record_ids)}"
            )
        return {"records": [{"id": record_id, "deleted": True} for record_id in self.store.delete(table, record_ids)]}

    # --- test controls ------------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes | None) -> tuple[int, Any]:
        try:
            payload = Request(method, [], [], body or b"").json() if method == "POST" else {}
        except AirtableError as error:
            return error.status, error.body()
        route = (method, path)
        if route == ("GET", "/_emulator/health"):
            return 200, {"status": "ok"}
        if route == ("GET", "/_emulator/stats"):
            return 200, self.traffic.stats()
        if route == ("POST", "/_emulator/reset"):
            self.traffic.reset()
            self.store.reset()
            return 200, {"reset": True}
        if route == ("POST", "/_emulator/fail"):
            return self._inject_failure(payload)
        if route == ("POST", "/_emulator/latency"):
            seconds = payload.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 60:
                return 422, _control_error("seconds must be a number from 0 to 60")
            self.traffic.latency = float(seconds)
            return 200, {"latency": self.traffic.latency}
        return 404, {"error": {"type": "NOT_FOUND", "message": f"no emulator control {method} {path}"}}

    def _inject_failure(self, payload: JSON) -> tuple[int, Any]:
        base_id, status, count = payload.get("base"), payload.get("status"), payload.get("count", 1)
        if base_id not in self.store.bases:
            return 422, _control_error(f"unknown base {base_id!r}")
        if status not in INJECTABLE:
            return 422, _control_error(f"status must be one of {sorted(INJECTABLE)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return 422, _control_error("count must be a positive integer")
        self.traffic.failures[str(base_id)] = (int(status), count)
        return 200, {"base": base_id, "status": status, "count": count}


def _control_error(message: str) -> JSON:
    return {"error": {"type": "INVALID_REQUEST_UNKNOWN", "message": message}}


def _by_field_id(body: JSON, request: Request) -> bool:
    return _bool_param(body.get("returnFieldsByFieldId", request.param("returnFieldsByFieldId") or False))


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when it is larger than MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if size <= MAX_BODY_BYTES else None


async def _respond(send: Send, status: int, payload: Any) -> None:
    body = msgspec.json.encode(payload)
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_emulator_app(
    seed: dict[str, Any] | str | Path | None = None,
    *,
    tokens: Sequence[str] = (DEFAULT_TOKEN,),
    requests_per_second: int = 5,
    penalty_seconds: float = 30.0,
    requests_per_second_per_token: int = 50,
) -> EmulatorApp:
    """An Airtable emulator seeded from ``seed`` (None: the packaged default seed).

    More than ``requests_per_second`` requests to one base, or ``requests_per_second_per_token`` with one
    token, within a second answer 429, and so does every request to that base (or with that token) for
    ``penalty_seconds``; 0 turns a limit off.
    """
    if min(requests_per_second, requests_per_second_per_token) < 0 or penalty_seconds < 0:
        raise ValueError("the rate limits and penalty_seconds must not be negative")
    store = Store(read_seed(seed))
    traffic = Traffic(requests_per_second, penalty_seconds, requests_per_second_per_token)
    return EmulatorApp(store, list(tokens), traffic)
