"""The embedded run mode with no AIRTABLE_TOKEN: the whole platform in one process, the Airtable
gateway in front of the built-in emulator; an Airtable client goes through the API gateway."""

import subprocess
import uuid
from pathlib import Path

import httpx
from pyairtable import Api

from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS
from tests.e2e.processes import PYTHON, REPO, Processes, access_token, environment, free_port


def test_the_embedded_platform_serves_airtable_from_the_emulator(tmp_path: Path) -> None:
    port = free_port()
    env = environment(tmp_path / "data", GATEWAY_PORT=str(port))
    migrated = subprocess.run(
        [PYTHON, "-m", "embedded", "migrate"], cwd=REPO, env=env, capture_output=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    processes = Processes(tmp_path)
    try:
        platform = processes.python("embedded", ["-m", "embedded", "serve"], env, port).wait_healthy()
        # No grants: with the emulator, the embedded mode grants every organisation write access.
        organization = uuid.uuid4()
        headers = {"Authorization": f"Bearer {access_token(org=organization)}"}
        bases = httpx.get(f"{platform.url}/api/v1/airtable/bases", headers=headers, timeout=10)
        assert bases.status_code == 200, bases.text
        assert {base["id"] for base in bases.json()["bases"]} == {CRM_BASE, OPS_BASE}
        assert bases.headers["x-cache"] == "MISS"

        api = Api(access_token(org=organization), endpoint_url=f"{platform.url}/api/v1/airtable")
        assert len(api.table(CRM_BASE, CONTACTS).all()) == 250
        created = api.table(OPS_BASE, TASKS).create({"Name": "Embedded"})
        assert api.table(OPS_BASE, TASKS).get(created["id"])["fields"] == {"Name": "Embedded"}
        api.session.close()
    finally:
        processes.stop_all()
    assert (tmp_path / "data" / "airtable.sqlite3").exists()
