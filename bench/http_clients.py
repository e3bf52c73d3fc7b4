"""The gateway's upstream HTTP client, chosen by measurement: four async clients side by side.

    python -m bench.http_clients [--seconds 5] [--rounds 3] [--concurrency 1,50] [--json PATH]

Each client sends ``GET /api/v1/bench/item`` with the headers the proxy forwards (authorization,
X-Forwarded-*, X-Request-ID) to the bare upstream of the gateway benchmark (``bench/upstream_app.py``
under uvicorn + uvloop + httptools, pinned to the first CPU) over pooled keep-alive connections,
reads the whole body and checks the status, from N concurrent tasks for ``--seconds``; clients
alternate within each round (order rotated per round). This process runs on uvloop, pinned to the
second CPU, like the gateway in ``bench.gateway_vs_nginx``.

* ``httpx``: ``httpx.AsyncClient`` on its default transport (httpcore);
* ``httpx+aiohttp``: ``httpx.AsyncClient`` on ``httpx_aiohttp.AiohttpTransport`` (PyPI
  ``httpx-aiohttp``; reported as missing when not installed);
* ``aiohttp``: ``aiohttp.ClientSession`` (C parser), as the gateway used before;
* ``gateway.transport.http1``: the gateway's own pooled HTTP/1.1 client (``gateway/transport/http1.py``).

Reported per client and concurrency: requests/s, CPU µs per request of this process (the client's
whole cost: its Python, the event loop, the system calls), and the ratio of each client's CPU per
request to ``gateway.transport.http1``'s in the same round. CPU per request is the steadier figure on a
shared machine; requests/s also depends on the upstream and on whatever else runs.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop

from bench.common import HOST, LoggedServer, cpu_model, free_port, package_versions, say, utc_timestamp
from bench.upstream_app import ITEM_BODY, ITEM_PATH
from gateway.transport.http1 import ConnectionPool

POOL_SIZE = 200
HEADERS = {
    "authorization": "Bearer " + "x" * 300,
    "x-forwarded-for": "127.0.0.1",
    "x-forwarded-proto": "http",
    "x-forwarded-host": "127.0.0.1:8080",
    "x-request-id": "0123456789abcdef0123456789abcdef",
}
Get = Callable[[], Awaitable[None]]
ClientFactory = Callable[[str], contextlib.AbstractAsyncContextManager[Get]]


def httpx_get(client: httpx.AsyncClient, url: str, label: str) -> Get:
    """A checked GET of the item through ``client`` (``label`` names the client in an error)."""

    async def get() -> None:
        response = await client.get(url, headers=HEADERS)
        if response.status_code != 200 or response.content != ITEM_BODY:
            raise RuntimeError(f"{label}: {response.status_code}")

    return get


@contextlib.asynccontextmanager
async def httpx_default(url: str) -> AsyncIterator[Get]:
    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        yield httpx_get(client, url, "httpx")


@contextlib.asynccontextmanager
async def httpx_aiohttp_transport(url: str) -> AsyncIterator[Get]:
    from httpx_aiohttp import AiohttpTransport  # optional: pip install httpx-aiohttp

    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=30) as client:
        yield httpx_get(client, url, "httpx+aiohttp")


@contextlib.asynccontextmanager
async def aiohttp_session(url: str) -> AsyncIterator[Get]:
    connector = aiohttp.TCPConnector(limit=POOL_SIZE, limit_per_host=POOL_SIZE, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_read=30)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def get() -> None:
            async with session.get(url, headers=HEADERS, timeout=timeout, allow_redirects=False) as response:
                body = await response.read()
                if response.status != 200 or body != ITEM_BODY:
                    raise RuntimeError(f"aiohttp: {response.status}")

        yield get


@contextlib.asynccontextmanager
async def gateway_http1(url: str) -> AsyncIterator[Get]:
    base = url.removesuffix(ITEM_PATH)
    pool = ConnectionPool(base, POOL_SIZE, read_timeout=30)
    fields = b"".join(f"{name}: {value}\r\n".encode() for name, value in HEADERS.items())
    head = b"GET " + ITEM_PATH.encode() + b" HTTP/1.1\r\nhost: " + pool.host_header + b"\r\n" + fields + b"\r\n"

    async def get() -> None:
        connection = await pool.acquire(2)
        try:
            connection.start(head, head_only=False)
            status, _ = await connection.response_head()
            body = b"".join([piece async for piece in connection.body_pieces()])
        except BaseException:
            connection.close()
            raise
        pool.release(connection)
        if status != 200 or body != ITEM_BODY:
            raise RuntimeError(f"gateway.transport.http1: {status}")

    try:
        yield get
    finally:
        pool.close()


CLIENTS: dict[str, ClientFactory] = {
    "httpx": httpx_default,
    "httpx+aiohttp": httpx_aiohttp_transport,
    "aiohttp": aiohttp_session,
    "gateway.transport.http1": gateway_http1,
}
REFERENCE = "gateway.transport.http1"


async def load(get: Get, concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` tasks calling ``get`` back to back for ``seconds``: requests/s, CPU µs per request."""
    deadline = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await get()
            done += 1

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {"requests": done, "rps": done / wall, "cpu_us": 1e6 * cpu / done if done else 0.0}


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    available: dict[str, ClientFactory] = {}
    missing: dict[str, str] = {}
    for name in args.clients:
        try:
            async with CLIENTS[name](url) as get:
                await get()
            available[name] = CLIENTS[name]
        except ImportError as exc:
            missing[name] = f"not installed ({exc.name})"
    rounds: list[dict[str, Any]] = []
    names = list(available)
    for number in range(1, args.rounds + 1):
        order = names[(number - 1) % len(names) :] + names[: (number - 1) % len(names)]
        results: dict[str, Any] = {}
        for concurrency in args.concurrency:
            for name in order:
                async with available[name](url) as get:
                    await load(get, concurrency, min(1.0, args.seconds))  # warm-up: pool, code paths
                    result = await load(get, concurrency, args.seconds)
                results[f"{name}@{concurrency}"] = result
                say(
                    f"round {number} {name:>14} c={concurrency:<3} {result['rps']:8.0f} req/s  "
                    f"{result['cpu_us']:6.1f} µs CPU/request"
                )
        rounds.append(results)
    return {"rounds": rounds, "clients": names, "missing": missing}


def summarise(report: dict[str, Any], concurrency: list[int]) -> list[dict[str, Any]]:
    rows = []
    for level in concurrency:
        for name in report["clients"]:
            runs = [r[f"{name}@{level}"] for r in report["rounds"]]
            row: dict[str, Any] = {
                "client": name,
                "concurrency": level,
                "rps": statistics.median(run["rps"] for run in runs),
                "cpu_us": statistics.median(run["cpu_us"] for run in runs),
            }
            if REFERENCE in report["clients"]:
                reference = [r[f"{REFERENCE}@{level}"]["cpu_us"] for r in report["rounds"]]
                ratios = [run["cpu_us"] / ref for run, ref in zip(runs, reference, strict=True)]
                row["cpu_over_reference"] = statistics.median(ratios)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], report: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"### HTTP clients side by side ({report['started_at']})",
        "",
        f"{args.rounds} rounds x {args.seconds:g} s per client and concurrency, clients alternating; "
        f"client process on uvloop pinned to CPU {args.client_cpu}, upstream on CPU {args.upstream_cpu}; "
        f"{os.cpu_count()} CPUs ({cpu_model() or 'unknown'}), Python {platform.python_version()}; "
        + ", ".join(f"{k} {v}" for k, v in report["packages"].items() if v),
        "",
        f"| client | concurrency | req/s | client CPU µs/request | CPU ÷ {REFERENCE} |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = f"{row['cpu_over_reference']:.2f}" if "cpu_over_reference" in row else "—"
        lines.append(f"| {row['client']} | {row['concurrency']} | {row['rps']:.0f} | {row['cpu_us']:.1f} | {ratio} |")
    for name, reason in report["missing"].items():
        lines.append(f"| {name} | — | — | {reason} | — |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every client (default 3)")
    parser.add_argument("--concurrency", default="1,50", help="comma-separated in-flight requests (default 1,50)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="subset of " + ",".join(CLIENTS))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if not args.concurrency or min(args.concurrency) < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--concurrency, --seconds and --rounds must be positive")
    if not set(args.clients) <= set(CLIENTS):
        parser.error("--clients: a subset of " + ",".join(CLIENTS))
    cpus = sorted(os.sched_getaffinity(0))
    args.upstream_cpu, args.client_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = utc_timestamp()
    with tempfile.TemporaryDirectory(prefix="bench_clients_") as workdir:
        port = free_port()
        pin = ["taskset", "-c", str(args.upstream_cpu)] if args.upstream_cpu is not None else []
        argv = [*pin, sys.executable, "-m", "uvicorn", "bench.upstream_app:app", "--host", HOST, "--port", str(port)]
        argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        upstream = LoggedServer(
            "upstream",
            argv,
            {**os.environ, "PYTHONUNBUFFERED": "1"},
            port,
            Path(workdir) / "upstream.log",
            startup_timeout=30,
            stop_timeout=15,
            tail_chars=3000,
        )
        upstream.start("/health")
        try:
            if args.client_cpu is not None:
                os.sched_setaffinity(0, {args.client_cpu})
            report = uvloop.run(measure(upstream.base_url + ITEM_PATH, args))
        finally:
            upstream.stop()
    report["started_at"] = started_at
    report["packages"] = package_versions(("httpx", "httpcore", "httpx-aiohttp", "aiohttp", "httptools", "uvloop"))
    rows = summarise(report, args.concurrency)
    print(markdown(rows, report, args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**report, "summary": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
