"""The Airtable gateway: cache-hit throughput, and a burst on one base against Airtable's limit.

    python -m bench.airtable_gateway [--seconds 5] [--rounds 3] [--connections 1,20] [--burst 100]
                                     [--redis URL] [--json PATH]

Started on free 127.0.0.1 ports, all as subprocesses of this run: the Airtable emulator
(``python -m airtable_gateway emulator``: 5 requests/s per base, 30 s penalty), the Airtable
gateway (``python -m airtable_gateway serve``, SQLite in a temp dir, Redis under a temporary key
namespace), ``bench/upstream_app.py`` (a bare ASGI app), ``bench/litestar_floor.py`` (a Litestar
app with one fixed answer), ``bench/services_baseline.py`` (a minimal Litestar app doing a hit's
work) and the API gateway (``python -m gateway serve``) routing ``/api/v1/airtable`` to the
Airtable gateway, ``/api/v1/bench`` to the bare app, ``/api/v1/floor`` to the Litestar one and
``/api/v1/airtable/cached`` to the minimal one.

1. Cache hits, side by side (wrk, alternating targets each round): through the API gateway,
   ``trivial`` (a proxied GET of the bare app) and ``airtable-hit`` (a records page answered from
   the cache: JWT check again in the service, token lookup, cache read, ETag); and ``airtable-hit
   direct`` (the same without the API gateway). Headline: airtable-hit / trivial requests/s,
   against the goal of 0.8. Beside it, two ceilings for a hit that crosses a Litestar service:
   ``litestar floor`` (a proxied GET of the Litestar app that does nothing) and ``minimal hit``
   (the baseline of ``make bench-services``: the hit's work and nothing else, with the same
   libraries: PyJWT verifies the token, one Redis ``MGET`` checks revocation, one ``GET`` reads
   the cached answer), each over trivial.
2. Burst: ``--burst`` distinct record reads of one base sent at once, straight to the Airtable
   gateway. Airtable allows 5/s per base, so N reads cannot finish before (N - 1) / 5 s (the
   *floor*, 19.8 s for 100). Reported: wall time, floor / wall time, the emulator's 429 count
   (goal: 0) and the most requests the emulator saw in any one second (goal: <= 5).
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import redis

from bench.common import (
    SHARED_SETTING_NAMES,
    WRK_SCRIPT,
    LoggedServer,
    clear_redis_namespace,
    cpu_model,
    free_port,
    say,
    scrubbed_environ,
    sigterm_unwinds,
    utc_timestamp,
    uvicorn_argv,
    wrk_figures,
)
from bench.litestar_floor import FLOOR_PATH
from bench.upstream_app import ITEM_PATH
from shared.keys import hs256_kid

BASE, TABLE = "appEmuCrmBase0000", "tblEmuContacts000"
RECORDS_PATH = f"/api/v1/airtable/bases/{BASE}/tables/{TABLE}/records?page_size=5"
MINIMAL_HIT_PATH = "/api/v1/airtable/cached"  # bench/services_baseline.py's cache hit
HIT_GOAL = 0.8  # issue 16: a cache hit through the gateway >= 0.8x a trivial proxied GET


def server(name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path) -> LoggedServer:
    return LoggedServer(
        name,
        argv,
        env,
        port,
        workdir / f"{name}.log",
        startup_timeout=60,
        stop_timeout=10,
        tail_chars=3000,
        cwd=Path(__file__).resolve().parents[1],
    )


def start_bench_app(
    stack: contextlib.ExitStack, name: str, app: str, port: int, env: dict[str, str], workdir: Path
) -> LoggedServer:
    """One of bench/'s ASGI apps under uvicorn on ``port``, ready; ``stack`` stops it."""
    argv = [*uvicorn_argv(app, port), "--no-access-log", "--log-level", "warning"]
    started = server(name, argv, env, port, workdir)
    started.start("/health")
    stack.callback(started.stop)
    return started


def start_emulator(stack: contextlib.ExitStack, env: dict[str, str], workdir: Path) -> LoggedServer:
    """The Airtable emulator on a free port, ready; ``stack`` stops it."""
    port = free_port()
    argv = [sys.executable, "-m", "airtable_gateway", "emulator", "--port", str(port)]
    emulator = server("emulator", argv, env, port, workdir)
    emulator.start("/_emulator/health")
    stack.callback(emulator.stop)
    return emulator


BENCH_ORGANIZATION = str(uuid.uuid4())


def access_token(secret: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "pyairtable-auth",
        "aud": "pyairtable-api",
        "sub": str(uuid.uuid4()),
        "email": "bench@example.com",
        "roles": ["user"],
        "tid": BENCH_ORGANIZATION,  # granted every base by AIRTABLE_GRANT_ALL below
        "org_role": "member",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "at+jwt", "kid": hs256_kid(secret)})


def run_wrk(url: str, connections: int, seconds: int, token: str, script: Path) -> dict[str, Any]:
    threads = min(connections, 2)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    argv += ["-H", f"Authorization: Bearer {token}", url]
    return wrk_figures(argv, seconds)


async def burst(base_url: str, token: str, count: int) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=count + 5)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as client:
        started = time.monotonic()
        path = f"/api/v1/airtable/bases/{BASE}/tables/{TABLE}/records"
        responses = await asyncio.gather(
            *(client.get(path, params={"page_size": 1, "max_records": n + 1}) for n in range(count))
        )
        elapsed = time.monotonic() - started
    statuses = sorted({response.status_code for response in responses})
    if statuses != [200]:
        raise RuntimeError(f"burst answered {statuses}: {responses[-1].text[:300]}")
    return elapsed


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times)), default=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    connections = [int(part) for part in args.connections.split(",")]
    secret = secrets.token_urlsafe(48)
    namespace = f"bench-airtable-{uuid.uuid4().hex[:8]}"
    token = access_token(secret)
    base_env = scrubbed_environ(SHARED_SETTING_NAMES, ("AIRTABLE_", "GATEWAY_", "AUTH_"))
    with sigterm_unwinds(), contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-airtable-")))
        script = workdir / "report.lua"
        script.write_text(WRK_SCRIPT)
        stack.callback(clear_redis_namespace, args.redis, namespace)
        python = sys.executable

        service_port, upstream_port, floor_port, minimal_port, gateway_port = (free_port() for _ in range(5))
        emulator = start_emulator(stack, base_env, workdir)

        # What the Airtable gateway and the gateway both run with: one secret, one Redis namespace.
        platform_env = {
            **base_env,
            "DATA_DIR": str(workdir / "data"),
            "JWT_SECRET": secret,
            "REDIS_URL": args.redis,
            "REDIS_NAMESPACE": namespace,
            "LOG_LEVEL": "WARNING",
        }
        service_env = {
            **platform_env,
            "AIRTABLE_GATEWAY_PORT": str(service_port),
            "AIRTABLE_TOKEN": "emulator-token",
            "AIRTABLE_API_URL": emulator.base_url,
            "AIRTABLE_QUEUE_TIMEOUT": "120",
            "AIRTABLE_GRANT_ALL": "write",
            # The burst is one user's: allowed the whole queue, to measure it against the floor.
            "AIRTABLE_FAIR_SHARE_SECONDS": "120",
            "CACHE_TTL": "3600",
        }
        subprocess.run([python, "-m", "airtable_gateway", "migrate"], env=service_env, check=True, capture_output=True)
        service = server(
            "airtable-gateway", [python, "-m", "airtable_gateway", "serve"], service_env, service_port, workdir
        )
        service.start("/health")
        stack.callback(service.stop)

        upstream = start_bench_app(stack, "upstream", "bench.upstream_app:app", upstream_port, base_env, workdir)
        floor = start_bench_app(stack, "litestar-floor", "bench.litestar_floor:app", floor_port, base_env, workdir)
        minimal_env = {
            **base_env,
            "BASELINE_JWT_SECRET": secret,
            "BASELINE_REDIS_URL": args.redis,
            "BASELINE_REDIS_NAMESPACE": namespace,
            "BASELINE_AIRTABLE_CACHE_KEY": f"{namespace}:bench:airtable-answer",
        }
        minimal = start_bench_app(
            stack, "minimal-hit", "bench.services_baseline:app", minimal_port, minimal_env, workdir
        )

        gateway_env = {
            **platform_env,
            "GATEWAY_PORT": str(gateway_port),
            "AUTH_SERVICE_URL": "",
            "USER_SERVICE_URL": "",
            "ANALYTICS_SERVICE_URL": "",
            "AIRTABLE_GATEWAY_URL": service.base_url,
            "EXTRA_ROUTES": ",".join(
                [
                    f"/api/v1/bench={upstream.base_url}",
                    f"/api/v1/floor={floor.base_url}",
                    f"{MINIMAL_HIT_PATH}={minimal.base_url}",  # the longest prefix wins over /api/v1/airtable
                ]
            ),
            "RATE_LIMIT_PER_MINUTE": "100000000",
            "RATE_LIMIT_BURST": "1000000",
        }
        gateway = server("gateway", [python, "-m", "gateway", "serve"], gateway_env, gateway_port, workdir)
        gateway.start("/health")
        stack.callback(gateway.stop)

        targets = {
            "trivial": gateway.base_url + ITEM_PATH,
            "litestar floor": gateway.base_url + FLOOR_PATH,
            "minimal hit": gateway.base_url + MINIMAL_HIT_PATH,
            "airtable-hit": gateway.base_url + RECORDS_PATH,
            "airtable-hit direct": service.base_url + RECORDS_PATH,
        }
        for name, url in targets.items():  # warm: the cache entry, connections, JWT caches
            response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
        cached = httpx.get(targets["airtable-hit"], headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert cached.headers.get("x-cache") == "HIT", cached.headers
        with contextlib.closing(redis.Redis.from_url(args.redis)) as client:  # the very bytes of the service's hit
            client.set(minimal_env["BASELINE_AIRTABLE_CACHE_KEY"], cached.content, ex=3600)
        minimal_answer = httpx.get(targets["minimal hit"], headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert minimal_answer.content == cached.content, minimal_answer.text[:300]

        results: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in connections} for name in targets}
        for round_number in range(args.rounds):
            shift = round_number % len(targets)
            order = list(targets)[shift:] + list(targets)[:shift]
            for count in connections:
                for name in order:
                    figures = run_wrk(targets[name], count, args.seconds, token, script)
                    results[name][count].append(figures)
                    rps, p50 = figures["rps"], figures["p50_us"]
                    say(f"round {round_number + 1} c={count} {name}: {rps:.0f} req/s, p50 {p50} us")

        emulator_stats = httpx.post(f"{emulator.base_url}/_emulator/reset", timeout=10)
        emulator_stats.raise_for_status()
        say(f"burst: {args.burst} distinct reads of one base at once ...")
        elapsed = asyncio.run(burst(service.base_url, token, args.burst))
        stats = httpx.get(f"{emulator.base_url}/_emulator/stats", timeout=10).json()
        times = [entry["at"] for entry in stats["log"] if entry["base"] == BASE]

    floor = (args.burst - 1) / 5
    report: dict[str, Any] = {
        "when": utc_timestamp(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cache_hits": {
            name: {
                str(count): {
                    "rps": statistics.median(run["rps"] for run in runs),
                    "p50_us": statistics.median(run["p50_us"] for run in runs),
                    "p99_us": statistics.median(run["p99_us"] for run in runs),
                    "errors": sum(run["errors"] + run["status"] for run in runs),
                }
                for count, runs in by_count.items()
            }
            for name, by_count in results.items()
        },
        "burst": {
            "requests": args.burst,
            "seconds": round(elapsed, 2),
            "floor_seconds": floor,
            "floor_over_elapsed": round(floor / elapsed, 3),
            "upstream_429": sum(stats["throttled"].values()),
            "upstream_calls": len(times),
            "most_in_one_second": most_in_one_second(times),
        },
    }
    for count in connections:
        rps = {name: by_count[str(count)]["rps"] for name, by_count in report["cache_hits"].items()}
        report[f"hit_over_trivial_c{count}"] = round(rps["airtable-hit"] / rps["trivial"], 3)
        report[f"floor_over_trivial_c{count}"] = round(rps["litestar floor"] / rps["trivial"], 3)
        report[f"minimal_hit_over_trivial_c{count}"] = round(rps["minimal hit"] / rps["trivial"], 3)
    print(json.dumps(report, indent=2))
    for count in connections:
        hit = report[f"hit_over_trivial_c{count}"]
        say(
            f"{count} connection(s): airtable-hit / trivial {hit:.3f} "
            f"(goal >= {HIT_GOAL}: {'met' if hit >= HIT_GOAL else 'MISSED'}); the ceilings of a hit crossing a "
            f"Litestar service: litestar floor / trivial {report[f'floor_over_trivial_c{count}']:.3f}, "
            f"minimal hit / trivial {report[f'minimal_hit_over_trivial_c{count}']:.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.airtable_gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every target (default 3)")
    parser.add_argument("--connections", default="1,20", help="wrk connection counts (default 1,20)")
    parser.add_argument("--burst", type=int, default=100, help="distinct reads in the burst (default 100)")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--json", help="also write the report to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
