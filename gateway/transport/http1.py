"""A lean HTTP/1.1 client for the proxy: pooled keep-alive connections on asyncio protocols,
responses parsed by httptools (llhttp), both bodies streamed.

Why not aiohttp or httpx: measured side by side, each costs several times this client's CPU per
proxied request (docs/PERFORMANCE.md, "HTTP clients side by side"; `make bench-clients`).
This client does only what a reverse proxy needs, one exchange per connection at a time:

* the request head is written as given (the caller chooses the headers: no defaults added but
  ``Host``), the body streamed with ``Content-Length`` when known, chunked otherwise;
* the response is handed over as it arrives: status and headers, then body pieces (``Content-Length``,
  chunked or until close), reading paused while more than ``BUFFER_LIMIT`` bytes wait;
* timeouts: ``connect_timeout`` for a connection (waiting for a free pool slot included),
  ``read_timeout`` for every wait on the upstream (the head, each body piece, a full send buffer;
  checked by ``gateway.transport.deadlines``, so up to a quarter of it late);
* a connection goes back to the pool only after a complete exchange that both sides keep alive;
  idle ones are dropped after ``keepalive_seconds`` or as soon as the upstream closes them.

Errors: :class:`ConnectFailed` (nothing was sent), :class:`StaleConnection` (a reused connection
died before any byte of the response: the request may not have been seen), :class:`ReadTimeout`,
:class:`UpstreamProtocolError` (anything else after sending began).
"""

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from gateway.transport.deadlines import Deadlines

BUFFER_LIMIT = 256 * 1024


class UpstreamError(Exception):
    """The exchange with the upstream failed."""


class ConnectFailed(UpstreamError):
    """No connection could be made (refused, unreachable, name unknown)."""


class ConnectTimeout(UpstreamError):
    """No connection within the connect timeout."""


class StaleConnection(UpstreamError):
    """A pooled connection was closed by the upstream before any byte of the response arrived."""


class ReadTimeout(UpstreamError):
    """The upstream sent nothing for ``read_timeout`` seconds."""


class UpstreamProtocolError(UpstreamError):
    """The connection broke or the upstream's response was not valid HTTP/1.1."""


class Connection(asyncio.Protocol):
    """One keep-alive connection and the state of its current exchange."""

    def __init__(self, pool: "ConnectionPool") -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.reading_paused = False
        self.writing_paused = False
        self._start_exchange(head_only=False)

    def _start_exchange(self, head_only: bool) -> None:
        self.head_only = head_only  # a response to HEAD: no body whatever its headers say
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = True  # False once the final head is parsed: header fields after it are trailers
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.until_close = False  # a body delimited by the end of the connection
        self.error: UpstreamError | None = None
        self.abandoned = False  # the request was not sent whole: the connection's state is unknown
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.complete or self.error is not None:
            self.close()  # bytes nobody asked for: the connection is no longer in a known state
            return
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        if self.until_close and not self.complete:
            self.complete = True  # the end of the connection ends a body without a length
            self._wake()
        elif not self.complete:
            self._fail(
                StaleConnection("connection closed before a response")
                if self.reused and not self.received_any
                else UpstreamProtocolError(f"connection lost{f': {exc}' if exc else ''}")
            )
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailers of a chunked body are dropped: they were sent after the head the client already has,
        # and the ASGI server in front relays none.
        if self.in_head:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx informational: the real response follows
            self.headers = []
            return
        self.status = status
        self.in_head = False
        if not self.head_only and status not in (204, 304):
            names = {name for name, _ in self.headers}
            self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > BUFFER_LIMIT and not self.reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of a 1xx
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # -- the exchange ------------------------------------------------------------------------------

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until the protocol has news (data, the end, an error), at most the read timeout."""
        waiter = self.waiter = self.loop.create_future()
        deadlines = self.pool.deadlines
        deadlines.add(self)
        try:
            await waiter
        finally:
            deadlines.discard(self)
            self.waiter = None

    def time_out(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self._fail(ReadTimeout("no data from the upstream in time"))

    def start(self, head: bytes, head_only: bool) -> None:
        if self.closing:
            # Closed by the upstream since it was pooled: nothing would ever answer (nor wake) this exchange.
            raise StaleConnection("connection closed before the request")
        self._start_exchange(head_only)
        assert self.transport is not None
        self.transport.write(head)

    async def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.write(data)
        while self.writing_paused and self.error is None and self.status == 0:
            await self._wait()
        if self.error is not None:
            raise self.error

    async def response_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        while self.status == 0:
            if self.error is not None:
                raise self.error
            await self._wait()
        if self.head_only:
            self.complete = True
            self.keep_alive = False  # llhttp would read the next response as this one's body
        return self.status, self.headers

    def take_body(self) -> bytes:
        """Everything buffered (the whole body once ``complete``)."""
        piece = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        return piece

    async def body_pieces(self) -> AsyncIterator[bytes]:
        """The response body as it arrives; everything buffered is handed over at once."""
        while True:
            if self.body:
                piece = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                if self.reading_paused and self.transport is not None and not self.closed:
                    self.reading_paused = False
                    self.transport.resume_reading()
                yield piece
                continue
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            await self._wait()

    @property
    def closing(self) -> bool:
        """Closed, or on its way: the upstream's end of the connection may have arrived before
        ``connection_lost`` says so."""
        return self.closed or self.transport is None or self.transport.is_closing()

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and not self.until_close
            and not self.abandoned
            and not self.closing
            and self.error is None
        )

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class ConnectionPool:
    """Keep-alive connections to one origin, at most ``limit`` open; the most recently used first."""

    def __init__(self, base_url: str, limit: int, read_timeout: float, keepalive_seconds: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        self.host_header = (parts.netloc.rpartition("@")[2] if not default_port else parts.hostname).encode("idna")
        self.limit = limit
        self.read_timeout = read_timeout
        self.deadlines = Deadlines(read_timeout, lambda connection: cast(Connection, connection).time_out())
        self.keepalive_seconds = keepalive_seconds
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.open = 0  # connections open or being opened
        self.waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()

    async def acquire(self, connect_timeout: float) -> Connection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closing and time.monotonic() - connection.idle_since < self.keepalive_seconds:
                connection.reused = True
                return connection
            connection.close()
        try:
            async with asyncio.timeout(connect_timeout):
                while self.open >= self.limit:
                    waiter: asyncio.Future[Connection | None] = self.loop.create_future()
                    self.waiters.append(waiter)
                    try:
                        handed = await waiter
                    except BaseException:
                        self._pass_on(waiter)
                        raise
                    if handed is not None and not handed.closing:
                        handed.reused = True
                        return handed
                    # A free slot (None), or a connection the upstream closed after it was handed over
                    # (its slot is freed by ``lost``): look again.
                self.open += 1
                try:
                    _, connection = await self.loop.create_connection(
                        lambda: Connection(self),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                    )
                except BaseException:
                    self.open -= 1
                    self._wake_waiter()
                    raise
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {self.host}:{self.port} in time") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return connection

    def release(self, connection: Connection) -> None:
        """Back to the pool after a complete exchange, or closed."""
        if not connection.reusable:
            connection.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = now = time.monotonic()
        self.idle.append(connection)
        while self.idle and now - self.idle[0].idle_since >= self.keepalive_seconds:
            self.idle.pop(0).close()

    def lost(self, connection: Connection) -> None:
        """Called by the connection when it closes: a slot is free."""
        if connection in self.idle:
            self.idle.remove(connection)
        self.open -= 1
        self._wake_waiter()

    def _pass_on(self, waiter: "asyncio.Future[Connection | None]") -> None:
        """A waiter gave up (timed out, cancelled) just as it was woken: what it was handed, a
        connection or a free slot, goes to the next waiter instead of being lost."""
        if not waiter.done() or waiter.cancelled():
            return
        handed = waiter.result()
        if handed is not None:
            self.release(handed)
        else:
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # free to open a connection of its own
                return

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()
