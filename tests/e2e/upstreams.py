"""Small upstream services for the gateway's process tests, run as real processes:

    python -m tests.e2e.upstreams echo --port N
    python -m tests.e2e.upstreams slow --port N [--sleep 3]

Both are bare ASGI apps under uvicorn. Every path answers, except the control paths:

* ``GET /health`` and ``GET /ready``: 200, not counted (the gateway asks ``/ready`` by itself).
* ``GET /__arrivals``: ``{"count": n, "requests": [[method, path], ...]}`` for every other request.
* ``.../blob?size=N`` (echo): ``N`` bytes of :func:`blob`, streamed in 64 KiB chunks without a length.
* ``.../fast`` (slow): answers at once.
* ``.../status/N`` (echo): the echo with status ``N`` (a live service's own 503, say).

Anything else: the echo app answers with what it received (method, path, raw query, headers,
body length and SHA-256); the slow app first sleeps ``--sleep`` seconds.

With ``--wait-stdin`` the process imports everything, then binds only once a line arrives on
stdin, so a test can make the port start listening at a moment of its choosing.
"""

import argparse
import asyncio
import hashlib
import json
import sys
from typing import Any
from urllib.parse import parse_qs

import uvicorn

CHUNK = 64 * 1024


def blob(size: int) -> bytes:
    """The echo app's deterministic response body of ``size`` bytes."""
    block = hashlib.sha256(b"pyairtable").digest() * (CHUNK // 32)
    return (block * (size // CHUNK + 1))[:size]


class Upstream:
    def __init__(self, mode: str, sleep: float) -> None:
        self.mode = mode
        self.sleep = sleep
        self.arrivals: list[list[str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path: str = scope["path"]
        if path in ("/health", "/ready"):
            await self.answer(send, {"status": "ok"})
            return
        if path == "/__arrivals":
            await self.answer(send, {"count": len(self.arrivals), "requests": self.arrivals})
            return
        self.arrivals.append([scope["method"], path])
        digest, length = hashlib.sha256(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            if not message.get("more_body", False):
                break
        if self.mode == "echo" and path.endswith("/blob"):
            size = int(parse_qs(scope["query_string"].decode())["size"][0])
            await self.stream(send, blob(size))
            return
        if self.mode == "slow" and not path.endswith("/fast"):
            await asyncio.sleep(self.sleep)
        await self.answer(
            send,
            {
                "method": scope["method"],
                "path": path,
                "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]],
                "body_length": length,
                "body_sha256": digest.hexdigest(),
            },
            int(path.rpartition("/")[2]) if "/status/" in path else 200,
        )

    @staticmethod
    async def answer(send: Any, document: dict[str, Any], status: int = 200) -> None:
        body = json.dumps(document).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def stream(send: Any, body: bytes) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for start in range(0, len(body), CHUNK):
            await send({"type": "http.response.body", "body": body[start : start + CHUNK], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.upstreams")
    parser.add_argument("mode", choices=["echo", "slow"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=3.0)
    parser.add_argument("--wait-stdin", action="store_true")
    args = parser.parse_args()
    if args.wait_stdin:
        sys.stdin.readline()
    uvicorn.run(Upstream(args.mode, args.sleep), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
