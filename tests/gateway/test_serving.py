"""The gateway's uvicorn protocol (gateway/transport/serving.py) answers byte for byte as uvicorn's own.

Both protocols serve the same ASGI app from real uvicorn servers on loopback; each case writes the
same raw bytes to both and compares what comes back (the ``Date`` value aside). Then the parts the
gateway's protocol does its own way: the head and first body piece in one write, a head left alone
still sent, the keep-alive timeout (an idle connection closed, a busy one kept), a deadline and
size limits for request heads, and problem+json for requests that are not valid HTTP/1.1
(smuggling attempts included, RELIABILITY F4-F6)."""

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.transport.serving import GatewayHttpProtocol

READ_SECONDS = 5
DATE = re.compile(rb"date: [^\r]+\r\n")


NAMES = {"case": "lower"}  # header names as the app gives them: "lower" or "title" (set per test)
# /slow-first-piece sends its piece once the test sets this (the servers share the test's loop).
FIRST_PIECE = {"release": asyncio.Event()}
# The request exchange() ends every conversation with: its answer closes the connection, so the
# end of what a server sends is seen, never guessed from a silence.
END = b"GET /end HTTP/1.1\r\nHost: x\r\n\r\n"
END_BODY = b"end-of-exchange"


async def start(send: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    """``http.response.start`` with an extra header, names in the case the test asked for: the
    gateway's protocol builds lower-case heads its own quick way and any other the long way."""
    headers = [*headers, (b"x-case", b"yes")]
    if NAMES["case"] == "title":
        headers = [(name.title(), value) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def app(scope: Any, receive: Any, send: Any) -> None:
    """One behaviour per path, covering every way an app frames a response."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await receive()
        return
    path = scope["path"]
    if path == "/length":
        body = b'{"ok":true,"path":"%b"}' % scope["raw_path"]
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await start(send, 200, headers)
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":  # no length: chunked, pieces as they come, an empty piece on the way
        await start(send, 200, [(b"x-stream", b"yes")])
        for piece in (b"one-", b"", b"two-", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow-first-piece":  # the head must not wait for a piece that takes its time
        await start(send, 200, [])
        await FIRST_PIECE["release"].wait()
        await send({"type": "http.response.body", "body": b"late"})
    elif path == "/end":
        headers = [(b"connection", b"close"), (b"content-length", str(len(END_BODY)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": END_BODY})
    elif path == "/echo":  # reads the whole body (100-continue, chunked or sized requests)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(b"content-length", str(len(body)).encode())]
        await start(send, 201, headers)
        await send({"type": "http.response.body", "body": body})
    elif path == "/empty":
        await start(send, 204, [])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/close":  # the app asks for the connection to end
        headers = [(b"connection", b"Keep-Alive, Close"), (b"content-length", b"3")]
        await start(send, 200, headers)
        await send({"type": "http.response.body", "body": b"bye"})
    elif path == "/bad-header":
        await start(send, 200, [(b"x-bad", b"a\r\nb")])
    elif path == "/bad-name":
        await start(send, 200, [(b"x bad", b"1"), (b"content-length", b"0")])
    elif path == "/fails":
        raise RuntimeError("the app failed before answering")
    elif path == "/dated":  # a proxied answer: the origin's Date
        await start(send, 200, [(b"date", b"Sun, 06 Nov 1994 08:49:37 GMT"), (b"content-length", b"2")])
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/not-modified":  # the representation's length (RFC 9110 §8.6), no body
        await start(send, 304, [(b"etag", b'"v1"'), (b"content-length", b"1234")])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/too-short":
        await start(send, 200, [(b"content-length", b"10")])
        await send({"type": "http.response.body", "body": b"abc"})
    else:
        await start(send, 404, [(b"content-length", b"0")])
        await send({"type": "http.response.body", "body": b""})


class Running:
    """A uvicorn server with ``protocol`` on a loopback socket that listens from the start."""

    def __init__(self, protocol: type[asyncio.Protocol], keep_alive: int = 5) -> None:
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=keep_alive,
        )
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.socket.getsockname()[1]
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        self.socket.close()


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, int]]:
    running = {"uvicorn": Running(HttpToolsProtocol), "gateway": Running(GatewayHttpProtocol)}
    yield {name: server.port for name, server in running.items()}
    for server in running.values():
        await server.stop()


async def exchange(port: int, data: bytes, *, until_closed: bool = False, pause_after: bytes | None = None) -> bytes:
    """Write ``data``; read everything the server sends until it closes the connection.

    Unless ``until_closed`` (the server is expected to close by itself), ``END`` follows the data:
    its answer closes the connection and is cut off from what is returned. READ_SECONDS per read
    only guards against a hang."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ending = b"" if until_closed else END
    try:
        if pause_after is not None:  # the body only after the server's 100 Continue
            head, _, rest = data.partition(pause_after)
            writer.write(head + pause_after)
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
            writer.write(rest + ending)
        else:
            interim = b""
            writer.write(data + ending)
        received = b""
        while piece := await asyncio.wait_for(reader.read(65536), READ_SECONDS):
            received += piece
        if ending and received.endswith(END_BODY):
            received = received[: received.rindex(b"HTTP/1.1 200 ", 0, len(received) - len(END_BODY))]
        return interim + received
    finally:
        writer.close()


async def exchange_both(servers: dict[str, int], data: bytes, **options: Any) -> dict[str, bytes]:
    answers = await asyncio.gather(*(exchange(port, data, **options) for port in servers.values()))
    return dict(zip(servers, answers, strict=True))


def same_bytes(answers: dict[str, bytes]) -> bytes:
    uvicorn_bytes, gateway_bytes = (DATE.sub(b"date: -\r\n", answers[name]) for name in ("uvicorn", "gateway"))
    assert gateway_bytes == uvicorn_bytes
    return gateway_bytes


GET = b"GET %b HTTP/1.1\r\nHost: example\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        pytest.param(GET % b"/length?q=1", b'{"ok":true,"path":"/length"}', id="content-length"),
        pytest.param(GET % b"/stream", b"4\r\none-\r\n4\r\ntwo-\r\n5\r\nthree\r\n0\r\n\r\n", id="chunked"),
        pytest.param(
            b"HEAD /length HTTP/1.1\r\nHost: x\r\n\r\n", b"content-length: 28\r\nx-case: yes\r\n\r\n", id="head"
        ),
        pytest.param(GET % b"/empty", b"HTTP/1.1 204 No Content\r\n", id="no-content"),
        pytest.param(GET % b"/close", b"connection: Keep-Alive, Close\r\n", id="app-closes"),
        pytest.param(b"GET /length HTTP/1.0\r\n\r\n", b"connection: close\r\n", id="http-1.0"),
        pytest.param(
            b"GET /length HTTP/1.1\r\nConnection: close\r\n\r\n", b"connection: close\r\n", id="client-closes"
        ),
        pytest.param(
            (GET % b"/length") + (GET % b"/stream") + (GET % b"/nowhere"), b"HTTP/1.1 404 Not Found", id="pipelined"
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"HTTP/1.1 201 Created\r\n",
            id="chunked-request",
        ),
        pytest.param(GET % b"/fails", b"HTTP/1.1 500 Internal Server Error\r\n", id="app-error"),
        pytest.param(GET % b"/bad-header", b"", id="invalid-header-value"),
        pytest.param(GET % b"/bad-name", b"", id="invalid-header-name"),
        pytest.param(GET % b"/too-short", b"abc", id="body-shorter-than-declared"),
    ],
)
@pytest.mark.parametrize("case", ["lower", "title"])
async def test_answers_byte_for_byte_as_uvicorn(
    servers: dict[str, int], request_bytes: bytes, expected: bytes, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(NAMES, "case", case)
    answer = same_bytes(await exchange_both(servers, request_bytes))
    assert expected in answer


@pytest.mark.parametrize("case", ["lower", "title"])
async def test_where_uvicorn_breaks_a_legal_answer(
    servers: dict[str, int], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app's own Date is the only one (uvicorn adds a second); a 304 with its representation's
    Content-Length has no body and the connection answers on (uvicorn fails it as too short)."""
    monkeypatch.setitem(NAMES, "case", case)
    answer = await exchange(servers["gateway"], (GET % b"/dated") + (GET % b"/not-modified") + (GET % b"/length"))
    dated, not_modified, length = answer.split(b"HTTP/1.1 ")[1:]
    assert DATE.findall(dated) == [b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"], dated
    assert not_modified.startswith(b"304 Not Modified\r\n") and not_modified.endswith(b"\r\n\r\n"), not_modified
    assert b"content-length: 1234\r\n" in not_modified.lower()
    assert length.startswith(b"200 OK\r\n") and length.endswith(b'{"ok":true,"path":"/length"}')
    assert len(DATE.findall(length)) == 1


async def test_pipelined_requests_answered_in_order(servers: dict[str, int]) -> None:
    data = (GET % b"/length?first") + (GET % b"/stream") + (GET % b"/length?third")
    answer = same_bytes(await exchange_both(servers, data))
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.index(b"/length") < answer.index(b"three") < answer.rindex(b"/length")


async def test_expect_100_continue(servers: dict[str, int]) -> None:
    data = b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
    answer = same_bytes(await exchange_both(servers, data, pause_after=b"\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n")
    assert answer.endswith(b"\r\n\r\nhello")


async def test_a_small_response_leaves_in_one_write(servers: dict[str, int]) -> None:
    """Head and body in one segment: read once, the whole response is there."""
    reader, writer = await asyncio.open_connection("127.0.0.1", servers["gateway"])
    try:
        writer.write(GET % b"/length")
        first_read = await asyncio.wait_for(reader.read(65536), READ_SECONDS)
        assert first_read.endswith(b'\r\n\r\n{"ok":true,"path":"/length"}')
    finally:
        writer.close()


async def test_a_head_is_not_held_back_for_a_slow_first_piece(servers: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", servers["gateway"])
    FIRST_PIECE["release"] = asyncio.Event()
    try:
        writer.write(GET % b"/slow-first-piece")
        # The app holds its first piece until the head has arrived here.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        FIRST_PIECE["release"].set()
        assert await asyncio.wait_for(reader.read(65536), READ_SECONDS) == b"4\r\nlate\r\n0\r\n\r\n"
    finally:
        FIRST_PIECE["release"].set()
        writer.close()


async def test_keep_alive_timeout_closes_idle_connections_only() -> None:
    server = Running(GatewayHttpProtocol, keep_alive=1)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Busy across the timeout: a request every 0.3 s for 1.8 s keeps the connection open.
        for _ in range(6):
            writer.write(GET % b"/length")
            assert (await asyncio.wait_for(reader.readuntil(b'"/length"}'), READ_SECONDS)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.3)
        # Then idle: closed by the server within the timeout (+ one re-arm).
        assert await asyncio.wait_for(reader.read(65536), READ_SECONDS) == b""
        writer.close()
    finally:
        await server.stop()


class QuickHeads(GatewayHttpProtocol):
    head_timeout = 0.5


async def test_a_head_that_trickles_in_gets_a_408_and_the_connection_ends() -> None:
    """Slowloris (RELIABILITY F6): a byte of the head now and then does not keep a connection."""
    server = Running(QuickHeads, keep_alive=5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for piece in (b"GET /len", b"gth HTTP/1.1\r\n", b"Host: x\r\n", b"X-Slow: 1\r\n"):
            writer.write(piece)
            await asyncio.sleep(0.2)
        answer = await asyncio.wait_for(reader.read(65536), READ_SECONDS)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\n")
        assert b'"code":"request-timeout"' in answer
        assert await asyncio.wait_for(reader.read(65536), READ_SECONDS) == b""  # closed
        writer.close()
    finally:
        await server.stop()


async def test_a_connection_that_sends_nothing_is_closed_silently() -> None:
    server = Running(QuickHeads, keep_alive=5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(65536), READ_SECONDS) == b""
        writer.close()
    finally:
        await server.stop()


async def test_the_head_deadline_spares_a_slow_response_and_a_client_that_keeps_up() -> None:
    """The deadline is for heads only: a response that takes longer than it, a head that arrives in
    pieces within it, and a keep-alive connection's next request all go through."""
    server = Running(QuickHeads, keep_alive=5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /slow-first-piece HTTP/1.1\r\nHost: x\r\n\r\n")  # answered after 0.3 s
        await asyncio.sleep(0.4)
        writer.write(b"GET /length HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"Host: x\r\n\r\n")
        answer = b""
        while b'"path":"/length"}' not in answer:
            answer += await asyncio.wait_for(reader.read(65536), READ_SECONDS)
        assert answer.count(b"HTTP/1.1 200 OK") == 2
        await asyncio.sleep(0.7)  # idle, past the head timeout but within the keep-alive one
        writer.write(GET % b"/length")
        assert (await asyncio.wait_for(reader.read(65536), READ_SECONDS)).startswith(b"HTTP/1.1 200 OK")
        writer.close()
    finally:
        await server.stop()


SMUGGLING = {
    "CL.TE": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "TE.CL": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"1\r\nX\r\n0\r\n\r\n",
    "two lengths": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhelloX",
    "xchunked": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
    "chunked, identity": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "bad chunk end": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "obs-fold": b"GET /length HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "LF in a value": b"GET /length HTTP/1.1\r\nHost: x\r\nX-A: a\nX-B: b\r\n\r\n",
    "CR in a value": b"GET /length HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "space in a name": b"GET /length HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
}
TOO_LARGE = {
    "a 40 KiB header": b"GET /length HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40 * 1024 + b"\r\n\r\n",
    "101 header fields": b"GET /length HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
    "10,000 header fields": b"GET /length HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(10_000)) + b"\r\n",
    "a 40 KiB target": b"GET /length?" + b"q" * 40 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


def problem_answer(answer: bytes, status: int, code: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"content-type: application/problem+json" in head and b"connection: close" in head
    assert json.loads(body) == json.loads(body) | {"status": status, "code": code}


@pytest.mark.parametrize("attempt", list(SMUGGLING), ids=list(SMUGGLING))
async def test_a_smuggling_attempt_is_a_400_problem_and_nothing_after_it_is_served(
    servers: dict[str, int], attempt: str
) -> None:
    """RELIABILITY F4: the request after the attempt, on the same connection, is never answered."""
    answer = await exchange(servers["gateway"], SMUGGLING[attempt] + GET % b"/length?smuggled", until_closed=True)
    problem_answer(answer, 400, "bad-request")  # the body is all JSON: no second answer follows
    assert b"smuggled" not in answer


@pytest.mark.parametrize("head", list(TOO_LARGE), ids=list(TOO_LARGE))
async def test_an_oversized_head_is_a_431_problem(servers: dict[str, int], head: str) -> None:
    """RELIABILITY F5: at most 32 KiB of request line and headers, at most 100 header fields."""
    answer = await exchange(servers["gateway"], TOO_LARGE[head], until_closed=True)
    problem_answer(answer, 431, "request-header-fields-too-large")


async def test_a_head_at_the_limits_is_served(servers: dict[str, int]) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(99)) + b"X-Big: " + b"a" * 30 * 1024 + b"\r\n"
    answer = await exchange(servers["gateway"], b"GET /length HTTP/1.1\r\n" + fields + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_an_oversized_head_sent_in_pieces_is_refused_before_it_ends(servers: dict[str, int]) -> None:
    """A head that keeps coming is cut off at the limit, not buffered whole."""
    reader, writer = await asyncio.open_connection("127.0.0.1", servers["gateway"])
    try:
        writer.write(b"GET /length HTTP/1.1\r\nX-Big: ")
        answer = b""
        for _ in range(64):  # 64 x 1 KiB, never finished
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.005)
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(65536), 0.005)
            if answer:
                break
        answer += await asyncio.wait_for(reader.read(65536), READ_SECONDS)
        problem_answer(answer, 431, "request-header-fields-too-large")
    finally:
        writer.close()
