"""The proxy relays every legal upstream answer correctly: an upstream that writes exact bytes on a
raw socket, the gateway served by uvicorn with its own protocol (gateway/transport/serving.py) on loopback,
and a client that reads the bytes the gateway sends back.

Chunked trailers never arrive as response headers; a proxied answer carries one ``Date``; a 304
with its representation's ``Content-Length`` (RFC 9110 §8.6) has no body and leaves the client's
connection usable. Then the upstream connection pool (gateway/transport/http1.py): a connection the upstream
closed is never handed to a waiting request, and a waiter that gives up just as it is woken passes
the wake-up on."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn

from gateway.app import create_app
from gateway.transport.http1 import Connection, ConnectionPool
from gateway.transport.serving import GatewayHttpProtocol
from tests.conftest import eventually
from tests.gateway.conftest import USERS, SettingsFactory, access_token
from tests.gateway.loopback import LoopbackServer, next_head, serving

HANG_GUARD_SECONDS = 10
READ_TIMEOUT_SECONDS = 3.0  # a request handed a dead connection would wait this long, then fail
ORIGIN_DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"

# What the upstream writes for each path, byte for byte; "/close-after" also ends the connection.
ANSWERS = {
    "/trailers": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
    b"trailer: x-checksum, x-upstream-secret\r\n\r\n"
    b"6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: sha256=abc\r\nx-upstream-secret: internal\r\n\r\n",
    "/dated": b"HTTP/1.1 200 OK\r\ndate: " + ORIGIN_DATE + b"\r\ncontent-length: 5\r\n\r\ndated",
    "/undated": b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nundated",
    "/not-modified": b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\ncontent-length: 1234\r\n'
    b"cache-control: max-age=60\r\n\r\n",
    "/plain": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain",
    "/close-after": b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbye.",
}


class ScriptedUpstream(LoopbackServer):
    """Reads each request head (no bodies) and writes ``ANSWERS[path]``."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while (head := await next_head(reader)) is not None:
            path = head.split(b" ", 2)[1].decode().partition("?")[0].removeprefix(USERS)
            writer.write(ANSWERS[path])
            await writer.drain()
            if path == "/close-after":
                return  # a keep-alive answer, then the upstream closes (a restart, an idle timeout)


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with serving(ScriptedUpstream()) as server:
        yield server


@pytest.fixture
async def gateway_port(make_settings: SettingsFactory, upstream: ScriptedUpstream) -> AsyncIterator[int]:
    """The gateway in front of the scripted upstream, served as in production."""
    app = create_app(make_settings(rate_limit_burst=1000), proxied={USERS: upstream.url})
    config = uvicorn.Config(app, http=GatewayHttpProtocol, lifespan="on", log_config=None, access_log=False)
    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    await eventually(lambda: server.started, "the gateway to listen")
    try:
        yield listening.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
        listening.close()


class Answer:
    def __init__(self, status: int, head: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.head = head
        self.body = body

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.head if key == name]


class Client:
    """One keep-alive connection to the gateway, reading answers exactly as framed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.authorization = f"Bearer {access_token()}".encode()

    async def get(self, path: str, *extra: bytes) -> Answer:
        fields = b"".join(field + b"\r\n" for field in extra)
        self.writer.write(
            b"GET %b HTTP/1.1\r\nhost: gateway\r\nauthorization: %b\r\n%b\r\n"
            % ((USERS + path).encode(), self.authorization, fields)
        )
        async with asyncio.timeout(HANG_GUARD_SECONDS):
            return await self._answer()

    async def _answer(self) -> Answer:
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
        status = int(status_line.split(b" ")[1])
        head = [(name.lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]
        answer = Answer(status, head, b"")
        if status in (204, 304):
            return answer
        if answer.values(b"transfer-encoding") == [b"chunked"]:
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                answer.body += (await self.reader.readexactly(size + 2))[:-2]
            answer.body += await self.reader.readuntil(b"\r\n")  # the end: trailers, if any, then CRLF
        else:
            answer.body = await self.reader.readexactly(int(answer.values(b"content-length")[0]))
        return answer


@pytest.fixture
async def client(gateway_port: int) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()


async def test_chunked_trailers_never_arrive_as_response_headers(client: Client) -> None:
    answer = await client.get("/trailers")
    assert answer.status == 200
    assert answer.body == b"hello world\r\n"  # the body, then an end without trailers
    names = {name for name, _ in answer.head}
    assert not names & {b"x-checksum", b"x-upstream-secret", b"trailer"}, answer.head
    assert (await client.get("/plain")).body == b"plain"  # the connection is still in step


async def test_a_proxied_answer_carries_one_date(client: Client) -> None:
    assert (await client.get("/dated")).values(b"date") == [ORIGIN_DATE]  # the origin's, as RFC 9110 §6.6.1
    undated = await client.get("/undated")
    assert len(undated.values(b"date")) == 1  # the gateway's, when the origin sent none
    assert undated.values(b"date") != [ORIGIN_DATE]


async def test_a_304_with_its_representations_length_has_no_body_and_keeps_the_connection(
    client: Client, upstream: ScriptedUpstream
) -> None:
    answer = await client.get("/not-modified", b'if-none-match: "v1"')
    assert answer.status == 304
    assert answer.values(b"content-length") == [b"1234"]  # the representation's, relayed as is
    assert answer.values(b"etag") == [b'"v1"']
    for _ in range(2):  # the same client connection answers on, in step: no body was sent
        assert (await client.get("/plain")).body == b"plain"
    assert upstream.connections == 1


# -- the upstream connection pool --------------------------------------------------------------


async def exchange(connection: Connection, path: str) -> tuple[int, bytes]:
    connection.start(b"GET %b HTTP/1.1\r\nhost: upstream\r\n\r\n" % (USERS + path).encode(), head_only=False)
    status, _ = await connection.response_head()
    return status, b"".join([piece async for piece in connection.body_pieces()])


async def one_turn_at_a_time(until: Callable[[], object]) -> None:
    """Yield to the event loop one turn at a time until ``until()`` holds (bounded): the tests below
    act in the one turn between two steps of the pool, so no coarser wait (an Event, polling) fits."""
    async with asyncio.timeout(HANG_GUARD_SECONDS):
        while not until():  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_a_connection_the_upstream_closed_is_never_handed_to_a_waiting_request(
    upstream: ScriptedUpstream,
) -> None:
    """The upstream answers with keep-alive, then closes. The pool learns it in two steps: the
    transport is closing at once, ``connection_lost`` comes a turn later. A connection released in
    between used to go to the request waiting for the pool, which then waited the full read timeout."""
    pool = ConnectionPool(upstream.url, limit=1, read_timeout=READ_TIMEOUT_SECONDS)
    try:
        connection = await pool.acquire(HANG_GUARD_SECONDS)
        assert await exchange(connection, "/close-after") == (200, b"bye.")
        waiting = asyncio.create_task(pool.acquire(HANG_GUARD_SECONDS))
        await one_turn_at_a_time(lambda: pool.waiters)
        await one_turn_at_a_time(lambda: connection.transport is not None and connection.transport.is_closing())
        pool.release(connection)  # the upstream's close is known, connection_lost not yet run
        handed = await asyncio.wait_for(waiting, HANG_GUARD_SECONDS)
        assert handed is not connection
        assert await asyncio.wait_for(exchange(handed, "/plain"), HANG_GUARD_SECONDS) == (200, b"plain")
        assert upstream.connections == 2
        pool.release(handed)
    finally:
        pool.close()


async def test_a_waiter_that_gives_up_as_it_is_woken_passes_the_wake_up_on(upstream: ScriptedUpstream) -> None:
    """Two requests wait for the pool's one connection; it closes, which wakes the first, and the
    first gives up (its connect timeout, here a cancel) in the same turn: the second is woken instead
    of waiting until its own timeout."""
    pool = ConnectionPool(upstream.url, limit=1, read_timeout=READ_TIMEOUT_SECONDS)
    try:
        held = await pool.acquire(HANG_GUARD_SECONDS)
        first = asyncio.create_task(pool.acquire(HANG_GUARD_SECONDS))
        second = asyncio.create_task(pool.acquire(READ_TIMEOUT_SECONDS))  # ConnectTimeout if never woken
        await one_turn_at_a_time(lambda: len(pool.waiters) == 2)
        held.close()  # connection_lost, which frees the slot and wakes the first waiter, runs next turn
        asyncio.get_running_loop().call_soon(first.cancel)  # ... and right after it, in the same turn
        with pytest.raises(asyncio.CancelledError):
            await first
        connection = await asyncio.wait_for(second, HANG_GUARD_SECONDS)
        assert await asyncio.wait_for(exchange(connection, "/plain"), HANG_GUARD_SECONDS) == (200, b"plain")
        pool.release(connection)
    finally:
        pool.close()
