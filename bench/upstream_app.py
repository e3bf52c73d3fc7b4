"""The upstream of the gateway-vs-nginx benchmark: a bare ASGI app, as cheap as Python serves HTTP.

    uvicorn bench.upstream_app:app --loop uvloop --http httptools --workers 1

``GET /api/v1/bench/item`` answers a small fixed JSON body; ``/health`` and ``/ready`` answer
200 (the gateway's readiness check calls ``/ready``); anything else is a 404. No framework, no
logging, no per-request allocation beyond the two messages, so whatever a proxy in front of it
adds shows up plainly.
"""

from typing import Any

ITEM_PATH = "/api/v1/bench/item"
ITEM_BODY = b'{"id":"rec0123456789abcd","name":"bench item","fields":{"status":"ok","count":42}}'

_JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ITEM_BODY)).encode())]
_OK = {"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS}
_ITEM = {"type": "http.response.body", "body": ITEM_BODY}
_PLAIN = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
_PLAIN_BODY = {"type": "http.response.body", "body": b"ok"}
_NOT_FOUND = {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]}
_EMPTY = {"type": "http.response.body", "body": b""}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == ITEM_PATH and scope["method"] == "GET":
        await send(_OK)
        await send(_ITEM)
    elif path in ("/health", "/ready"):
        await send(_PLAIN)
        await send(_PLAIN_BODY)
    else:
        await send(_NOT_FOUND)
        await send(_EMPTY)
