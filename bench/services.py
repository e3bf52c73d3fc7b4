"""Each service's hottest routes, straight to the service, against a minimal app doing the same work.

    python -m bench.services [--seconds 5] [--rounds 3] [--connections 10] [--postgres URL]
                             [--redis URL] [--memory-requests 10000] [--no-embedded]
                             [--py-spy DIR] [--json PATH]

Started as subprocesses on free loopback ports, on PostgreSQL (temporary databases
``bench_services_<service>_<random>``, dropped afterwards) and Redis (a temporary key namespace,
deleted afterwards): the auth, user, analytics and Airtable gateway services (``python -m
<service> serve`` after ``migrate``, LOG_LEVEL INFO as deployed), the Airtable emulator, and
``bench/services_baseline.py`` (Litestar + psycopg pools + redis-py: verify the token, one MGET
of the revocation keys, the same SQL statement or, for the Airtable hit, one Redis GET).

Routes: ``GET /api/v1/users/me``, ``GET /api/v1/auth/me``, ``POST /api/v1/analytics/events``,
``GET /api/v1/analytics/usage/me`` and an Airtable records page answered from the cache. Each
round runs wrk (``--connections``, one thread) against the service and the baseline in turn,
alternating which goes first, and reads the server process's CPU time from /proc/<pid>/stat and
the machine's busy time from /proc/stat ("other load": cores busy with anything but the server
measured and wrk). Reported per route: requests/s both sides, their ratio (median of the
rounds; goal >= 0.7), server CPU ms per request both sides. Then memory: each service's VmRSS
after at least ``--memory-requests`` requests (goal <= 100 MB), and the embedded platform's
(``python -m embedded serve``, SQLite, in-memory stores) after as many through its gateway
(goal <= 200 MB). ``--py-spy DIR`` records each route's service once more, after the measured
rounds, for ``python -m bench.pyspy_breakdown DIR/*.txt``.
"""

import argparse
import contextlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.airtable_gateway import server, start_emulator
from bench.common import (
    HOST,
    SHARED_SETTING_NAMES,
    WRK_SCRIPT,
    LoggedServer,
    clear_redis_namespace,
    cpu_model,
    free_port,
    process_cpu_seconds,
    say,
    scrubbed_environ,
    sigterm_unwinds,
    system_busy_seconds,
    utc_timestamp,
    wrk_figures,
)
from shared import registry

GOAL_RATIO = 0.7
SERVICE_RSS_GOAL_MB = 100
EMBEDDED_RSS_GOAL_MB = 200
BASE, TABLE = "appEmuCrmBase0000", "tblEmuContacts000"
AIRTABLE_RECORDS = f"/api/v1/airtable/bases/{BASE}/tables/{TABLE}/records?page_size=5"
EVENT_BODY = '{"event_type":"page_view","properties":{"path":"/home"}}'
PASSWORD = "bench correct horse battery " + "staple"
_LEAKY_PREFIXES = ("AUTH_", "USERS_", "ANALYTICS_", "AIRTABLE_", "GATEWAY_", "CACHE_")


@dataclass(frozen=True)
class Route:
    name: str
    service: str  # which service serves it
    method: str
    path: str  # on the service
    baseline_path: str
    body: str | None = None


ROUTES = (
    Route("GET /users/me", "users", "GET", "/api/v1/users/me", "/api/v1/users/me"),
    Route("GET /auth/me", "auth", "GET", "/api/v1/auth/me", "/api/v1/auth/me"),
    Route("POST /analytics/events", "analytics", "POST", "/api/v1/analytics/events", "/api/v1/analytics/events",
          EVENT_BODY),
    Route("GET /analytics/usage/me", "analytics", "GET", "/api/v1/analytics/usage/me", "/api/v1/analytics/usage/me"),
    Route("Airtable cache hit", "airtable", "GET", AIRTABLE_RECORDS, "/api/v1/airtable/cached"),
)  # fmt: skip
# module and settings prefix of each measured service, by its name in shared/registry.py
SERVICES = {entry.name: (entry.package, entry.env_prefix) for entry in registry.SERVICES}


# -- PostgreSQL and processes ------------------------------------------------------------------


@contextlib.contextmanager
def temp_databases(server_url: str, names: list[str]) -> Iterator[dict[str, str]]:
    """``bench_services_<name>_<random>`` for each name, their URLs; dropped afterwards."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    base = make_url(server_url).set(drivername="postgresql")
    admin_url = base.render_as_string(hide_password=False)
    suffix = secrets.token_hex(4)
    created: dict[str, str] = {}
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            for name in names:
                database = f"bench_services_{name}_{suffix}"
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                created[name] = base.set(database=database).render_as_string(hide_password=False)
        yield created
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            for url in created.values():
                database = make_url(url).database
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def loads_pydantic(pid: int) -> bool:
    """Whether the process mapped pydantic-core: Litestar adds its pydantic plugins whenever pydantic
    is importable, which it is in the dev venv (pyairtable needs it), not in a runtime install."""
    with contextlib.suppress(OSError):
        return "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()
    return False


def vm_rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


# -- wrk -------------------------------------------------------------------------------------


def run_wrk(url: str, route: Route, token: str, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
    argv += ["-H", f"Authorization: Bearer {token}", url]
    env = {**os.environ, "BENCH_METHOD": route.method}
    if route.body is not None:
        env["BENCH_BODY"] = route.body
    return wrk_figures(argv, seconds, env)


def measured_run(
    url: str, route: Route, token: str, pid: int, args: argparse.Namespace, script: Path
) -> dict[str, Any]:
    """One wrk run with the server's CPU time and the machine's other load over it."""
    cpu_before, busy_before, started = process_cpu_seconds(pid), system_busy_seconds(), time.monotonic()
    wrk_before = os.times()
    figures = run_wrk(url, route, token, args.connections, args.seconds, script)
    wrk_after = os.times()
    cpu_after, busy_after, elapsed = process_cpu_seconds(pid), system_busy_seconds(), time.monotonic() - started
    server_cpu = (cpu_after or 0.0) - (cpu_before or 0.0)
    wrk_cpu = (wrk_after.children_user + wrk_after.children_system) - (
        wrk_before.children_user + wrk_before.children_system
    )
    busy = (busy_after or 0.0) - (busy_before or 0.0)
    figures["server_cpu_ms_per_request"] = 1000 * server_cpu / figures["requests"] if figures["requests"] else None
    figures["server_cores"] = server_cpu / elapsed
    figures["other_cores"] = max(0.0, busy - server_cpu - wrk_cpu) / elapsed
    return figures


# -- set-up ----------------------------------------------------------------------------------


def sign_in(auth_url: str) -> str:
    """Register a fresh account and sign in; its access token."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    with httpx.Client(base_url=auth_url, timeout=60) as client:
        registered = client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        if registered.status_code != 201:
            raise RuntimeError(f"register answered {registered.status_code}: {registered.text[:300]}")
        login = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        if login.status_code != 200:
            raise RuntimeError(f"login answered {login.status_code}: {login.text[:300]}")
        return str(login.json()["access_token"])


def check_answers(targets: dict[str, str], route: Route, token: str) -> bytes:
    """Both sides answer the route with a 2xx (warms connections and caches); the service's body."""
    body = b""
    for side, url in targets.items():
        for _ in range(3):
            response = httpx.request(
                route.method,
                url,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                content=route.body,
                timeout=30,
            )
            if response.status_code >= 300:
                raise RuntimeError(f"{route.name} ({side}) answered {response.status_code}: {response.text[:300]}")
        if side == "service":
            body = response.content
    return body


def record_llm_usage(analytics_url: str, token: str) -> None:
    """A few LLM-usage events, so that /usage/me has rows to answer."""
    for day in range(5):
        occurred = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - day * 86400))
        event = {
            "event_type": "llm_usage",
            "occurred_at": occurred,
            "properties": {"model": "bench-model", "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.01},
        }
        response = httpx.post(
            analytics_url + "/api/v1/analytics/events",
            json=event,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        response.raise_for_status()


# -- the run ---------------------------------------------------------------------------------


def bench_services(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_urlsafe(48)
    namespace = f"bench-services-{uuid.uuid4().hex[:8]}"
    base_env = scrubbed_environ(SHARED_SETTING_NAMES, _LEAKY_PREFIXES)
    python = args.python
    with sigterm_unwinds(), contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-services-")))
        script = workdir / "report.lua"
        script.write_text(WRK_SCRIPT)
        databases = stack.enter_context(temp_databases(args.postgres, list(SERVICES)))
        stack.callback(clear_redis_namespace, args.redis, namespace)

        emulator = start_emulator(stack, base_env, workdir)

        common = {
            **base_env,
            "ENVIRONMENT": "development",
            "DATA_DIR": str(workdir / "data"),
            "JWT_SECRET": secret,
            "REDIS_URL": args.redis,
            "REDIS_NAMESPACE": namespace,
            "LOG_LEVEL": "INFO",
            "HOST": HOST,
            "PYTHONUNBUFFERED": "1",
            # One client address does everything: the sign-in throttle is lifted out of the way.
            "AUTH_IP_ATTEMPTS_PER_MINUTE": "100000000",
            "AIRTABLE_TOKEN": "emulator-token",
            "AIRTABLE_API_URL": emulator.base_url,
            "AIRTABLE_GRANT_ALL": "write",
            "CACHE_TTL": "3600",
        }
        servers: dict[str, LoggedServer] = {}
        for name, (module, prefix) in SERVICES.items():
            port = free_port()
            env = {**common, f"{prefix}_DATABASE_URL": databases[name], "PORT": str(port)}
            subprocess.run([python, "-m", module, "migrate"], env=env, check=True, capture_output=True, timeout=120)
            servers[name] = server(name, [python, "-m", module, "serve"], env, port, workdir)
            servers[name].start("/health")
            stack.callback(servers[name].stop)
        say("services started; signing in")

        token = sign_in(servers["auth"].base_url)
        record_llm_usage(servers["analytics"].base_url, token)

        baseline_port = free_port()
        cache_key = f"{namespace}:bench:airtable-answer"
        baseline_env = {
            **base_env,
            "BASELINE_JWT_SECRET": secret,
            "BASELINE_REDIS_URL": args.redis,
            "BASELINE_REDIS_NAMESPACE": namespace,
            "BASELINE_AIRTABLE_CACHE_KEY": cache_key,
            **{f"BASELINE_{name.upper()}_DSN": databases[name] for name in ("auth", "users", "analytics")},
        }
        baseline_argv = [python, "-m", "uvicorn", "bench.services_baseline:app", "--host", HOST]
        baseline_argv += ["--port", str(baseline_port), "--no-access-log", "--log-level", "warning"]
        baseline = server("baseline", baseline_argv, baseline_env, baseline_port, workdir)
        baseline.start("/health")
        stack.callback(baseline.stop)

        for route in ROUTES:
            targets = {
                "service": servers[route.service].base_url + route.path,
                "baseline": baseline.base_url + route.baseline_path,
            }
            answer = check_answers(targets, route, token)
            if route.service == "airtable":  # the baseline answers the very bytes the service cached
                import redis

                with contextlib.closing(redis.Redis.from_url(args.redis)) as client:
                    client.set(cache_key, answer, ex=3600)

        results: dict[str, dict[str, list[dict[str, Any]]]] = {r.name: {"service": [], "baseline": []} for r in ROUTES}
        requests_served = dict.fromkeys(SERVICES, 0)
        for round_number in range(args.rounds):
            for route in ROUTES:
                sides = ["service", "baseline"] if round_number % 2 == 0 else ["baseline", "service"]
                for side in sides:
                    target = servers[route.service] if side == "service" else baseline
                    path = route.path if side == "service" else route.baseline_path
                    figures = measured_run(target.base_url + path, route, token, target.pid, args, script)
                    results[route.name][side].append(figures)
                    if side == "service":
                        requests_served[route.service] += figures["requests"]
                    say(
                        f"round {round_number + 1} {route.name} {side}: {figures['rps']:.0f} req/s, "
                        f"{figures['server_cpu_ms_per_request'] or 0:.2f} CPU ms/req, "
                        f"other load {figures['other_cores']:.2f} cores, non-2xx {figures['status']}"
                    )

        serving = Serving(servers, requests_served, token, args, script)
        if args.py_spy:
            profile_services(serving)
        memory = service_memory(serving)

    return {"routes": summarise(results), "memory": memory}


@dataclass
class Serving:
    """The services started, the requests each has served so far, and what a wrk run needs."""

    servers: dict[str, LoggedServer]
    served: dict[str, int]
    token: str
    args: argparse.Namespace
    script: Path

    def load(self, route: Route, seconds: float) -> dict[str, Any]:
        """One wrk run of ``route`` on its service, counted in what that service served."""
        url = self.servers[route.service].base_url + route.path
        figures = run_wrk(url, route, self.token, self.args.connections, seconds, self.script)
        self.served[route.service] += figures["requests"]
        return figures


def profile_services(serving: Serving) -> None:
    """``--py-spy DIR``: one more wrk run per route with py-spy recording the service (raw
    collapsed stacks, ``DIR/<route>.txt``); after the measured rounds, so it skews none of them."""
    args = serving.args
    out = Path(args.py_spy)
    out.mkdir(parents=True, exist_ok=True)
    for route in ROUTES:
        process = serving.servers[route.service]
        target = out / (re.sub(r"[^a-z0-9]+", "-", route.name.lower()).strip("-") + ".txt")
        argv = ["py-spy", "record", "--pid", str(process.pid), "--format", "raw", "--rate", "250"]
        argv += ["--duration", f"{args.seconds:.0f}", "--output", str(target), "--nonblocking"]
        recorder = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), *argv[1:]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        serving.load(route, args.seconds)
        recorder.wait(args.seconds + 30)
        say(f"py-spy {route.name}: {target}")


def service_memory(serving: Serving) -> dict[str, dict[str, Any]]:
    """Each service's VmRSS once it has served at least ``--memory-requests`` requests."""
    served = serving.served
    memory: dict[str, dict[str, Any]] = {}
    for name, process in serving.servers.items():
        route = next(r for r in ROUTES if r.service == name)
        while served[name] < serving.args.memory_requests:
            serving.load(route, 2)
        rss = vm_rss_mb(process.pid)
        memory[name] = {
            "requests": served[name],
            "rss_mb": None if rss is None else round(rss, 1),
            "goal_mb": SERVICE_RSS_GOAL_MB,
            "met": rss is not None and rss <= SERVICE_RSS_GOAL_MB,
            "pydantic_loaded": loads_pydantic(process.pid),
        }
        say(f"memory {name}: {rss:.1f} MB after {served[name]} requests")
    return memory


def embedded_memory(args: argparse.Namespace) -> dict[str, Any]:
    """The embedded platform's VmRSS after ``--memory-requests`` requests through its gateway."""
    python = args.python
    base_env = scrubbed_environ(SHARED_SETTING_NAMES, _LEAKY_PREFIXES)
    with sigterm_unwinds(), contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-embedded-")))
        script = workdir / "report.lua"
        script.write_text(WRK_SCRIPT)
        port = free_port()
        env = {
            **base_env,
            "DATA_DIR": str(workdir / "data"),
            "GATEWAY_PORT": str(port),
            "PORT": str(port),
            "HOST": HOST,
            "LOG_LEVEL": "INFO",
            "RATE_LIMIT_PER_MINUTE": "100000000",
            "RATE_LIMIT_BURST": "1000000",
            "AUTH_RATE_LIMIT_PER_MINUTE": "100000000",
            "AUTH_RATE_LIMIT_BURST": "1000000",
            "AUTH_IP_ATTEMPTS_PER_MINUTE": "100000000",
        }
        subprocess.run([python, "-m", "embedded", "migrate"], env=env, check=True, capture_output=True, timeout=120)
        platform = server("embedded", [python, "-m", "embedded", "serve"], env, port, workdir)
        platform.start("/health")
        stack.callback(platform.stop)
        token = sign_in(platform.base_url)
        served = 0
        per_route = max(1, args.memory_requests // len(ROUTES))
        for route in ROUTES:
            done = 0
            while done < per_route:
                figures = run_wrk(platform.base_url + route.path, route, token, args.connections, 2, script)
                done += figures["requests"]
            served += done
        rss = vm_rss_mb(platform.pid)
        pydantic_loaded = loads_pydantic(platform.pid)
    say(f"memory embedded: {rss} MB after {served} requests")
    return {
        "requests": served,
        "rss_mb": None if rss is None else round(rss, 1),
        "goal_mb": EMBEDDED_RSS_GOAL_MB,
        "met": rss is not None and rss <= EMBEDDED_RSS_GOAL_MB,
        "pydantic_loaded": pydantic_loaded,
    }


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name, sides in results.items():
        ratios = [s["rps"] / b["rps"] for s, b in zip(sides["service"], sides["baseline"], strict=True) if b["rps"]]
        ratio = statistics.median(ratios) if ratios else None

        def median(side: str, key: str, sides: dict[str, list[dict[str, Any]]] = sides) -> float:
            return float(statistics.median(run[key] or 0.0 for run in sides[side]))

        summary[name] = {
            "service_rps": round(median("service", "rps"), 1),
            "baseline_rps": round(median("baseline", "rps"), 1),
            "ratio": None if ratio is None else round(ratio, 3),
            "ratios": [round(r, 3) for r in ratios],
            "service_cpu_ms": round(median("service", "server_cpu_ms_per_request"), 3),
            "baseline_cpu_ms": round(median("baseline", "server_cpu_ms_per_request"), 3),
            "service_p50_us": median("service", "p50_us"),
            "baseline_p50_us": median("baseline", "p50_us"),
            "other_cores": round(median("service", "other_cores"), 2),
            "non_2xx": sum(run["status"] + run["errors"] for side in sides.values() for run in side),
            "met": ratio is not None and ratio >= GOAL_RATIO,
        }
    return summary


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"### Services vs a minimal Litestar + psycopg app ({report['when']})",
        "",
        f"{report['rounds']} rounds x {report['seconds']:g} s per side, wrk -t1 -c{report['connections']}, "
        f"alternating sides; {report['cores']} CPUs ({report['cpu']}); load before: {report['load_before']}",
        "",
        "| route | service req/s | baseline req/s | ratio (median) | service CPU ms/req | baseline CPU ms/req "
        "| other load (cores) | non-2xx | goal >= 0.7 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in report["routes"].items():
        lines.append(
            f"| {name} | {r['service_rps']:.0f} | {r['baseline_rps']:.0f} | {r['ratio']} | {r['service_cpu_ms']:.2f} "
            f"| {r['baseline_cpu_ms']:.2f} | {r['other_cores']:.2f} | {r['non_2xx']} "
            f"| {'met' if r['met'] else 'MISSED'} |"
        )
    lines += [
        "",
        "| process | requests served | VmRSS MB | goal | | pydantic loaded (dev venv only) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, m in report["memory"].items():
        lines.append(
            f"| {name} | {m['requests']} | {m['rss_mb']} | <= {m['goal_mb']} MB | {'met' if m['met'] else 'MISSED'} "
            f"| {'yes' if m['pydantic_loaded'] else 'no'} |"
        )
    lines += [
        "",
        "* other load: cores kept busy by anything but the measured server and wrk, PostgreSQL and Redis "
        "included (they serve both sides); rounds with much other load are suspect.",
        "* pydantic: Litestar adds its pydantic plugins when pydantic is importable (the dev venv, for "
        "pyairtable); a runtime install has no pydantic and uses about 8 MB less per process.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    outcome = bench_services(args)
    if args.embedded:
        outcome["memory"]["embedded platform"] = embedded_memory(args)
    report = {
        "benchmark": "services",
        "when": utc_timestamp(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_before": " ".join(load_before),
        "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
        "goal_ratio": GOAL_RATIO,
        **outcome,
    }
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.services", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="service/baseline pairs per route (default 3)")
    parser.add_argument("--connections", type=int, default=10, help="wrk connections (default 10)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server where databases may be created",
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--memory-requests", type=int, default=10_000, help="requests before VmRSS is read")
    parser.add_argument("--no-embedded", dest="embedded", action="store_false", help="skip the embedded platform")
    parser.add_argument("--py-spy", metavar="DIR", help="also record each route's service with py-spy into DIR")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter the services, the baseline and the embedded platform run on (default this one);"
        " `make runtime-venv` builds .venv-runtime, the runtime install the Docker image has",
    )
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.connections < 1:
        parser.error("--seconds, --rounds and --connections must be positive")
    return args


if __name__ == "__main__":
    sys.exit(main())
