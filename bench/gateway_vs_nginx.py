"""The API gateway's proxy path side by side with nginx, both in front of the same upstream.

    python -m bench.gateway_vs_nginx [--seconds 10] [--rounds 3] [--connections 1,50]
                                     [--pin proxy|split|none] [--redis URL] [--json PATH]

Started on free 127.0.0.1 ports, all as subprocesses of this one run:

* upstream: ``bench/upstream_app.py``, a bare ASGI app under uvicorn (uvloop + httptools, one
  worker) answering ``GET /api/v1/bench/item`` with a small JSON body;
* nginx: a generated config in a temp dir (one worker, keep-alive upstream pool, HTTP/1.1 to the
  upstream, access log off) proxying everything to the upstream;
* gateway: ``python -m gateway serve`` (one uvicorn worker) with ``EXTRA_ROUTES`` pointing
  ``/api/v1/bench`` at the upstream, Redis under a temporary key namespace (deleted afterwards),
  a rate limit too high to ever answer 429, and an HS256 access token minted here with the
  claims the auth service issues. Every gateway request therefore takes the full protected
  path: path check, JWT (claims cache), one Redis EVALSHA (GCRA + revocation), the gateway's
  HTTP/1.1 client (``gateway/transport/http1.py``) to the upstream, access log and Prometheus metrics.
* gateway-2-workers: the same gateway with ``GATEWAY_WORKERS=2`` (uvicorn's supervisor and two
  workers on one port, sharing the limit through Redis, metrics in multiprocess mode); its CPU is
  the supervisor's plus both workers'.

``wrk`` then loads ``direct`` (the upstream alone), ``nginx`` and ``gateway`` at each connection
count (default: ``-t1 -c1`` and ``-t2 -c50``, ``--latency``), alternating targets within each
round (order rotated per round). Reported per target: requests/s, p50, p99, non-2xx/3xx
responses and socket errors, and server CPU per request; headline ratios (medians over rounds):
gateway/nginx requests/s and gateway p50 - direct p50 at one connection.

Pinning (``--pin``, taskset): by default the proxy under test has CPU 1 to itself (one worker, one
core) while wrk and the upstream share CPU 0; the two-worker gateway is not pinned (its workers may
use both cores, which wrk and the upstream need too: on a 2-core machine it cannot double).
``--compare-tree DIR`` adds a second gateway run from another copy of ``gateway/`` and ``shared/``
(target ``gateway-before``), alternating with this one: before/after figures from the same machine
state. See docs/PERFORMANCE.md, "Gateway vs nginx".

Goals (issue): gateway >= 0.35 x nginx requests/s with one gateway worker (judged at the highest
connection count, 50 by default, as the issue measured it), and <= 1 ms added to
p50 at one connection. Every subprocess is stopped and the temp dir and Redis keys removed on
exit, Ctrl-C or SIGTERM; every wrk run is bounded by ``--seconds``.
"""

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from bench.common import (
    HOST,
    SHARED_SETTING_NAMES,
    LoggedServer,
    clear_redis_namespace,
    cpu_model,
    exit_with,
    free_port,
    package_versions,
    process_and_children_cpu_seconds,
    publish,
    sample_differences,
    say,
    scrubbed_environ,
    sigterm_unwinds,
    system_busy_seconds,
    upstream_app_argv,
    utc_timestamp,
)
from bench.upstream_app import ITEM_BODY, ITEM_PATH
from shared.keys import hs256_kid

STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
GOAL_THROUGHPUT_RATIO = 0.35
GOAL_ADDED_P50_MS = 1.0
MULTI = "gateway-2-workers"  # GATEWAY_WORKERS=2
TARGETS = ("direct", "nginx", "gateway", MULTI)
BEFORE = "gateway-before"  # with --compare-tree: the same gateway from another source tree
TOKEN_TTL_SECONDS = 4 * 3600
# Parent environment variables that must not leak into the measured gateway.
_LEAKY_PREFIXES = ("GATEWAY_",)
_LEAKY_NAMES = SHARED_SETTING_NAMES | {
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "ACCESS_LOG",
    "EXTRA_ROUTES",
    "TRUSTED_PROXIES",
    "CORS_ORIGINS",
    "RATE_LIMIT_PER_MINUTE",
    "RATE_LIMIT_BURST",
    "RATE_LIMIT_KEY",
    "WORKERS",  # GATEWAY_WORKERS goes with the prefix; uvicorn's own, and a metrics directory, too
    "WEB_CONCURRENCY",
    "PROMETHEUS_MULTIPROC_DIR",
}
# wrk prints this line from its done() hook: machine-readable figures, no text parsing.
_WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


# -- processes -------------------------------------------------------------------------------


class Server(LoggedServer):
    """One subprocess on a loopback port; output to a log file in the temp dir."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path, cwd: Path | None = None
    ) -> None:
        super().__init__(
            name,
            argv,
            env,
            port,
            workdir / f"{name}.log",
            startup_timeout=STARTUP_TIMEOUT_SECONDS,
            stop_timeout=STOP_TIMEOUT_SECONDS,
            tail_chars=3000,
            cwd=cwd,
        )


@dataclass(frozen=True)
class Pinning:
    """CPU sets (taskset -c) for wrk, the upstream and the proxy; None = not pinned."""

    name: str
    wrk: str | None = None
    upstream: str | None = None
    proxy: str | None = None

    @classmethod
    def choose(cls, layout: str) -> "Pinning":
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if layout == "none" or len(cpus) < 2 or shutil.which("taskset") is None:
            return cls("none")
        first, second = str(cpus[0]), str(cpus[1])
        if layout == "split":  # the load generator on one core, every server on the other
            return cls("split", wrk=first, upstream=second, proxy=second)
        # "proxy": the proxy under test alone on a core; wrk and the upstream share the other
        return cls("proxy", wrk=first, upstream=first, proxy=second)

    @staticmethod
    def prefix(cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus] if cpus is not None else []

    @property
    def workers(self) -> str | None:
        """The two-worker gateway's CPUs: every one in the default layout (a worker per core), else the proxy's."""
        return None if self.name == "proxy" else self.proxy

    def describe(self) -> str:
        if self.name == "none":
            return "not pinned"
        return (
            f"wrk on CPU {self.wrk}, upstream on CPU {self.upstream}, nginx/gateway on CPU {self.proxy}, "
            f"{MULTI} on {'every CPU' if self.workers is None else 'CPU ' + self.workers}"
        )


def start_upstream(workdir: Path, pinning: Pinning) -> Server:
    port = free_port()
    argv = [
        *Pinning.prefix(pinning.upstream),
        *upstream_app_argv(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    server = Server("upstream", argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, port, workdir)
    server.start("/health")
    return server


def nginx_config(workdir: Path, listen_port: int, upstream_port: int) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers may write the temp dirs
    return f"""{user}worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-client-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream bench_upstream {{
        server {HOST}:{upstream_port};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen {HOST}:{listen_port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(workdir: Path, upstream: Server, pinning: Pinning) -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, port, upstream.port))
    argv = [*Pinning.prefix(pinning.proxy), nginx, "-p", str(workdir), "-e", str(workdir / "nginx-error.log")]
    server = Server("nginx", [*argv, "-c", str(conf)], dict(os.environ), port, workdir)
    server.start("/health")
    return server


def gateway_env(
    workdir: Path, port: int, upstream: Server, secret: str, redis_url: str, namespace: str, args: argparse.Namespace
) -> dict[str, str]:
    env = scrubbed_environ(_LEAKY_NAMES, _LEAKY_PREFIXES)
    env.update(
        {
            "ENVIRONMENT": "development",
            "DATA_DIR": str(workdir / "gateway-data"),
            "HOST": HOST,
            "PORT": str(port),
            "JWT_SECRET": secret,
            "EXTRA_ROUTES": f"/api/v1/bench={upstream.base_url}",
            "REDIS_URL": redis_url,
            "REDIS_NAMESPACE": namespace,
            # Far beyond anything wrk can send from one address: never a 429, still evaluated.
            "RATE_LIMIT_PER_MINUTE": "1000000000",
            "RATE_LIMIT_BURST": "1000000",
            "LOG_LEVEL": "INFO",
            "ACCESS_LOG": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for item in args.gateway_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def start_gateway(
    workdir: Path,
    env: dict[str, str],
    pinning: Pinning,
    name: str = "gateway",
    tree: Path | None = None,
    cpus: str | None = None,
) -> Server:
    """``python -m gateway serve`` on ``cpus`` (default: the proxy's); with ``tree``, the
    ``gateway``/``shared`` packages of that directory."""
    argv = [*Pinning.prefix(cpus or pinning.proxy), sys.executable, "-m", "gateway", "serve"]
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    server = Server(name, argv, env, int(env["PORT"]), workdir, cwd=tree)
    server.start("/health")
    return server


def mint_access_token(secret: str, issuer: str = "pyairtable-auth", audience: str = "pyairtable-api") -> str:
    """An access token as the auth service issues it (HS256, typ at+jwt, kid from the secret)."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_TTL_SECONDS,
        "roles": ["user"],
        "email": "bench@example.com",
        "sid": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "at+jwt", "kid": hs256_kid(secret)})


def find_redis_server_pid() -> int | None:
    """The local redis-server's pid, to count its CPU (read-only, from /proc); None if not found."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "redis-server":
                    return int(entry.name)
    return None


def check_targets(urls: dict[str, str], token: str) -> None:
    """Each target answers the item; the gateway refuses a request without the token."""
    headers = {"Authorization": f"Bearer {token}"}
    for name, url in urls.items():
        response = httpx.get(url, headers=headers, timeout=5)
        if response.status_code != 200 or response.content != ITEM_BODY:
            raise RuntimeError(f"{name}: GET {url} answered {response.status_code}: {response.text[:300]}")
        if name.startswith("gateway"):
            if "x-ratelimit-remaining" not in response.headers or "x-request-id" not in response.headers:
                raise RuntimeError(f"gateway response lacks its headers: {dict(response.headers)}")
            anonymous = httpx.get(url, timeout=5)
            if anonymous.status_code != 401:
                raise RuntimeError(f"gateway without a token answered {anonymous.status_code}, not 401")


# -- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    target: str
    connections: int
    threads: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "connections": self.connections,
            "threads": self.threads,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu_seconds.items()},
            "cpu_us_per_request": {
                k: round(1e6 * v / self.requests, 1) for k, v in self.cpu_seconds.items() if self.requests
            },
        }


def threads_for(connections: int) -> int:
    return 1 if connections < 2 else 2


def run_wrk(
    target: str,
    url: str,
    connections: int,
    seconds: float,
    token: str | None,
    script: Path,
    pinning: Pinning,
    meter_pids: dict[str, int],
) -> WrkResult:
    threads = threads_for(connections)
    argv = [
        *Pinning.prefix(pinning.wrk),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
    ]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    before = {name: process_and_children_cpu_seconds(pid) for name, pid in meter_pids.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_before = time.process_time()
    busy_before, wall_before = system_busy_seconds(), time.monotonic()
    completed = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30, check=False)
    wall = time.monotonic() - wall_before
    busy_after = system_busy_seconds()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    after = {name: process_and_children_cpu_seconds(pid) for name, pid in meter_pids.items()}
    cpu = sample_differences(before, after)
    cpu["wrk"] = wrk_cpu
    if busy_before is not None and busy_after is not None:
        # Everything else the machine did meanwhile: other tenants, Redis, the kernel's own threads.
        ours = sum(cpu.values()) + (time.process_time() - own_before)
        cpu["other"] = max(0.0, busy_after - busy_before - ours)
        cpu["wall"] = wall
    match = re.search(r"^BENCH_JSON (\{.*\})$", completed.stdout, re.MULTILINE)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    data = json.loads(match.group(1))
    return WrkResult(
        target=target,
        connections=connections,
        threads=threads,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        non_2xx=data["status"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        cpu_seconds=cpu,
    )


# -- the run ---------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    started_at = utc_timestamp()
    pinning = Pinning.choose(args.pin)
    secret = secrets.token_urlsafe(48)
    token = mint_access_token(secret)
    namespace = f"bench-gw-{secrets.token_hex(4)}"
    targets = [t for t in TARGETS if t in args.targets]
    if args.compare_tree is not None:
        targets.insert(targets.index("gateway"), BEFORE)
    rounds: list[dict[str, Any]] = []

    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bench_gateway_"))
        if not args.keep_workdir:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        script = workdir / "report.lua"
        script.write_text(_WRK_SCRIPT)
        say(f"pinning: {pinning.describe()}; temp dir {workdir}")

        upstream = start_upstream(workdir, pinning)
        stack.callback(upstream.stop)
        servers: dict[str, Server] = {"direct": upstream}
        if "nginx" in targets:
            servers["nginx"] = start_nginx(workdir, upstream, pinning)
            stack.callback(servers["nginx"].stop)
        if "gateway" in targets:
            stack.callback(_clear_and_report, args.redis, namespace)
            env = gateway_env(workdir, free_port(), upstream, secret, args.redis, namespace, args)
            servers["gateway"] = start_gateway(workdir, env, pinning, tree=args.gateway_tree)
            stack.callback(servers["gateway"].stop)
            if MULTI in targets:
                multi_env = {**env, "PORT": str(free_port()), "GATEWAY_WORKERS": "2"}
                servers[MULTI] = start_gateway(workdir, multi_env, pinning, MULTI, args.gateway_tree, pinning.workers)
                stack.callback(servers[MULTI].stop)
            if args.compare_tree is not None:
                env = {**env, "PORT": str(free_port())}
                env.update(item.partition("=")[::2] for item in args.compare_env)
                servers[BEFORE] = start_gateway(workdir, env, pinning, BEFORE, args.compare_tree)
                stack.callback(servers[BEFORE].stop)
        urls = {name: servers[name].base_url + ITEM_PATH for name in targets}
        check_targets(urls, token)
        say("servers: " + ", ".join(f"{name} pid {servers[name].pid} on {servers[name].base_url}" for name in targets))

        def one(target: str, connections: int, seconds: float) -> WrkResult:
            pids = {"upstream": upstream.pid}
            if target != "direct":
                pids[target] = servers[target].pid
            redis_pid = find_redis_server_pid() if target.startswith("gateway") else None
            if redis_pid is not None:
                pids["redis"] = redis_pid
            return run_wrk(
                target,
                urls[target],
                connections,
                seconds,
                token if target.startswith("gateway") else None,
                script,
                pinning,
                pids,
            )

        for target in targets:  # warm-up: connection pools, claims cache, the upstream's code paths
            one(target, max(args.connections), args.warmup)
        if args.hold:
            say(f"holding for {args.hold:g} s (profile now)")
            time.sleep(args.hold)

        for number in range(1, args.rounds + 1):
            shift = (number - 1) % len(targets)
            order = targets[shift:] + targets[:shift]
            results: dict[str, dict[str, Any]] = {}
            for connections in args.connections:
                for target in order:
                    result = one(target, connections, args.seconds)
                    results[f"{target}@{connections}"] = result.summary()
                    bad = f"  non-2xx {result.non_2xx}" if result.non_2xx else ""
                    bad += f"  socket errors {result.socket_errors}" if result.socket_errors else ""
                    say(
                        f"round {number} {target:>14} c={connections:<3} {result.rps:9.1f} req/s  "
                        f"p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms{bad}"
                    )
            rounds.append({"round": number, "order": order, "results": results})
        for name in ("gateway", BEFORE):
            if name in servers and args.keep_workdir:
                servers[name].stop()
                say(f"{name} log: {servers[name].log_path}")

    return {
        "benchmark": "gateway_vs_nginx",
        "started_at": started_at,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
        "targets": targets,
        "pinning": {"layout": pinning.name, "description": pinning.describe()},
        "gateway_env_overrides": args.gateway_env,
        "compare_tree": str(args.compare_tree) if args.compare_tree is not None else None,
        "gateway_tree": str(args.gateway_tree) if args.gateway_tree is not None else None,
        "compare_env_overrides": args.compare_env,
        "goals": {"throughput_ratio": GOAL_THROUGHPUT_RATIO, "added_p50_ms": GOAL_ADDED_P50_MS},
        "machine": machine_info(),
        "rounds_data": rounds,
        "summary": summarise(rounds, targets, args.connections),
    }


def _clear_and_report(redis_url: str, namespace: str) -> None:
    try:
        removed = clear_redis_namespace(redis_url, namespace)
    except Exception as exc:  # the run's figures are still worth printing
        say(f"could not remove Redis keys {namespace}:*: {exc}")
    else:
        say(f"removed {removed} Redis keys under {namespace}:")


def summarise(rounds: list[dict[str, Any]], targets: list[str], connection_counts: list[int]) -> dict[str, Any]:
    per_target: dict[str, Any] = {}
    for connections in connection_counts:
        for target in targets:
            runs = [r["results"][f"{target}@{connections}"] for r in rounds]
            cpu = {
                name: statistics.median(run["cpu_us_per_request"][name] for run in runs)
                for name in runs[0]["cpu_us_per_request"]
                if name not in ("other", "wall")
            }
            per_target[f"{target}@{connections}"] = {
                "target": target,
                "connections": connections,
                "rps": round(statistics.median(run["rps"] for run in runs), 1),
                "p50_ms": round(statistics.median(run["p50_ms"] for run in runs), 3),
                "p99_ms": round(statistics.median(run["p99_ms"] for run in runs), 3),
                "non_2xx": sum(run["non_2xx"] for run in runs),
                "socket_errors": sum(run["socket_errors"] for run in runs),
                "cpu_us_per_request": {k: round(v, 1) for k, v in cpu.items()},
                "other_load_cores": round(
                    max(run["cpu_seconds"]["other"] / run["cpu_seconds"]["wall"] for run in runs), 2
                )
                if all("other" in run["cpu_seconds"] for run in runs)
                else None,
            }
    ratios: dict[str, Any] = {}
    for connections in connection_counts:
        for name, measured, against, figure in _COMPARISONS:
            if {measured, against} <= set(targets):
                values = _compared(rounds, connections, measured, against, figure)
                ratios[f"{name}@{connections}"] = _spread(values, 3)
    return {"per_target": per_target, "ratios": ratios}


# The report's comparisons of two targets, in its order: (name, the target measured, the one it is
# measured against, "rps" for the ratio of their requests per second or "p50_ms" for the median
# latency the measured one adds).
_COMPARISONS = (
    ("gateway_over_nginx_rps", "gateway", "nginx", "rps"),
    ("gateway_over_direct_rps", "gateway", "direct", "rps"),
    ("gateway_added_p50_ms", "gateway", "direct", "p50_ms"),
    ("two_workers_over_one_rps", MULTI, "gateway", "rps"),
    ("two_workers_over_nginx_rps", MULTI, "nginx", "rps"),
    ("gateway_over_before_rps", "gateway", BEFORE, "rps"),
    ("nginx_added_p50_ms", "nginx", "direct", "p50_ms"),
)


def _compared(rounds: list[dict[str, Any]], connections: int, measured: str, against: str, figure: str) -> list[float]:
    """Round by round: ``measured``'s requests per second over ``against``'s (rounds where it
    served none left out), or the p50 latency it adds."""
    pairs = [
        (r["results"][f"{measured}@{connections}"][figure], r["results"][f"{against}@{connections}"][figure])
        for r in rounds
    ]
    if figure == "rps":
        return [value / baseline for value, baseline in pairs if baseline]
    return [value - baseline for value, baseline in pairs]


def _spread(values: list[float], digits: int) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# -- reporting -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def tool_version(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            text = (done.stdout + done.stderr).strip().splitlines()
            return text[0] if text else ""
        return ""

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "packages": package_versions(
            ("litestar", "uvicorn", "uvloop", "httptools", "aiohttp", "redis", "hiredis", "pyjwt")
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    summary = report["summary"]
    lines = [
        f"### Gateway vs nginx ({report['started_at']})",
        "",
        f"{report['rounds']} rounds x {report['seconds']:g} s per target and connection count, targets alternating; "
        f"{report['pinning']['description']}; {m['cpu_count']} CPUs ({m['cpu_model'] or 'unknown'}), "
        f"Python {m['python']}, {m['nginx']}"
        + (
            f"; gateway env overrides: {' '.join(report['gateway_env_overrides'])}"
            if report["gateway_env_overrides"]
            else ""
        ),
        "",
        "| target | connections | req/s | p50 ms | p99 ms | non-2xx | socket errors | CPU µs/req | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in summary["per_target"].values():
        cpu = ", ".join(f"{k} {v:g}" for k, v in row["cpu_us_per_request"].items())
        lines.append(
            f"| {row['target']} | {row['connections']} | {row['rps']:.0f} | {row['p50_ms']:.3f} "
            f"| {row['p99_ms']:.3f} | {row['non_2xx']} | {row['socket_errors']} | {cpu} | {row['other_load_cores']} |"
        )
    ratios = summary["ratios"]
    lines += ["", "| ratio (median over rounds, [min, max]) | value |", "|---|---|"]
    for name, spread in ratios.items():
        if spread is not None:
            lines.append(f"| {name} | {spread['median']} [{spread['min']}, {spread['max']}] |")
    lines.append("")
    low, high = min(report["connections"]), max(report["connections"])
    loaded = ratios.get(f"gateway_over_nginx_rps@{high}")
    if loaded is not None:
        # The throughput figures are wrk at 50 connections; at one connection a request is
        # three loopback round trips in a row, which the latency goal below is about.
        verdict = "meets" if loaded["median"] >= GOAL_THROUGHPUT_RATIO else "MISSES"
        lines.append(
            f"* throughput: gateway/nginx at {high} connections = {loaded['median']} — {verdict} the goal "
            f">= {GOAL_THROUGHPUT_RATIO}"
        )
    for count in report["connections"]:
        spread = ratios.get(f"gateway_over_nginx_rps@{count}")
        if count != high and spread is not None:
            lines.append(f"* throughput at {count} connection(s), for reference: gateway/nginx = {spread['median']}")
    added = ratios.get(f"gateway_added_p50_ms@{low}")
    if added is not None:
        verdict = "meets" if added["median"] <= GOAL_ADDED_P50_MS else "MISSES"
        lines.append(
            f"* latency: gateway p50 - direct p50 at {low} connection(s) = {added['median']} ms — {verdict} "
            f"the goal <= {GOAL_ADDED_P50_MS} ms"
        )
    for count in report["connections"]:
        two = summary["per_target"].get(f"{MULTI}@{count}")
        one = summary["per_target"].get(f"gateway@{count}")
        spread = ratios.get(f"two_workers_over_one_rps@{count}")
        if two is not None and one is not None and spread is not None:
            lines.append(
                f"* workers at {count} connection(s): 1 worker {one['rps']:.0f} req/s, "
                f"{one['cpu_us_per_request'].get('gateway', 0):g} µs CPU/req; 2 workers {two['rps']:.0f} req/s "
                f"({spread['median']}x), {two['cpu_us_per_request'].get(MULTI, 0):g} µs CPU/req (supervisor and "
                "both workers)"
            )
    lines += [
        "* non-2xx counts wrk's status errors (status >= 400); socket errors are connect/read/write/timeout.",
        "* CPU µs/req: CPU time of each process (nginx: master + worker; redis: the local redis-server) during "
        "the run divided by the requests completed; other load: cores busy with anything else (worst round).",
    ]
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_vs_nginx",
        description="Requests/s and latency of the gateway's proxy path versus nginx and the bare upstream.",
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run, whole seconds (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every target (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per target (default 3)")
    parser.add_argument(
        "--connections",
        default="1,50",
        help="comma-separated wrk connection counts (default 1,50; threads: 1 below 2 connections, else 2)",
    )
    parser.add_argument(
        "--pin",
        choices=["proxy", "split", "none"],
        default="proxy",
        help="taskset layout: proxy = nginx/gateway alone on one CPU, wrk and the upstream on the other, "
        f"{MULTI} unpinned (default: one worker, one core); split = wrk on one CPU, every server on the other; "
        "none",
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument("--redis", metavar="URL", default="redis://127.0.0.1:6379/0", help="the gateway's Redis")
    parser.add_argument(
        "--gateway-env",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="extra gateway environment (e.g. ACCESS_LOG=false); repeatable",
    )
    parser.add_argument(
        "--compare-tree",
        metavar="DIR",
        type=Path,
        help="also run the gateway from DIR (a copy of gateway/ and shared/ before a change) as target "
        f"{BEFORE!r}, alternating with the current one",
    )
    parser.add_argument(
        "--gateway-tree",
        metavar="DIR",
        type=Path,
        help="run the 'gateway' target from DIR instead of this checkout (for step-by-step comparisons)",
    )
    parser.add_argument(
        "--compare-env",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help=f"extra environment for {BEFORE!r} only (e.g. ACCESS_LOG=false with --compare-tree .); repeatable",
    )
    parser.add_argument("--hold", type=float, default=0.0, help="pause after warm-up, e.g. to attach py-spy")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (logs, nginx.conf)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        args.connections = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    except ValueError:
        parser.error("--connections: comma-separated integers")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections must be positive")
    if args.seconds <= 0 or args.rounds < 1 or args.warmup <= 0 or args.hold < 0:
        parser.error("--seconds, --rounds and --warmup must be positive")
    if not set(args.targets) <= set(TARGETS) or not args.targets:
        parser.error(f"--targets: a subset of {','.join(TARGETS)}")
    if (args.compare_tree is not None or args.gateway_tree is not None) and "gateway" not in args.targets:
        parser.error("--compare-tree and --gateway-tree need the gateway target")
    for tree in (args.compare_tree, args.gateway_tree):
        if tree is not None and not (tree / "gateway" / "__main__.py").is_file():
            parser.error(f"{tree}: no gateway/ package there")
    for tool in ("wrk", *(["nginx"] if "nginx" in args.targets else [])):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} not found: apt-get install -y nginx wrk")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with sigterm_unwinds():  # stop the servers, remove the temp dir and Redis keys
        report = measure(args)
    publish(report, markdown(report), args.json)
    return 0


if __name__ == "__main__":
    exit_with(main, "the servers were stopped and temporary data removed")
