"""Analytics: event ingestion through the service vs raw PostgreSQL COPY, and query latency at
1,000,000 events.

    python -m bench.analytics_ingest [--postgres URL] [--events 30000] [--rounds 5] [--processes 1,2]
                                     [--concurrency 4] [--seed-events 1000000] [--json PATH]

1. Ingestion, in one run, alternating the two sides (api, copy, api, copy, ...) on the same table
   of a temporary database, each side writing ``--events`` new events per round in batches of
   1000 from ``--concurrency`` concurrent clients, one commit per batch:

   * api: ``POST /api/v1/analytics/events/batch`` to ``python -m analytics_service serve`` (a
     subprocess on a free loopback port; JSON bodies encoded before the clock starts). Each batch
     is validated item by item, deduplicated (``ON CONFLICT DO NOTHING RETURNING``), rolled up
     into ``event_hourly`` and committed before its 202.
   * copy: psycopg ``COPY events (...) FROM STDIN`` of the same kind of rows (built before the
     clock starts), one COPY and commit per batch, on as many connections.

   Ratio per round = api events/s ÷ copy events/s; the headline is the median (goal ≥ 0.5).
   Measured with one service process, then with two behind a round-robin client (the service is
   stateless and scales out; PostgreSQL's COPY uses a backend process per connection).

2. Queries: the events table is filled to ``--seed-events`` rows (``generate_series``; 30 days,
   1000 users), with the rollups the service keeps (per hour and type, per user and day, per hour
   and route as the gateway's usage records would make them); then ``ANALYZE``. Each of
   ``GET /dashboard`` (24 h and 30 days), ``/usage/me``, ``/usage/{id}?period=month&days=90`` and
   ``/costs`` (every user) is called ``--query-repeats`` times over HTTP; p50/p95 reported
   (goal < 200 ms each).

The temporary database is dropped at the end (also on Ctrl-C or SIGTERM).
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import msgspec
import psycopg
from psycopg import sql

from bench.common import (
    HOST,
    SHARED_SETTING_NAMES,
    LoggedServer,
    cpu_model,
    exit_on_sigterm,
    free_port,
    package_versions,
    say,
    scrubbed_environ,
    system_busy_seconds,
    utc_timestamp,
)
from shared.keys import hs256_kid

API = "/api/v1/analytics"
BATCH = 1000
GOAL_RATIO = 0.5
GOAL_QUERY_MS = 200.0
COLUMNS = (
    "event_id",
    "user_id",
    "session_id",
    "event_type",
    "properties",
    "ip",
    "user_agent",
    "occurred_at",
    "received_at",
)
ROUTES = ("/api/v1/airtable", "/api/v1/users", "/api/v1/auth", "/api/v1/analytics")


# -- data ------------------------------------------------------------------------------------


def event_item(users: list[str], n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": ("page_view", "record_created", "search")[n % 3],
        "user_id": users[n % len(users)],
        "session_id": f"s-{n % 97}",
        "properties": {"path": f"/bases/app{n % 50}", "n": n},
    }


def copy_row(item: dict[str, Any], now: datetime) -> tuple[Any, ...]:
    return (
        item["event_id"],
        item["user_id"],
        item["session_id"],
        item["event_type"],
        json.dumps(item["properties"]),
        "127.0.0.1",
        "bench/1.0",
        now,
        now,
    )


def seeded_user(n: int) -> str:
    """The id the seed SQL gives user n: ``md5('user-' || n)::uuid``."""
    return str(uuid.UUID(hashlib.md5(f"user-{n}".encode()).hexdigest()))  # noqa: S324 - an id, not security


def access_token(secret: str, user_id: str, roles: list[str]) -> str:
    now = int(time.time())
    claims = {
        "iss": "pyairtable-auth",
        "aud": "pyairtable-api",
        "sub": user_id,
        "email": "bench@example.com",
        "roles": roles,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "at+jwt", "kid": hs256_kid(secret)})


# -- the two ingestion sides -----------------------------------------------------------------


class _BatchCounts(msgspec.Struct):
    accepted: int


_batch_counts = msgspec.json.Decoder(_BatchCounts)


async def api_round(base_urls: list[str], token: str, bodies: list[bytes], concurrency: int) -> tuple[float, int]:
    """Seconds to send every batch (``concurrency`` in flight, spread over the service processes);
    events accepted. aiohttp and msgspec on the client: it shares the machine's cores with the
    service."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession, base_url: str) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(f"{base_url}{API}/events/batch", data=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 202:
                    raise RuntimeError(f"batch refused: {response.status} {payload[:300]!r}")
                accepted += _batch_counts.decode(payload).accepted

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, base_urls[i % len(base_urls)]) for i in range(concurrency)))
        return time.perf_counter() - started, accepted


async def copy_round(database_url: str, batches: list[list[tuple[Any, ...]]], concurrency: int) -> float:
    queue: asyncio.Queue[list[tuple[Any, ...]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    statement = sql.SQL("COPY events ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))

    async def worker(connection: psycopg.AsyncConnection[Any]) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            async with connection.transaction(), connection.cursor() as cursor, cursor.copy(statement) as copy:
                for row in batch:
                    await copy.write_row(row)

    connections = [await psycopg.AsyncConnection.connect(database_url) for _ in range(concurrency)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(connection) for connection in connections))
        return time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()


# -- seeding for the queries -----------------------------------------------------------------

SEED_SQL = [
    # 1000 users, events spread over the last 30 days, newest last.
    """
    INSERT INTO events (event_id, user_id, session_id, event_type, properties, ip, user_agent, occurred_at, received_at)
    SELECT gen_random_uuid(), md5('user-' || (n %% 1000))::uuid::text, 's-' || (n %% 5000),
           (ARRAY['page_view','record_created','search','llm_usage'])[1 + n %% 4],
           CASE WHEN n %% 4 = 3
                THEN jsonb_build_object('model', 'gpt-4o', 'prompt_tokens', 100, 'completion_tokens', 50,
                                        'cost_usd', 0.002)
                ELSE jsonb_build_object('path', '/bases/app' || (n %% 50)) END,
           '127.0.0.1', 'bench/1.0', t, t
    FROM (SELECT n, now() - interval '30 days' * (%(total)s - n) / %(total)s AS t
          FROM generate_series(1, %(total)s) AS n) AS s
    """,
    """
    INSERT INTO event_hourly (hour, event_type, shard, events, cost_usd)
    SELECT date_trunc('hour', occurred_at, 'UTC'), event_type, 0, count(*),
           coalesce(sum((properties->>'cost_usd')::numeric), 0)
    FROM events GROUP BY 1, 2
    ON CONFLICT (hour, event_type, shard) DO UPDATE
    SET events = event_hourly.events + excluded.events, cost_usd = event_hourly.cost_usd + excluded.cost_usd
    """,
    """
    INSERT INTO usage_daily (user_id, day, api_calls, airtable_calls, errors, bytes_in, tokens_used, cost_usd)
    SELECT user_id, (occurred_at AT TIME ZONE 'UTC')::date, count(*), count(*) / 2, count(*) / 100, 0,
           coalesce(sum(((properties->>'prompt_tokens')::int + (properties->>'completion_tokens')::int)), 0),
           coalesce(sum((properties->>'cost_usd')::numeric), 0)
    FROM events GROUP BY 1, 2
    ON CONFLICT (user_id, day) DO NOTHING
    """,
    """
    INSERT INTO cost_daily (day, user_id, service, model, calls, tokens_used, cost_usd)
    SELECT (occurred_at AT TIME ZONE 'UTC')::date, user_id, 'chat', properties->>'model', count(*),
           sum(((properties->>'prompt_tokens')::int + (properties->>'completion_tokens')::int)),
           sum((properties->>'cost_usd')::numeric)
    FROM events WHERE event_type = 'llm_usage' GROUP BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO endpoint_hourly (hour, route, calls, errors, latency_ms_total)
    SELECT hour, route, 1400, 7, 1400 * 12.5
    FROM generate_series(date_trunc('hour', now() - interval '30 days'), now(), interval '1 hour') AS hour,
         unnest(%(routes)s::text[]) AS route
    ON CONFLICT DO NOTHING
    """,
    "ANALYZE",
]


def seed(database_url: str, total: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("TRUNCATE events, event_hourly, usage_daily, cost_daily, endpoint_hourly")
        for statement in SEED_SQL:
            connection.execute(statement, {"total": total, "routes": list(ROUTES)})
    return time.perf_counter() - started


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def time_queries(base_url: str, admin: str, user_token: str, repeats: int) -> dict[str, dict[str, float]]:
    queries = {
        "dashboard 24h": (admin, f"{API}/dashboard?hours=24"),
        "dashboard 30d": (admin, f"{API}/dashboard?hours=720"),
        "usage/me 30 days": (user_token, f"{API}/usage/me?days=30"),
        "usage/{id} months, 90 days": (admin, f"{API}/usage/{seeded_user(8)}?period=month&days=90"),
        "costs, every user, 30 days": (admin, f"{API}/costs?days=30"),
    }
    results: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for name, (token, path) in queries.items():
            headers = {"Authorization": f"Bearer {token}"}
            for _ in range(3):  # warm-up: connections, plans, caches
                (await client.get(path, headers=headers)).raise_for_status()
            latencies = []
            for _ in range(repeats):
                started = time.perf_counter()
                response = await client.get(path, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
            results[name] = {
                "p50_ms": round(statistics.median(latencies), 1),
                "p95_ms": round(percentile(latencies, 95), 1),
                "max_ms": round(max(latencies), 1),
            }
    return results


# -- orchestration ---------------------------------------------------------------------------


@contextlib.contextmanager
def temporary_database(server_url: str) -> Iterator[str]:
    name = f"bench_analytics_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server_url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def service_env(database_url: str, data_dir: Path, port: int, secret: str, log_level: str) -> dict[str, str]:
    env = scrubbed_environ(SHARED_SETTING_NAMES, ("ANALYTICS_",))
    env.update(
        ANALYTICS_DATABASE_URL=database_url,
        ANALYTICS_PORT=str(port),
        DATA_DIR=str(data_dir),
        JWT_SECRET=secret,
        LOG_LEVEL=log_level,
        ANALYTICS_DB_STATEMENT_TIMEOUT_MS="60000",
    )
    return env


def start_services(count: int, database_url: str, work: Path, secret: str, log_level: str) -> list[LoggedServer]:
    servers = []
    for number in range(count):
        port = free_port()
        server = LoggedServer(
            f"analytics-{number}",
            [sys.executable, "-m", "analytics_service", "serve"],
            service_env(database_url, work, port, secret, log_level),
            port,
            work / f"analytics-{number}.log",
            startup_timeout=60,
            stop_timeout=20,
            tail_chars=3000,
        )
        servers.append(server)
        server.start("/ready")
    return servers


async def ingestion(args: argparse.Namespace, urls: list[str], database_url: str, token: str) -> dict[str, Any]:
    """Alternating rounds, api then copy, on the same table; the median of the per-round ratios."""
    users = [str(uuid.uuid4()) for _ in range(100)]
    await api_round(urls, token, [msgspec.json.encode({"events": [event_item(users, 0)]})], 1)  # warm-up
    rounds = []
    for round_number in range(1, args.rounds + 1):
        items = [event_item(users, n) for n in range(args.events)]
        bodies = [msgspec.json.encode({"events": items[i : i + BATCH]}) for i in range(0, len(items), BATCH)]
        busy_before = system_busy_seconds()
        api_seconds, accepted = await api_round(urls, token, bodies, args.concurrency)
        busy_api = _busy(busy_before, api_seconds)
        now = datetime.now(UTC)
        rows = [copy_row(event_item(users, n), now) for n in range(args.events)]
        batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
        busy_before = system_busy_seconds()
        copy_seconds = await copy_round(database_url, batches, args.concurrency)
        busy_copy = _busy(busy_before, copy_seconds)
        api_rate, copy_rate = accepted / api_seconds, args.events / copy_seconds
        entry = {
            "round": round_number,
            "api_events_per_s": round(api_rate),
            "copy_events_per_s": round(copy_rate),
            "ratio": round(api_rate / copy_rate, 3),
            "accepted": accepted,
            "cores_busy_api": busy_api,
            "cores_busy_copy": busy_copy,
        }
        say(f"{len(urls)} process(es), round {round_number}: {entry}")
        rounds.append(entry)
    median = statistics.median(entry["ratio"] for entry in rounds)
    return {"processes": len(urls), "rounds": rounds, "median_ratio": median, "met": median >= GOAL_RATIO}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_urlsafe(48)
    token = access_token(secret, str(uuid.uuid4()), ["admin", "user"])
    user_token = access_token(secret, seeded_user(7), ["user"])
    results: dict[str, Any] = {"machine": machine(), "goal_ratio": GOAL_RATIO, "ingestion": []}
    work = Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    servers: list[LoggedServer] = []
    try:
        with temporary_database(args.postgres) as database_url:
            subprocess.run(  # noqa: ASYNC221 - once, before anything is measured
                [sys.executable, "-m", "analytics_service", "migrate"],
                env=service_env(database_url, work, 0, secret, args.log_level),
                check=True,
                capture_output=True,
                timeout=120,
            )
            for count in args.processes:
                servers = start_services(count, database_url, work, secret, args.log_level)
                urls = [server.base_url for server in servers]
                results["ingestion"].append(await ingestion(args, urls, database_url, token))
                for server in servers:
                    server.stop()
                servers = []
            servers = start_services(1, database_url, work, secret, args.log_level)
            say(f"seeding {args.seed_events:,} events and their rollups ...")
            results["seed_seconds"] = round(seed(database_url, args.seed_events), 1)
            with psycopg.connect(database_url) as connection:
                row = connection.execute("SELECT count(*) FROM events").fetchone()
                results["events_in_table"] = int(row[0]) if row else 0
            queries = await time_queries(servers[0].base_url, token, user_token, args.query_repeats)
            results["queries"] = queries
            results["queries_met"] = all(q["p95_ms"] < GOAL_QUERY_MS for q in queries.values())
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def _busy(before: float | None, seconds: float) -> float | None:
    after = system_busy_seconds()
    if before is None or after is None or seconds <= 0:
        return None
    return round((after - before) / seconds, 2)


def machine() -> dict[str, Any]:
    return {
        "when": utc_timestamp(),
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "packages": package_versions(["litestar", "sqlalchemy", "psycopg", "msgspec", "uvicorn"]),
        "host": HOST,
    }


def report(results: dict[str, Any]) -> str:
    lines = ["| processes | round | api events/s | COPY events/s | ratio |", "|---|---|---|---|---|"]
    for row in results["ingestion"]:
        for entry in row["rounds"]:
            lines.append(
                f"| {row['processes']} | {entry['round']} | {entry['api_events_per_s']:,} "
                f"| {entry['copy_events_per_s']:,} | {entry['ratio']} |"
            )
    for row in results["ingestion"]:
        verdict = "met" if row["met"] else "NOT met"
        lines.append(
            f"\n{row['processes']} process(es): median ratio {row['median_ratio']} (goal >= {GOAL_RATIO}: {verdict})"
        )
    lines += [
        "",
        f"queries at {results['events_in_table']:,} events:",
        "| query | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|",
    ]
    for name, figures in results["queries"].items():
        lines.append(f"| {name} | {figures['p50_ms']} | {figures['p95_ms']} | {figures['max_ms']} |")
    lines.append(f"\nall p95 < {GOAL_QUERY_MS:.0f} ms: {'met' if results['queries_met'] else 'NOT met'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics_ingest", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--events", type=int, default=30_000, help="events per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight (both sides)")
    parser.add_argument(
        "--processes",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 2],
        help="service process counts to measure in turn, e.g. 1,2 (scale-out behind a balancer)",
    )
    parser.add_argument("--seed-events", type=int, default=1_000_000)
    parser.add_argument("--query-repeats", type=int, default=30)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    results = asyncio.run(run(args))
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
