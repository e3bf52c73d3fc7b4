"""One Lua script, called over one pipelined Redis connection: the gateway's per-request Redis call.

redis-py's asyncio client costs several times the round trip itself in CPU per command
(connection pool, retry wrapper, event dispatch, observability hooks, per-read timeouts; the
figures are in docs/PERFORMANCE.md). Every protected request makes exactly one such call (the rate limit and
the revocation check, see ``gateway.ratelimit``), so this module makes it directly: RESP2 over a
single TCP connection, requests pipelined in order, replies parsed by hiredis and matched first
in, first out. Same keys, same arguments (encoded as redis-py encodes them), same script, same
replies; failures are raised as redis-py's exceptions, so callers keep their ``RedisError``/
``OSError`` handling.

Only plain TCP URLs (``redis://``) take this path; TLS and Unix sockets keep redis-py's script
object (``for_client`` returns None).
"""

import asyncio
import collections
import hashlib
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.transport.deadlines import Deadlines


def _encode(value: Any) -> bytes:
    """An argument as redis-py's Encoder writes it (bytes as they are, numbers by repr, text as UTF-8)."""
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        raise DataError("Invalid input of type: 'bool'. Convert to a bytes, string, int or float first.")
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise DataError(f"Invalid input of type: {type(value).__name__!r}. Convert to a bytes, string, int or float first.")


def pack(*args: Any) -> bytes:
    """A command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + _bulk_strings(args)


def _bulk_strings(args: Any) -> bytes:
    parts = []
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is bytes:
            data = arg
        elif kind is int:
            data = b"%d" % arg  # repr(), as redis-py writes it
        else:
            data = _encode(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"Protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if not self.pending:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("Unexpected reply from Redis"))
                if self.transport is not None:
                    self.transport.close()
                return
            future = self.pending.popleft()
            if not future.done():  # a caller that timed out has gone; its reply is dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"Connection closed by server: {exc}" if exc else "Connection closed"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def request(self, command: bytes, replies: int = 1) -> list[asyncio.Future[Any]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self.pending.extend(futures)
        self._send(command, loop)
        return futures

    def request_one(self, command: bytes) -> "asyncio.Future[Any]":
        """``request(command)[0]``, the per-request case without the lists."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append(future)
        self._send(command, loop)
        return future

    def _send(self, command: bytes, loop: asyncio.AbstractEventLoop) -> None:
        # Commands issued in the same turn of the event loop leave in one write: one system call
        # for all the requests that uvicorn handed over together.
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(command)

    def _flush(self) -> None:
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class PipelinedScript:
    """``await script(keys=[...], args=[...])``: EVALSHA, falling back to EVAL once on NOSCRIPT."""

    def __init__(
        self,
        script: str,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.script = script.encode()
        self.sha = hashlib.sha1(self.script, usedforsecurity=False).hexdigest().encode()
        self._evalsha = _bulk_strings((b"EVALSHA", self.sha))
        self._eval = _bulk_strings((b"EVAL", self.script))
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        # One timer for every call in flight, not one each (gateway.transport.deadlines): ≤ timeout/4 late.
        self._deadlines = Deadlines(timeout, _expire) if timeout else None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def for_client(cls, redis: Redis, script: str) -> "PipelinedScript | None":
        """The fast path for ``redis``'s server, or None when its connection is not plain TCP."""
        pool = redis.connection_pool
        if pool.connection_class is not Connection:
            return None
        kwargs = pool.connection_kwargs
        if kwargs.get("protocol") not in (None, 2, "2") or kwargs.get("credential_provider") is not None:
            return None
        return cls(
            script,
            kwargs.get("host", "localhost"),
            int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db", 0) or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            timeout=kwargs.get("socket_timeout"),
            connect_timeout=kwargs.get("socket_connect_timeout"),
        )

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        return await self.call_packed(self.pack(keys, args))

    def pack(self, keys: list[str], args: list[Any]) -> bytes:
        """The EVALSHA command for ``keys`` and ``args`` (a caller may keep it for repeated calls)."""
        # pack(b"EVALSHA", sha, len(keys), *keys, *args) with its fixed head written once
        return b"*%d\r\n" % (3 + len(keys) + len(args)) + self._evalsha + _bulk_strings((len(keys), *keys, *args))

    async def call_packed(self, command: bytes) -> Any:
        """Send a command made by ``pack``: its reply, or EVAL of the script when Redis lost it."""
        reply = await self._call(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Redis restarted or flushed its scripts: EVAL once, which also caches it again. The
            # command after EVALSHA's name and digest (the keys and arguments) is EVAL's too.
            count, _, rest = command.partition(b"\r\n")
            reply = await self._call(count + b"\r\n" + self._eval + rest[len(self._evalsha) :])
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            raise NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
        return reply

    async def _call(self, command: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        future = protocol.request_one(command)
        deadlines = self._deadlines
        if deadlines is None:
            return await future
        deadlines.add(future)
        try:
            return await future
        except RedisTimeoutError:
            # Like redis-py on a socket timeout: drop the connection (the calls queued behind this
            # one fail with it); the next call opens a new one.
            protocol.close()
            raise
        finally:
            deadlines.discard(future)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
                setup = b""
                replies = 0
                if self.password is not None:
                    credentials = (self.username, self.password) if self.username else (self.password,)
                    setup += pack(b"AUTH", *credentials)
                    replies += 1
                if self.db:
                    setup += pack(b"SELECT", self.db)
                    replies += 1
                if replies:
                    for reply in await asyncio.gather(*protocol.request(setup, replies)):
                        if isinstance(reply, hiredis.ReplyError):
                            protocol.close()
                            raise RedisConnectionError(f"Redis refused the connection set-up: {reply}")
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout connecting to Redis at {self.host}:{self.port}") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis at {self.host}:{self.port}: {exc}") from exc
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


def _expire(future: Any) -> None:
    if not future.done():
        future.set_exception(RedisTimeoutError("Timeout reading from Redis"))
