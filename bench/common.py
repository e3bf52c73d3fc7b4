"""Process and measurement helpers shared by the benchmarks in this package.

Free loopback ports, servers started as subprocesses (own session, output to a log file, a wait
for readiness, SIGTERM then SIGKILL to stop), CPU seconds from /proc, a scrubbed environment,
SIGTERM that unwinds like an exception, and the machine facts every report carries.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import httpx

HOST = "127.0.0.1"
# Settings shared by every service of the project: a parent's values must not leak into a measured one.
SHARED_SETTING_NAMES = frozenset(
    {
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_NAMESPACE",
        "DATA_DIR",
        "ENVIRONMENT",
        "JWT_SECRET",
        "JWT_ALGORITHM",
        "JWT_PUBLIC_KEY_FILE",
        "JWT_JWKS_URL",
        "HOST",
        "PORT",
        "LOG_LEVEL",
    }
)


# wrk prints this line from its done() hook: machine-readable figures, no text parsing. A request's
# method and body come from BENCH_METHOD and BENCH_BODY (by default a GET without one).
WRK_SCRIPT = r"""
wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.body = os.getenv("BENCH_BODY")
if wrk.body then wrk.headers["Content-Type"] = "application/json" end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"status":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


# -- environment -----------------------------------------------------------------------------


def scrubbed_environ(names: Iterable[str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """This process's environment without the given names and anything starting with the prefixes."""
    leaky = frozenset(names)
    return {k: v for k, v in os.environ.items() if k not in leaky and not k.startswith(prefixes)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def uvicorn_argv(app: str, port: int) -> list[str]:
    """uvicorn serving ``app`` (``module:attribute``) on ``port`` of HOST; a caller appends its options."""
    return [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]


def upstream_app_argv(port: int) -> list[str]:
    """uvicorn serving bench/upstream_app.py on ``port`` of HOST; a caller appends its options."""
    return uvicorn_argv("bench.upstream_app:app", port)


def utc_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_report(path: str, report: Mapping[str, Any]) -> None:
    """The report as indented JSON at ``path`` (its folder made if need be)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {path}")


def publish(report: Mapping[str, Any], text: str, json_path: str | None) -> None:
    """Print the report's ``text``; write the report as JSON at ``json_path`` where one is given."""
    print(text)
    if json_path:
        write_report(json_path, report)


def exit_with(main: Callable[[], int], interrupted: str) -> NoReturn:
    """Exit with ``main()``'s status; a Ctrl-C exits 130, saying ``interrupted`` (what was cleaned up)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say(f"interrupted; {interrupted}")
        sys.exit(130)


# -- wrk -----------------------------------------------------------------------------------------


def wrk_figures(argv: list[str], seconds: float, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run wrk (``argv``, with :data:`WRK_SCRIPT` as its script) for ``seconds``: the figures its
    done() hook printed, and the requests per second."""
    output = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True, env=env).stdout
    match = re.search(r"BENCH_JSON (\{.*\})", output)
    if match is None:
        raise RuntimeError(f"wrk gave no figures:\n{output}")
    figures: dict[str, Any] = json.loads(match.group(1))
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


# -- CPU time --------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc; None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_and_children_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process and its direct children (nginx's worker), from /proc."""
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        seconds = process_cpu_seconds(one)
        if seconds is None:
            if one == pid:
                return None
            continue
        total += seconds
    return total


def system_busy_seconds() -> float | None:
    """CPU time all processes of the machine spent busy (every core), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def sample_differences(before: Mapping[str, float | None], after: Mapping[str, float | None]) -> dict[str, float]:
    """``after - before`` per key, leaving out the keys unavailable (None) in either sample."""
    differences: dict[str, float] = {}
    for key, start in before.items():
        end = after[key]
        if start is not None and end is not None:
            differences[key] = end - start
    return differences


# -- servers as subprocesses -----------------------------------------------------------------


class LoggedServer:
    """One subprocess serving HTTP on a loopback port, in its own session; output to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        log_path: Path,
        *,
        startup_timeout: float,
        stop_timeout: float,
        tail_chars: int,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.base_url = f"http://{HOST}:{port}"
        self.log_path = log_path
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.tail_chars = tail_chars
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on the bench is handled by stop(), not the child
            )
        self.wait_ready(ready_path)

    def wait_ready(self, ready_path: str) -> None:
        """Poll ``ready_path`` until it answers 200; fail if the process exits or time runs out."""
        assert self.process is not None
        give_up = time.monotonic() + self.startup_timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + ready_path, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, chars: int | None = None) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-(self.tail_chars if chars is None else chars) :]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM (uvicorn and nginx both shut down gracefully), SIGKILL only if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def clear_redis_namespace(redis_url: str, namespace: str) -> int:
    """Delete every key under ``namespace:``; the number deleted."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


# -- signals ---------------------------------------------------------------------------------


def exit_on_sigterm(signum: int, _frame: object) -> None:
    # Unwind normally, so every server is stopped and temporary data removed (finally, ExitStack).
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo; "" where unavailable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def package_versions(dists: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution; None for one not installed."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in dists}
