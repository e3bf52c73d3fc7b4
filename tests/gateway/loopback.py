"""Upstreams scripted byte by byte for the gateway's tests: a plain asyncio TCP server on loopback.

``LoopbackServer`` listens on 127.0.0.1 (a free port, kept when started again), counts and tracks
its connections and hands each one to ``handle``; ``stop`` stops listening and drops every open
connection, so from then on connections are refused. ``serving`` runs one for a test."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self, TypeVar


class LoopbackServer:
    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()
        self.server = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            await self.handle(reader, writer, self.connections)
        finally:
            self.writers.discard(writer)
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        """Serve one connection (the ``number``-th) until it should end."""
        raise NotImplementedError


async def next_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next request head, up to its blank line; None once the client has gone."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


Server = TypeVar("Server", bound=LoopbackServer)


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
