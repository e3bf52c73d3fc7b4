"""The emulator as a real process over HTTP: start-up, the rate limit and its penalty, the test controls, the CLI."""

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.airtable_gateway.emulator_fixture import (
    CRM_BASE,
    OPS_BASE,
    TASKS,
    TOKEN,
    Emulator,
    run_emulator,
    wait_ready,
)
from tests.e2e.processes import REPO, Processes, environment, free_port

PENALTY = 3.0


@pytest.fixture(scope="module")
def limited_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """5 requests/s per base and a 3 s penalty: long enough that "still in the penalty" is never a race."""
    with run_emulator(tmp_path_factory.mktemp("limited"), penalty_seconds=PENALTY) as running:
        yield running


@pytest.fixture
def limited(limited_process: Emulator) -> Emulator:
    limited_process.reset()
    return limited_process


def get(emulator: Emulator, path: str) -> httpx.Response:
    return httpx.get(f"{emulator.url}{path}", headers=emulator.headers, timeout=10)


def burst_until_throttled(emulator: Emulator, path: str) -> list[int]:
    """Statuses of back-to-back requests up to the first 429 (within a generous deadline)."""
    statuses: list[int] = []
    deadline = time.monotonic() + 20
    with httpx.Client(headers=emulator.headers, timeout=10) as client:
        while time.monotonic() < deadline:
            statuses.append(client.get(f"{emulator.url}{path}").status_code)
            if statuses[-1] == 429:
                return statuses
    pytest.fail(f"no 429 within the deadline: {statuses}")


def test_the_process_serves_the_default_seed_and_says_when_it_is_ready(emulator: Emulator) -> None:
    bases = get(emulator, "/v0/meta/bases").json()["bases"]
    assert [base["id"] for base in bases] == [CRM_BASE, OPS_BASE]
    page = get(emulator, f"/v0/{CRM_BASE}/Contacts").json()
    assert len(page["records"]) == 100 and "offset" in page
    assert "airtable emulator ready on http://127.0.0.1:" in emulator.service.log_tail()


def test_a_burst_on_one_base_is_throttled_then_penalised_for_the_whole_penalty(limited: Emulator) -> None:
    path = f"/v0/{OPS_BASE}/{TASKS}"
    statuses = burst_until_throttled(limited, path)
    throttled_at = time.monotonic()
    assert statuses.count(200) >= 5 and set(statuses) == {200, 429}
    error = get(limited, path)
    assert error.status_code == 429  # every request during the penalty
    assert error.json() == {
        "error": {"type": "TOO_MANY_REQUESTS", "message": "Rate limit exceeded. Please try again later"}
    }
    assert get(limited, f"/v0/meta/bases/{CRM_BASE}/tables").status_code == 200  # another base is not penalised
    while get(limited, path).status_code == 429:
        assert time.monotonic() - throttled_at < PENALTY + 15, "the penalty never ended"
        time.sleep(0.2)
    assert time.monotonic() - throttled_at >= PENALTY * 0.95
    stats = limited.stats()
    assert stats["throttled"][OPS_BASE] >= 2
    assert CRM_BASE not in stats["throttled"]


def test_no_second_of_the_log_holds_more_than_5_accepted_requests_per_base(limited: Emulator) -> None:
    burst_until_throttled(limited, f"/v0/{OPS_BASE}/{TASKS}")
    accepted = [entry["at"] for entry in limited.stats()["log"] if entry["base"] == OPS_BASE and entry["status"] == 200]
    assert len(accepted) >= 5
    for i, start in enumerate(accepted):
        assert len([at for at in accepted[i:] if at < start + 1.0]) <= 5


def test_an_injected_429_starts_the_penalty(limited: Emulator) -> None:
    limited.fail(CRM_BASE, 429)
    assert get(limited, f"/v0/{CRM_BASE}/Contacts").status_code == 429
    assert get(limited, f"/v0/{CRM_BASE}/Contacts/recContact0000001").status_code == 429
    assert get(limited, f"/v0/{OPS_BASE}/{TASKS}").status_code == 200
    assert limited.stats()["throttled"] == {CRM_BASE: 2}


def test_injected_server_errors_answer_the_next_requests_to_that_base(emulator: Emulator) -> None:
    emulator.fail(OPS_BASE, 503, count=2)
    emulator.fail(CRM_BASE, 500)
    path = f"/v0/{OPS_BASE}/{TASKS}"
    first, second, third = get(emulator, path), get(emulator, path), get(emulator, path)
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.json()["error"]["type"] == "SERVICE_UNAVAILABLE"
    assert get(emulator, f"/v0/{CRM_BASE}/Contacts").status_code == 500
    assert get(emulator, f"/v0/{CRM_BASE}/Contacts").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"base": "appNoSuchBase0000", "status": 503, "count": 1},
        {"base": OPS_BASE, "status": 418, "count": 1},
        {"base": OPS_BASE, "status": 503, "count": 0},
        {"base": OPS_BASE, "status": 503, "count": "two"},
    ],
)
def test_a_bad_failure_injection_is_refused(emulator: Emulator, body: dict[str, object]) -> None:
    response = httpx.post(f"{emulator.url}/_emulator/fail", json=body)
    assert response.status_code == 422
    assert get(emulator, f"/v0/{OPS_BASE}/{TASKS}").status_code == 200


def test_latency_delays_every_answer_until_reset(emulator: Emulator) -> None:
    emulator.set_latency(0.4)
    started = time.monotonic()
    assert get(emulator, "/v0/meta/bases").status_code == 200
    assert time.monotonic() - started >= 0.4
    assert httpx.post(f"{emulator.url}/_emulator/latency", json={"seconds": -1}).status_code == 422
    emulator.reset()
    assert emulator.stats() == {"requests": {}, "throttled": {}, "log": []}


def test_stats_count_requests_per_base_and_log_each_one(emulator: Emulator) -> None:
    get(emulator, "/v0/meta/bases")
    get(emulator, f"/v0/{CRM_BASE}/Contacts/recContact0000001")
    get(emulator, f"/v0/meta/bases/{CRM_BASE}/tables")
    httpx.get(f"{emulator.url}/v0/{OPS_BASE}/{TASKS}", headers={"Authorization": "Bearer wrong"})
    stats = emulator.stats()
    assert stats["requests"] == {CRM_BASE: 2}
    assert stats["throttled"] == {}
    fingerprint = hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
    assert [(e["base"], e["method"], e["path"], e["status"], e["token"]) for e in stats["log"]] == [
        (None, "GET", "/v0/meta/bases", 200, fingerprint),
        (CRM_BASE, "GET", f"/v0/{CRM_BASE}/Contacts/recContact0000001", 200, fingerprint),
        (CRM_BASE, "GET", f"/v0/meta/bases/{CRM_BASE}/tables", 200, fingerprint),
        (OPS_BASE, "GET", f"/v0/{OPS_BASE}/{TASKS}", 401, hashlib.sha256(b"wrong").hexdigest()[:12]),
    ]
    assert all(isinstance(e["at"], float) for e in stats["log"])
    assert TOKEN not in str(stats)


def test_reset_restores_the_seed(emulator: Emulator) -> None:
    url = f"{emulator.url}/v0/{OPS_BASE}/{TASKS}/recTask0000000001"
    assert httpx.delete(url, headers=emulator.headers).status_code == 200
    assert httpx.get(url, headers=emulator.headers).status_code == 404
    emulator.reset()
    assert httpx.get(url, headers=emulator.headers).json()["fields"]["Name"] == "Task 01"


def test_an_unknown_control_is_not_found(emulator: Emulator) -> None:
    assert httpx.get(f"{emulator.url}/_emulator/nope").status_code == 404
    assert httpx.post(f"{emulator.url}/_emulator/fail", content=b"{nope").status_code == 400


def test_a_seed_file_and_the_token_from_the_environment(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        '{"bases": [{"id": "appFromAFile00000", "name": "File", "tables": '
        '[{"name": "Things", "fields": [{"name": "Name", "type": "singleLineText"}], '
        '"records": [{"fields": {"Name": "from the file"}}]}]}]}'
    )
    processes = Processes(tmp_path)
    port = free_port()
    env = environment(tmp_path, AIRTABLE_EMULATOR_TOKEN="token-from-env")
    args = ["-m", "airtable_gateway", "emulator", "--port", str(port), "--seed", str(seed)]
    service = processes.python("emulator-env", args, env, port)
    try:
        wait_ready(service)
        things = httpx.get(
            f"{service.url}/v0/appFromAFile00000/Things", headers={"Authorization": "Bearer token-from-env"}
        )
        assert [r["fields"] for r in things.json()["records"]] == [{"Name": "from the file"}]
        refused = httpx.get(f"{service.url}/v0/meta/bases", headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 401
    finally:
        processes.stop_all()


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ('{"bases": [{"id": "app123", "tables": []}]}', "is not 'app' followed by 14"),
        ('{"bases": [{"id": "appFromAFile00000", "tables": [{"name": "T", "fields": []}]}]}', "at least one field"),
        (
            '{"bases": [{"id": "appFromAFile00000", "tables": [{"name": "T", '
            '"fields": [{"name": "N", "type": "number"}], "records": [{"fields": {"N": "x"}}]}]}]}',
            'Field "N" cannot accept',
        ),
        ("not json", "cannot start"),
    ],
)
def test_a_bad_seed_stops_the_cli_with_a_message(tmp_path: Path, seed: str, message: str) -> None:
    path = tmp_path / "seed.json"
    path.write_text(seed)
    result = subprocess.run(
        [sys.executable, "-m", "airtable_gateway", "emulator", "--seed", str(path), "--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
