"""Every shell command of README.md and deploy/README.md runs as written.

The ```sh / ```bash / ```console blocks are read from the documents; each command is one test,
run from the repository root with the test's own DATA_DIR (one per document, kept from one
command to the next as a reader's would be), Redis namespace and PostgreSQL databases (a URL
naming ``pyairtable_<service>`` is pointed at a database of the test run). A command that starts
a server is started on a free port, must answer its health check, and is stopped; one that calls
the platform on :8080 calls the set-up's ``make run`` started on a free port. Commands that
cannot run here are skipped by an explicit list below, each with its reason in pytest's summary.
"""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DatabaseFactory
from tests.private_servers import free_port

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "deploy/README.md")
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
JSON_BLOCK = re.compile(r"^```json\n(\{\"bases\".*?)^```", re.MULTILINE | re.DOTALL)
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
COMMAND_TIMEOUT = 180
SERVER_START_TIMEOUT = 120.0
# Commands that cannot run on this machine in a test, by how they start, and why.
NOT_HERE = {
    "make test": "runs the whole test suite, this test included",
    "make bench": "a benchmark: minutes of load (docs/PERFORMANCE.md)",
    "docker ": "needs Docker with Compose v2",
    "kubectl ": "needs a Kubernetes cluster",
    "cp deploy/k8s/secrets.env.example /somewhere/safe/": "copies to a place of the reader's choosing",
    "createdb -h 127.0.0.1 -U postgres pyairtable_": "creates a database on your server (the test has its own)",
    ".venv/bin/python -m user_service dead-letters drop --id": "needs the id of an existing dead letter",
    "make lock": "rewrites the lock files from PyPI (tests/test_build.py checks what it wrote)",
    "cp env.example .env": "writes the reader's secrets file into the repository folder",
    "make run-distributed": "creates databases and roles on your PostgreSQL: tests/e2e/test_smoke_processes.py runs"
    " it on the test's own and walks it with make smoke",
    "make smoke URL=http://127.0.0.1:8080 \\\n  API_KEY=": "needs make run-distributed's secrets: walked in"
    " tests/e2e/test_smoke_processes.py",
}
# Servers: the port setting the test moves to a free port, and the path that answers 200 once ready.
SERVICE_PORTS = {
    "auth_service": "AUTH_PORT",
    "user_service": "USERS_PORT",
    "airtable_gateway": "AIRTABLE_GATEWAY_PORT",
    "analytics_service": "ANALYTICS_PORT",
    "gateway": "GATEWAY_PORT",
}
DATABASE_NAMES = ("pyairtable_auth", "pyairtable_users", "pyairtable_airtable", "pyairtable_analytics")
POSTGRES_URL = re.compile(r"postgresql://postgres@127\.0\.0\.1/(pyairtable_[a-z]+)")


@dataclass(frozen=True)
class Command:
    document: str
    line: int
    text: str
    exports: tuple[str, ...]  # the block's earlier ``export`` lines, which a reader's shell would keep

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


def shell_commands(document: str) -> list[Command]:
    """The commands of the document's shell blocks (a ``\\`` line continues on the next; in a
    ``console`` block only the ``$ `` lines are commands, the rest is output)."""
    text = (REPO / document).read_text()
    found: list[Command] = []
    for block in SHELL_BLOCK.finditer(text):
        console = text[block.start() : block.start() + 10].startswith("```console")
        first_line = text.count("\n", 0, block.start(1)) + 1
        exports: list[str] = []
        pending, pending_line = "", 0
        for offset, line in enumerate(block.group(1).splitlines()):
            if console and not pending:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending_line = pending_line or first_line + offset
            pending += line
            if line.endswith("\\"):
                pending += "\n"  # bash reads the backslash-newline as the continuation it is
                continue
            found.append(Command(document, pending_line, pending.strip(), tuple(exports)))
            if pending.startswith("export "):
                exports.append(pending)
            pending, pending_line = "", 0
    return found


COMMANDS = [command for document in DOCUMENTS for command in shell_commands(document)]


def not_here(command: Command) -> str | None:
    return next((reason for prefix, reason in NOT_HERE.items() if command.text.startswith(prefix)), None)


def program(command: Command) -> list[str]:
    """The command's words after its leading ``NAME=value`` assignments."""
    words = shlex.split(command.text.split("#", 1)[0].replace("\\\n", " "))
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words.pop(0)
    return words


def server_port_setting(command: Command) -> tuple[str, str] | None:
    """(port setting or ``--port``, health path) when the command starts a server."""
    words = program(command)
    if words[:2] == ["make", "run"]:
        return SERVICE_PORTS["gateway"], "/health"
    if words[:1] == ["make"] and words[1].startswith("run-"):
        return SERVICE_PORTS[words[1].removeprefix("run-")], "/health"
    if words[1:4] == ["-m", "airtable_gateway", "emulator"]:
        return "--port", "/_emulator/health"
    if words[1:4] in (["-m", service, "serve"] for service in SERVICE_PORTS):
        return SERVICE_PORTS[words[2]], "/health"
    return None


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {document: tmp_path_factory.mktemp(document.replace("/", "-")) for document in DOCUMENTS}


@pytest.fixture(scope="module")
def test_databases(databases: DatabaseFactory) -> dict[str, str]:
    """One database of the test run for each name the documents give a service's database."""
    return {name: databases.create(f"readme_{name}") for name in DATABASE_NAMES}


def with_test_resources(command: Command, test_databases: dict[str, str], tmp_path: Path) -> str:
    """The command pointed at the test's databases; the README's example seed file written out."""
    script = POSTGRES_URL.sub(lambda match: test_databases[match.group(1)], command.text)
    if "my-seed.json" in script:
        seed = JSON_BLOCK.search((REPO / "README.md").read_text())
        assert seed, "README.md lost its example seed"
        (tmp_path / "my-seed.json").write_text(seed.group(1))
        script = script.replace("my-seed.json", str(tmp_path / "my-seed.json"))
    return "\n".join([*command.exports, script])


def environment(data_dir: Path, redis_namespace: str, **settings: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    return {**env, "DATA_DIR": str(data_dir), "REDIS_NAMESPACE": redis_namespace, **settings}


@pytest.mark.parametrize("command", COMMANDS, ids=[command.id for command in COMMANDS])
def test_the_command_runs_as_written(
    command: Command,
    data_dirs: dict[str, Path],
    test_databases: dict[str, str],
    redis_namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    reason = not_here(command)
    if reason:
        first_line = command.text.splitlines()[0].rstrip(" \\")
        pytest.skip(f"not run here: {first_line!r}: {reason}")
    script = with_test_resources(command, test_databases, tmp_path)
    env = environment(data_dirs[command.document], redis_namespace)
    server = server_port_setting(command)
    if server:
        with serving(script, env, *server, tmp_path / "server.log"):
            return
    if "localhost:8080" in script:
        port = request.getfixturevalue("running_platform")
        script = script.replace("localhost:8080", f"127.0.0.1:{port}")
    finished = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    assert finished.returncode == 0, f"{command.id}: {command.text}\n{finished.stdout[-3000:]}{finished.stderr[-3000:]}"


@contextlib.contextmanager
def serving(script: str, env: dict[str, str], port_setting: str, health: str, log: Path) -> Iterator[int]:
    """The server started on a free port; yields the port once ``health`` answers 200, then stops
    it and its children (``make``'s Python)."""
    port = free_port()
    if port_setting == "--port":
        if "--port" in script:
            script = re.sub(r"--port \d+", f"--port {port}", script)
        else:  # right after the subcommand: the line may end in a comment
            script = script.replace(" emulator", f" emulator --port {port}", 1)
    else:
        env = {**env, port_setting: str(port)}
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "-c", script], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}{health}", log)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"never answered {url} (exit {process.poll()}):\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="module")
def running_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``make run`` (the set-up's platform) on a free port, for the commands that call :8080."""
    data_dir = tmp_path_factory.mktemp("platform")
    env = environment(data_dir, "unused-no-redis")
    with serving("make run", env, SERVICE_PORTS["gateway"], "/health", data_dir / "make-run.log") as port:
        yield port


def test_the_documents_have_commands_and_the_skips_name_real_commands() -> None:
    assert len(COMMANDS) >= 30
    texts = [command.text for command in COMMANDS]
    unused = [prefix for prefix in NOT_HERE if not any(text.startswith(prefix) for text in texts)]
    assert unused == [], f"skip entries that match no command any more: {unused}"
    continued = [text for text in texts if text.startswith("AUTH_DATABASE_URL=")]
    assert continued and "make run-auth_service" in continued[0], "a continued line taken for a command of its own"
    console = shell_commands("README.md")
    assert not any(command.text.startswith(("ID ", "0b6f")) for command in console), "output taken for a command"
