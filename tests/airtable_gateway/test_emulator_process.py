"""The emulator as a real process over HTTP: start-up, the bearer token, the rate limit and its penalty."""

import httpx

from tests.airtable_gateway.emulator_fixture import (  # noqa: F401
    CRM_BASE,
    OPS_BASE,
    Emulator,
    emulator_per_session,
    emulator_per_test,
)


def test_the_process_serves_the_default_seed(emulator: Emulator) -> None:
    bases = httpx.get(f"{emulator.url}/v0/meta/bases", headers=emulator.headers).json()["bases"]
    assert [base["id"] for base in bases] == [CRM_BASE, OPS_BASE]
    page = httpx.get(f"{emulator.url}/v0/{CRM_BASE}/Contacts", headers=emulator.headers).json()
    assert len(page["records"]) == 100
    assert "offset" in page
    record = httpx.get(f"{emulator.url}/v0/{CRM_BASE}/Contacts/recContact0000001", headers=emulator.headers).json()
    assert record["fields"]["Name"] == "Ada Lovelace 001"


def test_the_process_says_when_it_is_ready(emulator: Emulator) -> None:
    assert "airtable emulator ready on http://127.0.0.1:" in emulator.service.log_tail()
