"""The emulator's writes: create, update (PATCH merges, PUT replaces), delete, upsert, typecast, limits."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, in_process

TASKS_URL = f"/v0/{OPS_BASE}/{TASKS}"
CONTACTS_URL = f"/v0/{CRM_BASE}/{CONTACTS}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(requests_per_second=0) as client:
        yield client


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == error_type
    return error


async def count(client: httpx.AsyncClient, url: str = TASKS_URL) -> int:
    return len((await client.get(url)).json()["records"])


async def test_create_one_record_returns_it_and_lists_it(client: httpx.AsyncClient) -> None:
    response = await client.post(TASKS_URL, json={"fields": {"Name": "Write docs", "Priority": 2, "Done": False}})
    assert response.status_code == 200
    record = response.json()
    assert record["id"].startswith("rec") and len(record["id"]) == 17
    assert record["createdTime"].endswith(".000Z")
    assert record["fields"] == {"Name": "Write docs", "Priority": 2}  # an unticked checkbox is left out
    assert (await client.get(f"{TASKS_URL}/{record['id']}")).json() == record
    assert await count(client) == 21


async def test_create_a_batch_returns_the_records_in_order(client: httpx.AsyncClient) -> None:
    body = {"records": [{"fields": {"Name": f"Batch {i}"}} for i in range(10)]}
    records = (await client.post(TASKS_URL, json=body)).json()["records"]
    assert [r["fields"]["Name"] for r in records] == [f"Batch {i}" for i in range(10)]
    assert len({r["id"] for r in records}) == 10
    assert await count(client) == 30


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", TASKS_URL, {"records": [{"fields": {"Name": str(i)}} for i in range(11)]}),
        ("PATCH", TASKS_URL, {"records": [{"id": f"recTask{i:010d}", "fields": {}} for i in range(1, 12)]}),
        ("PUT", TASKS_URL, {"records": [{"id": f"recTask{i:010d}", "fields": {}} for i in range(1, 12)]}),
        (
            "PATCH",
            TASKS_URL,
            {
                "records": [{"fields": {"Name": str(i)}} for i in range(11)],
                "performUpsert": {"fieldsToMergeOn": ["Name"]},
            },
        ),
    ],
)
async def test_a_write_of_more_than_10_records_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, method: str, url: str, body: dict[str, Any]
) -> None:
    before = (await client.get(url)).json()
    error = assert_error(await client.request(method, url, json=body), 422, "INVALID_RECORDS")
    assert "10" in error["message"]
    assert (await client.get(url)).json()["records"] == before["records"]


async def test_a_batch_delete_of_more_than_10_records_is_refused(client: httpx.AsyncClient) -> None:
    ids = [f"recTask{i:010d}" for i in range(1, 12)]
    assert_error(await client.delete(TASKS_URL, params={"records[]": ids}), 422, "INVALID_RECORDS")
    assert await count(client) == 20


@pytest.mark.parametrize("body", [{}, {"records": []}, {"records": "x"}, {"records": [1, 2]}])
async def test_a_create_without_records_is_refused(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    assert_error(await client.post(TASKS_URL, json=body), 422, "INVALID_RECORDS")


async def test_patch_merges_and_put_replaces_one_record(client: httpx.AsyncClient) -> None:
    url = f"{TASKS_URL}/recTask0000000005"
    before = (await client.get(url)).json()["fields"]
    assert before["Notes"] == "Blocked on review"
    patched = (await client.patch(url, json={"fields": {"Priority": 9, "Notes": None}})).json()
    assert patched["fields"] == {**{k: v for k, v in before.items() if k != "Notes"}, "Priority": 9}
    replaced = (await client.put(url, json={"fields": {"Name": "Only a name"}})).json()
    assert replaced["fields"] == {"Name": "Only a name"}
    assert replaced["createdTime"] == patched["createdTime"]
    assert (await client.get(url)).json() == replaced


async def test_patch_and_put_a_batch(client: httpx.AsyncClient) -> None:
    body = {
        "records": [
            {"id": "recTask0000000001", "fields": {"Done": True}},
            {"id": "recTask0000000002", "fields": {"Priority": 7}},
        ]
    }
    patched = (await client.patch(TASKS_URL, json=body)).json()["records"]
    assert patched[0]["fields"]["Done"] is True and patched[0]["fields"]["Name"] == "Task 01"
    assert patched[1]["fields"]["Priority"] == 7 and patched[1]["fields"]["Name"] == "Task 02"
    put = (
        await client.put(TASKS_URL, json={"records": [{"id": "recTask0000000001", "fields": {"Name": "One"}}]})
    ).json()
    assert put["records"][0]["fields"] == {"Name": "One"}


async def test_an_update_naming_an_unknown_record_changes_nothing(client: httpx.AsyncClient) -> None:
    body = {
        "records": [{"id": "recTask0000000001", "fields": {"Priority": 99}}, {"id": "recNoSuchRecord00", "fields": {}}]
    }
    assert_error(await client.patch(TASKS_URL, json=body), 404, "MODEL_ID_NOT_FOUND")
    assert (await client.get(f"{TASKS_URL}/recTask0000000001")).json()["fields"]["Priority"] != 99
    assert_error(await client.patch(f"{TASKS_URL}/recNoSuchRecord00", json={"fields": {}}), 404, "MODEL_ID_NOT_FOUND")
    no_id = {"records": [{"fields": {"Priority": 1}}]}
    assert_error(await client.patch(TASKS_URL, json=no_id), 422, "INVALID_RECORDS")


async def test_delete_one_and_a_batch(client: httpx.AsyncClient) -> None:
    one = await client.delete(f"{TASKS_URL}/recTask0000000001")
    assert one.json() == {"id": "recTask0000000001", "deleted": True}
    ids = ["recTask0000000002", "recTask0000000003"]
    batch = await client.delete(TASKS_URL, params={"records[]": ids})
    assert batch.json() == {"records": [{"id": record_id, "deleted": True} for record_id in ids]}
    assert await count(client) == 17
    assert_error(await client.get(f"{TASKS_URL}/recTask0000000002"), 404, "MODEL_ID_NOT_FOUND")
    assert_error(await client.delete(f"{TASKS_URL}/recTask0000000001"), 404, "MODEL_ID_NOT_FOUND")
    partly_unknown = await client.delete(TASKS_URL, params={"records[]": ["recTask0000000004", "recNoSuchRecord00"]})
    assert_error(partly_unknown, 404, "MODEL_ID_NOT_FOUND")
    assert await count(client) == 17
    assert_error(await client.delete(TASKS_URL), 422, "INVALID_RECORDS")


async def test_upsert_creates_the_unmatched_and_updates_the_matched(client: httpx.AsyncClient) -> None:
    body = {
        "performUpsert": {"fieldsToMergeOn": ["Name"]},
        "records": [
            {"fields": {"Name": "Task 03", "Priority": 42}},
            {"fields": {"Name": "Brand new", "Priority": 1}},
            {"id": "recTask0000000004", "fields": {"Notes": "by id"}},
        ],
    }
    response = await client.patch(TASKS_URL, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    records = result["records"]
    assert records[0]["id"] == "recTask0000000003" and records[0]["fields"]["Priority"] == 42
    assert records[0]["fields"]["Due"] == "2026-02-03"  # PATCH keeps the fields it was not given
    assert result["createdRecords"] == [records[1]["id"]]
    assert result["updatedRecords"] == ["recTask0000000003", "recTask0000000004"]
    assert records[2]["fields"]["Notes"] == "by id"
    assert await count(client) == 21
    again = (await client.patch(TASKS_URL, json=body)).json()
    assert again["createdRecords"] == [] and records[1]["id"] in again["updatedRecords"]


async def test_upsert_with_put_replaces_the_matched_record(client: httpx.AsyncClient) -> None:
    body = {"performUpsert": {"fieldsToMergeOn": ["Name"]}, "records": [{"fields": {"Name": "Task 03"}}]}
    result = (await client.put(TASKS_URL, json=body)).json()
    assert result["records"][0]["fields"] == {"Name": "Task 03"}


async def test_upsert_on_two_fields_and_duplicates_within_one_request(client: httpx.AsyncClient) -> None:
    body = {
        "performUpsert": {"fieldsToMergeOn": ["Name", "Priority"]},
        "records": [
            {"fields": {"Name": "Task 01", "Priority": 2, "Notes": "matched"}},
            {"fields": {"Name": "Task 01", "Priority": 3, "Notes": "first"}},
            {"fields": {"Name": "Task 01", "Priority": 3, "Notes": "second"}},
        ],
    }
    result = (await client.patch(TASKS_URL, json=body)).json()
    ids = [r["id"] for r in result["records"]]
    assert ids[0] == "recTask0000000001"
    assert ids[1] == ids[2] and result["createdRecords"] == [ids[1]]
    assert (await client.get(f"{TASKS_URL}/{ids[1]}")).json()["fields"]["Notes"] == "second"


@pytest.mark.parametrize(
    ("upsert", "records", "error_type"),
    [
        ({"fieldsToMergeOn": []}, [{"fields": {"Name": "x"}}], "INVALID_REQUEST_UNKNOWN"),
        ({"fieldsToMergeOn": ["Nope"]}, [{"fields": {"Name": "x"}}], "UNKNOWN_FIELD_NAME"),
        ({}, [{"fields": {"Name": "x"}}], "INVALID_REQUEST_UNKNOWN"),
        ({"fieldsToMergeOn": ["Name", "Notes"]}, [{"fields": {"Name": "x"}}], "INVALID_VALUE_FOR_COLUMN"),
        ({"fieldsToMergeOn": ["Notes"]}, [{"fields": {"Notes": "Blocked on review"}}], "INVALID_VALUE_FOR_COLUMN"),
    ],
)
async def test_a_bad_upsert_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, upsert: dict[str, Any], records: list[dict[str, Any]], error_type: str
) -> None:
    before = (await client.get(TASKS_URL)).json()
    assert_error(await client.patch(TASKS_URL, json={"performUpsert": upsert, "records": records}), 422, error_type)
    assert (await client.get(TASKS_URL)).json() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Age", "42"),
        ("Age", True),
        ("Name", 42),
        ("Active", "yes"),
        ("Joined", "2026-01-05T10:00:00Z"),
        ("Joined", "05/01/2026"),
        ("Status", "Prospect"),
        ("Tags", "vip, partner"),
        ("Tags", ["vip", "unknown"]),
    ],
)
async def test_a_value_that_does_not_fit_its_field_is_refused_without_typecast(
    client: httpx.AsyncClient, field: str, value: Any
) -> None:
    error = assert_error(
        await client.post(CONTACTS_URL, json={"fields": {field: value}}), 422, "INVALID_VALUE_FOR_COLUMN"
    )
    assert f'"{field}"' in error["message"]
    assert await count(client, f"{CONTACTS_URL}?filterByFormula=NOT(FIND('@', {{Email}}))") == 0


async def test_typecast_converts_values_and_creates_select_options(client: httpx.AsyncClient) -> None:
    fields = {
        "Name": 42,
        "Age": "42",
        "Score": "1,234.5",
        "Active": "yes",
        "Joined": "2026-01-05T10:00:00Z",
        "Status": "Prospect",
        "Tags": "vip, partner, brand-new",
    }
    response = await client.post(CONTACTS_URL, json={"fields": fields, "typecast": True})
    assert response.status_code == 200, response.text
    assert response.json()["fields"] == {
        "Name": "42",
        "Age": 42,
        "Score": 1234.5,
        "Active": True,
        "Joined": "2026-01-05",
        "Status": "Prospect",
        "Tags": ["vip", "partner", "brand-new"],
    }
    schema = (await client.get(f"/v0/meta/bases/{CRM_BASE}/tables")).json()["tables"][0]
    status = next(f for f in schema["fields"] if f["name"] == "Status")
    assert "Prospect" in [choice["name"] for choice in status["options"]["choices"]]
    not_a_number = await client.post(CONTACTS_URL, json={"fields": {"Age": "forty"}, "typecast": True})
    assert_error(not_a_number, 422, "INVALID_VALUE_FOR_COLUMN")


async def test_writes_accept_field_ids_and_can_answer_by_field_id(client: httpx.AsyncClient) -> None:
    body = {"fields": {"fldTasksName00000": "By id", "Priority": 3}, "returnFieldsByFieldId": True}
    record = (await client.post(TASKS_URL, json=body)).json()
    assert record["fields"] == {"fldTasksName00000": "By id", "fldTasksPriority0": 3}
    by_name = (await client.get(f"{TASKS_URL}/{record['id']}")).json()
    assert by_name["fields"] == {"Name": "By id", "Priority": 3}


async def test_an_unknown_field_is_refused(client: httpx.AsyncClient) -> None:
    error = assert_error(await client.post(TASKS_URL, json={"fields": {"Nope": 1}}), 422, "UNKNOWN_FIELD_NAME")
    assert error["message"] == 'Unknown field name: "Nope"'


async def test_a_computed_field_cannot_be_written() -> None:
    seed = {
        "bases": [
            {
                "id": "appComputedBase00",
                "name": "Computed",
                "tables": [
                    {
                        "name": "T",
                        "fields": [
                            {"name": "Name", "type": "singleLineText"},
                            {"name": "Number", "type": "autoNumber"},
                        ],
                        "records": [{"fields": {"Name": "seeded", "Number": 1}}],
                    }
                ],
            }
        ]
    }
    async with in_process(seed) as client:
        listed = (await client.get("/v0/appComputedBase00/T")).json()["records"]
        assert listed[0]["fields"] == {"Name": "seeded", "Number": 1}
        error = assert_error(
            await client.post("/v0/appComputedBase00/T", json={"fields": {"Number": 2}}),
            422,
            "INVALID_VALUE_FOR_COLUMN",
        )
        assert "computed" in error["message"]


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"{not json", 400), (b"[1, 2]", 422), (b'"text"', 422)],
)
async def test_a_body_that_is_not_a_json_object_is_refused(
    client: httpx.AsyncClient, content: bytes, status: int
) -> None:
    response = await client.post(TASKS_URL, content=content, headers={"Content-Type": "application/json"})
    assert_error(response, status, "INVALID_REQUEST_UNKNOWN")


async def test_a_body_over_the_size_limit_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(TASKS_URL, json={"fields": {"Notes": "x" * (3 * 1024 * 1024)}})
    assert_error(response, 413, "REQUEST_ENTITY_TOO_LARGE")
