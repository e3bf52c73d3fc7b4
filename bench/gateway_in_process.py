"""CPU per proxied request of the gateway's ASGI app called in-process, two code trees side by side.

    python -m bench.gateway_in_process [--trees .,DIR,.:traced] [--rounds 30] [--requests 3000]

For changes too small for wrk to tell apart on a host whose speed drifts (a few µs of a ≈ 100 µs
request). Each tree (a directory holding ``gateway/`` and ``shared/``) gets a worker process pinned
to CPU 1 that builds the gateway app with the benchmark's settings (``EXTRA_ROUTES`` to the bench
upstream on CPU 0, Redis under a temporary namespace, an HS256 token through the claims cache),
runs its lifespan and then, on each "go", calls the app directly: 50 tasks, ``--requests`` GETs of
the full protected path (path check, JWT, one Redis script call, the upstream over HTTP, usage,
metrics; no uvicorn, no client socket, access log off as nothing configures logging). Rounds
alternate between the trees, so both see the same host state; the report gives per tree the
minimum and median CPU µs per request and the median of its per-round ratio to the first tree.
A tree written ``DIR:traced`` runs with tracing on (shared/tracing.py: every span made, batched
and handed to an exporter that drops it), so tracing off, on and absent (an older tree) compare in
one run. See docs/PERFORMANCE.md, "Gateway vs nginx" and "Traces".
"""

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import HOST, clear_redis_namespace, free_port, say
from bench.gateway_vs_nginx import Pinning, Server, mint_access_token
from bench.upstream_app import ITEM_PATH

TASKS = 50
UPSTREAM_ARGS = ["bench.upstream_app:app", "--host", HOST, "--loop", "uvloop", "--http", "httptools"]
UPSTREAM_ARGS += ["--log-level", "warning", "--port"]
SECRET = "in-process-bench-" + "s" * 32


_KEPT: list[Any] = []


def trace_to_nowhere() -> None:
    """Tracing on in this worker, its spans batched and dropped (the cost of making them, not of a network)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from shared.tracing import tracing_installed
    from shared.tracing_sdk import Tracing

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    installed = tracing_installed(Tracing(BatchSpanProcessor(Dropped())))
    installed.__enter__()
    _KEPT.append(installed)  # for the worker's life: collected, it would uninstall tracing


def worker(upstream: str, redis_url: str, namespace: str, requests: int, traced: bool = False) -> None:
    """One tree's side: wait for a line on stdin, run a round, print its CPU µs per request."""
    os.environ.update(
        {
            "ENVIRONMENT": "development",
            "DATA_DIR": tempfile.mkdtemp(prefix="gw-in-process-"),
            "JWT_SECRET": SECRET,
            "EXTRA_ROUTES": f"/api/v1/bench={upstream}",
            "REDIS_URL": redis_url,
            "REDIS_NAMESPACE": namespace,
            "RATE_LIMIT_PER_MINUTE": "1000000000",
            "RATE_LIMIT_BURST": "1000000",
            "RATE_LIMIT_REDIS_TIMEOUT": "1",  # never degraded by the other worker's start-up
        }
    )
    import uvloop

    from gateway.app import create_app  # from the tree on PYTHONPATH

    if traced:
        trace_to_nowhere()

    headers = [(b"host", HOST.encode()), (b"authorization", b"Bearer " + mint_access_token(SECRET).encode())]

    async def run() -> None:
        app = create_app()
        to_app: asyncio.Queue[Any] = asyncio.Queue()
        from_app: asyncio.Queue[Any] = asyncio.Queue()
        lifespan_scope: Any = {"type": "lifespan", "asgi": {"version": "3.0"}}
        lifespan = asyncio.create_task(app(lifespan_scope, to_app.get, from_app.put))
        await to_app.put({"type": "lifespan.startup"})
        assert (await from_app.get())["type"] == "lifespan.startup.complete"
        statuses: list[int] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def client(count: int) -> None:
            for _ in range(count):
                scope: Any = {
                    "type": "http",
                    "asgi": {"version": "3.0", "spec_version": "2.3"},
                    "http_version": "1.1",
                    "server": (HOST, 8080),
                    "client": (HOST, 40000),
                    "scheme": "http",
                    "root_path": "",
                    "headers": list(headers),
                    "state": {},
                    "method": "GET",
                    "path": ITEM_PATH,
                    "raw_path": ITEM_PATH.encode(),
                    "query_string": b"",
                }
                await app(scope, receive, send)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(client(200 // TASKS + 1) for _ in range(TASKS)))  # warm-up
        print("ready", flush=True)
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
            statuses.clear()
            started = time.process_time()
            await asyncio.gather(*(client(requests // TASKS) for _ in range(TASKS)))
            seconds = time.process_time() - started
            if set(statuses) != {200}:
                raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
            print(f"{seconds / len(statuses) * 1e6:.3f}", flush=True)
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await lifespan

    uvloop.run(run())


def compare(trees: list[str], rounds: int, requests: int, redis_url: str) -> dict[str, list[float]]:
    namespace = f"bench-in-process-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="gw-in-process-") as workdir, contextlib.ExitStack() as stack:
        pinning = Pinning.choose("proxy")  # the app on one core, the upstream on the other
        port = free_port()
        upstream = Server(
            "upstream",
            [*Pinning.prefix(pinning.upstream), sys.executable, "-m", "uvicorn", *UPSTREAM_ARGS, str(port)],
            dict(os.environ),
            port,
            Path(workdir),
        )
        upstream.start("/health")
        stack.callback(upstream.stop)
        stack.callback(clear_redis_namespace, redis_url, namespace)
        workers = []
        for entry in trees:
            tree = Path(entry.removesuffix(":traced")).resolve()
            argv = [*Pinning.prefix(pinning.proxy), sys.executable, "-m", "bench.gateway_in_process", "--worker"]
            argv += [upstream.base_url, "--redis", redis_url, "--namespace", namespace, "--requests", str(requests)]
            argv += ["--traced"] if entry.endswith(":traced") else []
            process = subprocess.Popen(
                argv,
                # From the tree's directory: its gateway/ and shared/ come first (the bench from here).
                cwd=tree,
                env={**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{Path(__file__).resolve().parent.parent}"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            stack.callback(process.kill)
            if process.stdout is None or process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the worker for {tree} did not start")
            workers.append(process)
        results: dict[str, list[float]] = {tree: [] for tree in trees}
        for number in range(rounds):
            for tree, process in zip(trees, workers, strict=True):
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write("go\n")
                process.stdin.flush()
                results[tree].append(float(process.stdout.readline()))
            say(f"round {number + 1}: " + ", ".join(f"{t} {results[t][-1]:.1f} µs" for t in results))
        for process in workers:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(30)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_in_process", description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=".", help="comma-separated directories holding gateway/ and shared/")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round and tree")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--worker", metavar="UPSTREAM_URL", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.redis, args.namespace, args.requests, args.traced)
        return 0
    trees = [tree for tree in args.trees.split(",") if tree]
    results = compare(trees, args.rounds, args.requests, args.redis)
    first = results[trees[0]]
    print("\n| tree | min µs/request | median µs/request | ratio to the first (median of rounds) |")
    print("|---|---:|---:|---:|")
    for tree, values in results.items():
        ratio = statistics.median(value / base for value, base in zip(values, first, strict=True))
        print(f"| {tree} | {min(values):.1f} | {statistics.median(values):.1f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
