"""uvicorn's httptools protocol with a leaner path for each request; everything else is uvicorn's.

A quarter of a proxied request's gateway CPU went to uvicorn's protocol (docs/PERFORMANCE.md,
"Where the remaining µs go"). Three parts of that are per-request work a proxy can do with less:

* **The response head.** uvicorn checks each header name and value with a regex of its own (two
  searches per header, a proxied response has about 15) and writes the head as soon as the app
  sends ``http.response.start``, then each body piece on its own: two ``send`` system calls for
  every small response (on loopback each also runs the receiver's TCP processing). Here the same
  checks run once over all names and once over all values (a byte is refused in the joined bytes
  exactly when it is refused in one of the parts), the ``Date`` line is encoded once a second,
  and the head waits for the first body piece to leave in the same write; a head left alone (a
  ``HEAD`` answer, a stream whose first piece is slow) leaves at the end of the event-loop turn.
* **The keep-alive timer.** uvicorn cancels it when a request arrives and arms a new one after
  every response. Here one timer per connection notes when the connection fell idle and, when it
  fires on a connection that has been busy since, is armed again for the rest of the timeout.
  The same timer gives request heads a deadline, which uvicorn has none of: a connection that
  sends no complete head within ``HEAD_TIMEOUT_SECONDS`` of opening, or of a request's first byte,
  is closed (with a 408 problem if part of a head came), so slow-header clients (slowloris,
  RELIABILITY F6) cannot hold connections open.
* **Heads that cannot be served.** At most ``MAX_HEAD_BYTES`` of request line and header fields and
  ``MAX_HEADER_FIELDS`` fields (431; uvicorn's httptools protocol has no limit), counted as the
  parser hands them over and, for a head still arriving, as its bytes come in (F5). A request that
  is not valid HTTP/1.1 — smuggling attempts such as CL.TE, TE.CL, two lengths or an unknown
  ``Transfer-Encoding``, all refused by llhttp — gets a 400 (F4). Both are the platform's
  problem+json instead of uvicorn's plain text, and both end the connection.
* **The scope.** Its constant part is built once per connection.

Behaviour is uvicorn's: the same scope, status lines, framing (``Content-Length``, chunked, none for
``HEAD``/204/304), ``Connection: close`` handling, 100-continue, pipelining, flow control,
concurrency limit, graceful shutdown and errors (``tests/gateway/test_serving.py`` runs both
protocols over real sockets and compares the bytes). Two differences, where uvicorn breaks a legal
answer an upstream gives: a response whose app set ``Date`` (a proxied one, the origin's) gets no
second ``Date``; and a 204 or 304 that carries its representation's ``Content-Length`` (RFC 9110
§8.6) is sent without a body instead of failing as "shorter than Content-Length".
"""

import asyncio
import operator
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

HEAD_TIMEOUT_SECONDS = 10.0  # from a connection's start, or a request's first byte, to the end of its head
MAX_HEAD_BYTES = 32 * 1024  # request line and header fields (a JWT is ≈ 1 KiB, cookies at most 4 KiB)
MAX_HEADER_FIELDS = 100


def _refusal(status: int, code: str, detail: str) -> bytes:
    """A complete ``Connection: close`` answer with the platform's problem+json body (RFC 9457)."""
    title = STATUS_LINE[status].split(b" ", 2)[2].strip()
    body = b'{"type":"/problems/%b","title":"%b","status":%d,"detail":"%b","code":"%b"}' % (
        code.encode(),
        title,
        status,
        detail.encode(),
        code.encode(),
    )
    return STATUS_LINE[status] + (
        b"content-type: application/problem+json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b"
        % (len(body), body)
    )


_HEAD_TIMEOUT_RESPONSE = _refusal(408, "request-timeout", "The request head did not arrive in time.")
_BAD_REQUEST_RESPONSE = _refusal(400, "bad-request", "The request is not valid HTTP/1.1.")
_HEAD_TOO_LARGE_RESPONSE = _refusal(
    431,
    "request-header-fields-too-large",
    f"The request head is limited to {MAX_HEAD_BYTES // 1024} KiB and {MAX_HEADER_FIELDS} header fields.",
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past the limits."""


_JOIN_LIMIT = 64 * 1024  # a body piece larger than this leaves in its own write, not copied
_name = operator.itemgetter(0)
_value = operator.itemgetter(1)
_FIELD_JOIN = b": ".join


class GatewayCycle(RequestResponseCycle):
    """One request and its response: uvicorn's cycle with the head built and written as above."""

    held: bytes | None = None
    loop: asyncio.AbstractEventLoop
    bodiless = False  # an answer to HEAD, a 204 or a 304: never a body, whatever its Content-Length says

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            status = message["status"]
            self.bodiless = self.scope["method"] == "HEAD" or status in (204, 304)
            self.held = self._head(status, message.get("headers", ()))
            self.loop.call_soon(self._release)
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._send_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")

    def _head(self, status: int, headers: Any) -> bytes:
        head = self._plain_head(status, headers)
        return head if head is not None else self._any_head(status, headers)

    def _plain_head(self, status: int, headers: Any) -> bytes | None:
        """The head of a response whose header names are all lower case and which names neither
        ``Transfer-Encoding`` nor ``Connection`` (every proxied response: those are hop-by-hop),
        built and checked by C-level joins and searches; None for any other response."""
        names = b"".join(map(_name, headers))
        if not names.islower():
            return None
        fields = b"\r\n".join(map(_FIELD_JOIN, headers))
        lines = b"\n" + fields  # each header's name now follows a newline, and only there
        if b"\ntransfer-encoding: " in lines or b"\nconnection: " in lines:
            return None
        if HEADER_RE.search(names):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"".join(map(_value, headers))):
            raise RuntimeError("Invalid HTTP header value.")
        framing = b""
        length_at = lines.find(b"\ncontent-length: ")
        if length_at >= 0:
            start = length_at + len(b"\ncontent-length: ")
            end = lines.find(b"\r", start)
            self.expected_content_length = int(lines[start : end if end >= 0 else None].decode())
            self.chunked_encoding = False
        elif not self.bodiless:
            self.chunked_encoding = True
            framing = b"transfer-encoding: chunked\r\n"
        if not self.keep_alive:
            framing += b"connection: close\r\n"
        separator = b"\r\n" if fields else b""
        default_head = _default_head(self.default_headers, with_date=b"\ndate: " not in lines)
        return b"".join((STATUS_LINE[status], default_head, fields, separator, framing, b"\r\n"))

    def _any_head(self, status: int, headers: Any) -> bytes:
        """uvicorn's way, header by header."""
        names = []
        values = []
        lines = [STATUS_LINE[status], b""]  # the server's own headers go second, once the app's are known
        close_sent = False
        for name, value in headers:
            name = name.lower()
            names.append(name)
            values.append(value)
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                self.keep_alive = False
                close_sent = True
            lines += (name, b": ", value, b"\r\n")
        if HEADER_RE.search(b"".join(names)):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"".join(values)):
            raise RuntimeError("Invalid HTTP header value.")
        lines[1] = _default_head(self.default_headers, with_date=b"date" not in names)
        if not self.keep_alive and not close_sent:
            lines.append(b"connection: close\r\n")
        if self.chunked_encoding is None and not self.bodiless:
            self.chunked_encoding = True
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _send_body(self, body: bytes, more_body: bool) -> None:
        if self.bodiless:  # a 304's Content-Length is its representation's (RFC 9110 §8.6), never sent
            self.expected_content_length = 0
            data = b""
        elif self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        self._write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _write(self, data: bytes) -> None:
        held = self.held
        if held is None:
            if data:
                self.transport.write(data)
        elif len(data) <= _JOIN_LIMIT:
            self.held = None
            self.transport.write(held + data)
        else:
            self.held = None
            self.transport.write(held)
            self.transport.write(data)

    def _release(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():
                self.transport.write(held)


_default_heads: tuple[list[tuple[bytes, bytes]] | None, bytes, bytes] = (None, b"", b"")


def _default_head(default_headers: list[tuple[bytes, bytes]], with_date: bool) -> bytes:
    """uvicorn's default headers (``Date``, replaced by a new list every second) as head lines;
    without ``Date`` when the app gave its own (a proxied answer carries its origin's, RFC 9110 §6.6.1:
    one ``Date``, as uvicorn would send two)."""
    global _default_heads
    cached, head, head_without_date = _default_heads
    if cached is not default_headers:
        if HEADER_RE.search(b"".join(name for name, _ in default_headers)) or HEADER_VALUE_RE.search(
            b"".join(value for _, value in default_headers)
        ):
            raise RuntimeError("Invalid HTTP header.")
        lines = [(name.lower(), name.lower() + b": " + value + b"\r\n") for name, value in default_headers]
        head = b"".join(line for _, line in lines)
        head_without_date = b"".join(line for name, line in lines if name != b"date")
        _default_heads = (default_headers, head, head_without_date)
    return head if with_date else head_without_date


class GatewayHttpProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=GatewayHttpProtocol)``: uvicorn's protocol with ``GatewayCycle``,
    one timer per connection, and a deadline for request heads (RELIABILITY F6, slowloris)."""

    head_since: float | None = None  # since when a request head (or the first) is awaited; None once read
    idle_since: float | None = None  # when the last response finished; None while a request is in progress
    timer: asyncio.TimerHandle | None = None
    head_timeout = HEAD_TIMEOUT_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.scope_base = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
        }
        self.head_since = self.loop.time()  # a connection that never sends a head is closed too
        self._arm(self.head_since + self.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().connection_lost(exc)

    head_received = 0  # bytes fed to the parser while the current head stays incomplete
    head_size = 0  # the current head's target, names and values, as the parser hands them over

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._refuse(_HEAD_TOO_LARGE_RESPONSE)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(_BAD_REQUEST_RESPONSE)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.head_since is not None:  # the head is still incomplete: all of this was head
            self.head_received += len(data)
            if self.head_received > MAX_HEAD_BYTES:
                self._refuse(_HEAD_TOO_LARGE_RESPONSE)

    def send_400_response(self, msg: str) -> None:
        self._refuse(_BAD_REQUEST_RESPONSE)

    def _refuse(self, response: bytes) -> None:
        """Answer a request that cannot be read (as problem+json) and end the connection."""
        if not self.transport.is_closing():
            cycle = self.cycle
            if cycle is None or not cycle.response_started or cycle.response_complete:  # not inside an answer
                self.transport.write(response)
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD_BYTES or len(self.headers) >= MAX_HEADER_FIELDS:
            raise _HeadTooLarge()
        name = name.lower()  # as uvicorn's on_header, without a second call per header
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_message_begin(self) -> None:
        self.head_size = 0
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {**self.scope_base, "headers": self.headers, "state": self.app_state.copy()}  # type: ignore[typeddict-item]
        self.idle_since = None
        if self.head_since is None:
            self.head_since = self.loop.time()
            self._arm(self.head_since + self.head_timeout)

    def on_headers_complete(self) -> None:
        self.head_since = None
        self.head_received = 0
        parser = self.parser
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        http_version = parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root_path = self.root_path
        scope["path"] = root_path + path if root_path else path
        scope["raw_path"] = root_path.encode("ascii") + raw_path if root_path else raw_path
        scope["query_string"] = parsed_url.query or b""

        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")

        existing_cycle = self.cycle
        cycle = self.cycle = GatewayCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=False,  # the gateway writes its own access log (gateway/accesslog.py)
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        cycle.loop = self.loop
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: queued until the response before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self.idle_since = self.loop.time()
        self._arm(self.idle_since + self.timeout_keep_alive)

    def _arm(self, deadline: float) -> None:
        """The timer fires at ``deadline`` or before (then it looks again)."""
        timer = self.timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self.timer = self.loop.call_at(deadline, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """The timer: a head that takes too long ends the connection (with a 408 if part of it came),
        as does being idle past the keep-alive timeout; otherwise the timer waits for the next
        deadline. While a request is answered there is none: its response arms the timer again."""
        self.timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        answering = self.cycle is not None and not self.cycle.response_complete
        if self.head_since is not None:
            left = self.head_since + self.head_timeout - now
            if left <= 0 and answering:  # a pipelined head behind a response under way: after it
                left = self.head_timeout
            elif left <= 0:
                if self.headers is not None:  # a head had begun (the first one had, if any byte came)
                    self._refuse(_HEAD_TIMEOUT_RESPONSE)
                self.transport.close()
                return
        elif self.idle_since is not None:
            left = self.idle_since + self.timeout_keep_alive - now
            if left <= 0:
                self.transport.close()
                return
        else:
            return
        self.timer = self.loop.call_later(left, self._check_deadlines)
