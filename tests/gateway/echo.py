"""An upstream that answers with exactly what reached it, so tests can see what the gateway forwarded.

``Echo`` is a Litestar app (the gateway mounts Litestar apps in-process), but it answers HTTP
requests itself, before Litestar's router can rewrite the scope: the JSON it returns is the scope
the gateway built (method, path, raw_path, query string, every header) and the body it streamed.
Every request is also kept in ``seen``, so a test can assert that a refused request never arrived.

A few paths behave differently, for the upstream-failure tests:

* ``<prefix>/slow`` sleeps for ``slow_seconds`` before answering;
* ``<prefix>/crash`` raises before sending anything (the raw ASGI app fails);
* ``<prefix>/handler-error`` is a Litestar handler that raises (the service's own problem+json 500);
* ``<prefix>/status/<code>`` answers its echo with that status (a 500 the upstream sends itself);
* ``/schema/openapi.json`` is Litestar's own document.
"""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.types import Receive, Scope, Send

from shared.errors import EXCEPTION_HANDLERS
from tests.conftest import eventually


class Seen(msgspec.Struct):
    method: str
    path: str
    raw_path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: str
    client: list[Any] | None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


class Echo(Litestar):
    def __init__(self, prefix: str, slow_seconds: float = 5.0) -> None:
        @get(f"{prefix}/handler-error", sync_to_thread=False)
        def handler_error() -> None:
            raise RuntimeError("the upstream's handler failed")

        super().__init__(
            route_handlers=[handler_error],
            exception_handlers=EXCEPTION_HANDLERS,
            state=State({"readiness_checks": {}}),
            logging_config=None,
        )
        self.prefix = prefix
        self.slow_seconds = slow_seconds
        self.seen: list[Seen] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/schema") or path == f"{self.prefix}/handler-error":
            await super().__call__(scope, receive, send)
            return
        body = b""
        while True:
            message: Any = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        seen = Seen(
            method=scope["method"],  # type: ignore[typeddict-item]
            path=path,
            raw_path=scope.get("raw_path", b"").decode("latin-1"),
            query_string=scope.get("query_string", b"").decode("latin-1"),  # type: ignore[attr-defined]
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body=body.decode("latin-1"),
            client=list(scope["client"]) if scope.get("client") else None,
        )
        self.seen.append(seen)
        if path == f"{self.prefix}/crash":
            raise RuntimeError("the upstream crashed before answering")
        if path == f"{self.prefix}/slow":
            await asyncio.sleep(self.slow_seconds)
        payload = msgspec.json.encode(seen)
        status = int(path.rpartition("/")[2]) if path.startswith(f"{self.prefix}/status/") else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})


@contextlib.asynccontextmanager
async def served_over_http(app: Any, lifespan: str = "off", **config: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port for the block (its lifespan run with
    ``lifespan="on"``); yields its base URL."""
    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan=lifespan, log_config=None, access_log=False, **config))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        await eventually(lambda: server.started, "the server to listen")
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        listening.close()
