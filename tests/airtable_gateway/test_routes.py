"""Every platform route against the Airtable emulator over HTTP: bases, tables, records (pages,
``all=true``, query options, batches split into writes of 10, upsert), errors passed through."""

from typing import Any

import httpx
import pytest

from airtable_gateway.app import create_app
from tests.airtable_gateway.conftest import API, ORG, PROBLEM, SettingsFactory, bearer, grant, upstream_log
from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, Emulator
from tests.conftest import app_client

CONTACTS_URL = f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records"
TASKS_URL = f"{API}/bases/{OPS_BASE}/tables/{TASKS}/records"


def ids(body: dict[str, Any]) -> list[str]:
    return [record["id"] for record in body["records"]]


async def test_bases_and_one_base(client: httpx.AsyncClient, org_grants: str) -> None:
    grant(org_grants, ORG, "appNoSuchBase0000")  # granted, but Airtable has no such base
    listed = await client.get(f"{API}/bases")
    assert listed.status_code == 200
    assert {base["id"] for base in listed.json()["bases"]} == {CRM_BASE, OPS_BASE}

    one = await client.get(f"{API}/bases/{CRM_BASE}")
    assert one.status_code == 200
    assert one.json() == {"id": CRM_BASE, "name": "CRM", "permissionLevel": "create"}

    missing = await client.get(f"{API}/bases/appNoSuchBase0000")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert missing.json()["code"] == "base-not-found"


async def test_tables_and_one_table_by_id_or_name(client: httpx.AsyncClient) -> None:
    tables = await client.get(f"{API}/bases/{CRM_BASE}/tables")
    assert tables.status_code == 200
    assert {table["name"] for table in tables.json()["tables"]} == {"Contacts", "Companies"}

    by_id = await client.get(f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}")
    by_name = await client.get(f"{API}/bases/{CRM_BASE}/tables/Contacts")
    assert by_id.status_code == by_name.status_code == 200
    assert by_id.json() == by_name.json()
    assert "Age" in {field["name"] for field in by_id.json()["fields"]}

    missing = await client.get(f"{API}/bases/{CRM_BASE}/tables/NoSuchTable")
    assert missing.status_code == 404
    assert missing.json()["code"] == "table-not-found"


async def test_pages_follow_offsets_to_the_end(client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    offset = None
    pages = []
    for _ in range(4):
        params = {"page_size": 100, **({"offset": offset} if offset else {})}
        response = await client.get(CONTACTS_URL, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append((len(body["records"]), body["hasMore"]))
        seen += ids(body)
        offset = body["offset"]
        if not body["hasMore"]:
            assert offset is None
            break
    assert pages == [(100, True), (100, True), (50, False)]
    assert len(set(seen)) == 250


async def test_all_follows_every_page_up_to_max_records(client: httpx.AsyncClient, emulator: Emulator) -> None:
    everything = await client.get(CONTACTS_URL, params={"all": "true"})
    assert everything.status_code == 200
    body = everything.json()
    assert len(set(ids(body))) == 250
    assert body["hasMore"] is False and body["offset"] is None
    assert len(upstream_log(emulator, CRM_BASE)) == 3  # pages of 100

    capped = await client.get(CONTACTS_URL, params={"all": "true", "max_records": 120})
    assert len(capped.json()["records"]) == 120


async def test_query_options_reach_airtable(client: httpx.AsyncClient) -> None:
    response = await client.get(
        CONTACTS_URL,
        params={"fields": ["Name", "Age"], "sort": "-Age", "filter_by_formula": "{Age} > 60", "max_records": 5},
    )
    assert response.status_code == 200, response.text
    records = response.json()["records"]
    assert 0 < len(records) <= 5
    assert all(set(record["fields"]) <= {"Name", "Age"} for record in records)
    ages = [record["fields"]["Age"] for record in records]
    assert ages == sorted(ages, reverse=True) and min(ages) > 60

    legacy = await client.get(
        CONTACTS_URL, params={"sort_field": "Name", "sort_direction": "desc", "page_size": 10, "view": "Grid view"}
    )
    names = [record["fields"]["Name"] for record in legacy.json()["records"]]
    assert len(names) == 10 and names == sorted(names, key=str.lower, reverse=True)  # Airtable ignores case


async def test_create_sends_writes_of_ten_and_answers_per_record(client: httpx.AsyncClient, emulator: Emulator) -> None:
    records = [{"fields": {"Name": f"Batch {n:02d}", "Priority": n}} for n in range(25)]
    response = await client.post(TASKS_URL, json={"records": records})
    assert response.status_code == 201, response.text
    body = response.json()
    assert [result["index"] for result in body["results"]] == list(range(25))
    assert all(result["status"] == 201 and result["record"]["id"].startswith("rec") for result in body["results"])
    assert [record["fields"]["Name"] for record in body["records"]] == [f"Batch {n:02d}" for n in range(25)]
    assert len(upstream_log(emulator, OPS_BASE, "POST")) == 3

    listed = await client.get(TASKS_URL, params={"all": "true"})
    assert len(listed.json()["records"]) == 20 + 25


async def test_create_one_record_or_a_plain_list(client: httpx.AsyncClient) -> None:
    one = await client.post(TASKS_URL, json={"fields": {"Name": "Single"}})
    assert one.status_code == 201
    assert one.json()["records"][0]["fields"] == {"Name": "Single"}

    legacy = await client.post(TASKS_URL, json=[{"Name": "First"}, {"Name": "Second"}])
    assert legacy.status_code == 201
    assert [record["fields"]["Name"] for record in legacy.json()["records"]] == ["First", "Second"]


async def test_a_value_of_the_wrong_json_type_is_a_422_naming_the_field(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    typecast_text = await client.post(TASKS_URL, json={"records": [{"fields": {"Name": "T"}}], "typecast": "true"})
    numeric_id = await client.patch(TASKS_URL, json={"records": [{"id": 5, "fields": {"Name": "T"}}]})

    for response, field in ((typecast_text, "typecast"), (numeric_id, "records[0].id")):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        assert [error["key"] for error in response.json()["errors"]] == [field]
    assert upstream_log(emulator) == []
    typecast = {"records": [{"fields": {"Name": "T", "Priority": "5"}}], "typecast": True}
    typed = await client.post(TASKS_URL, json=typecast)
    assert typed.status_code == 201, typed.text
    assert typed.json()["records"][0]["fields"] == {"Name": "T", "Priority": 5}  # Airtable's typecast, not ours


async def test_a_failing_write_fails_only_its_own_records(client: httpx.AsyncClient) -> None:
    records = [{"fields": {"Name": f"Ok {n}"}} for n in range(15)]
    records[12] = {"fields": {"No such field": "x"}}
    response = await client.post(TASKS_URL, json={"records": records})
    assert response.status_code == 207
    results = response.json()["results"]
    assert [result["status"] for result in results] == [201] * 10 + [422] * 5
    assert results[12]["error"]["type"] == "UNKNOWN_FIELD_NAME"
    assert len(response.json()["records"]) == 10


async def test_a_write_that_fails_entirely_is_airtables_error(client: httpx.AsyncClient) -> None:
    response = await client.post(TASKS_URL, json={"records": [{"fields": {"No such field": 1}}]})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["error"]["type"] == "UNKNOWN_FIELD_NAME"
    assert response.json()["code"] == "airtable-unknown-field-name"


async def test_batch_update_and_replace(client: httpx.AsyncClient, emulator: Emulator) -> None:
    task_ids = ids((await client.get(TASKS_URL, params={"page_size": 12})).json())
    patched = await client.patch(TASKS_URL, json=[{"id": id_, "Priority": 7} for id_ in task_ids])
    assert patched.status_code == 200, patched.text
    assert [record["fields"]["Priority"] for record in patched.json()["records"]] == [7] * 12
    assert all(record["fields"]["Name"] for record in patched.json()["records"])  # other fields kept
    assert len(upstream_log(emulator, OPS_BASE, "PATCH")) == 2

    replaced = await client.put(TASKS_URL, json={"records": [{"id": task_ids[0], "fields": {"Name": "Only name"}}]})
    assert replaced.status_code == 200
    assert replaced.json()["records"][0]["fields"] == {"Name": "Only name"}


async def test_one_record_read_update_replace_delete(client: httpx.AsyncClient) -> None:
    url = f"{TASKS_URL}/recTask0000000001"
    read = await client.get(url)
    assert read.status_code == 200
    assert read.json()["fields"]["Name"] == "Task 01"

    updated = await client.patch(url, json={"fields": {"Priority": 5}})
    assert updated.status_code == 200
    assert updated.json()["fields"] == {"Name": "Task 01", "Priority": 5, "Due": "2026-02-01"}
    assert (await client.get(url)).json()["fields"]["Priority"] == 5

    replaced = await client.put(url, json={"fields": {"Name": "Renamed"}})
    assert replaced.json()["fields"] == {"Name": "Renamed"}

    deleted = await client.delete(url)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": "recTask0000000001", "deleted": True}
    gone = await client.get(url)
    assert gone.status_code == 404
    assert gone.headers["content-type"] == PROBLEM
    assert gone.json()["error"]["type"] in ("NOT_FOUND", "MODEL_ID_NOT_FOUND")


async def test_batch_delete_by_record_ids(client: httpx.AsyncClient, emulator: Emulator) -> None:
    task_ids = ids((await client.get(TASKS_URL, params={"page_size": 12})).json())
    query = [("record_ids", ",".join(task_ids[:6])), *[("record_ids", id_) for id_ in task_ids[6:]]]
    response = await client.delete(TASKS_URL, params=query)
    assert response.status_code == 200, response.text
    assert response.json()["records"] == [{"id": id_, "deleted": True} for id_ in task_ids]
    assert len(upstream_log(emulator, OPS_BASE, "DELETE")) == 2
    remaining = await client.get(TASKS_URL, params={"all": "true"})
    assert len(remaining.json()["records"]) == 8


async def test_upsert_updates_matches_and_creates_the_rest(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{TASKS_URL}/upsert",
        json={
            "records": [
                {"fields": {"Name": "Task 01", "Priority": 9}},
                {"fields": {"Name": "Brand new", "Priority": 1}},
            ],
            "fields_to_merge_on": ["Name"],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["updatedRecords"] == ["recTask0000000001"]
    assert len(body["createdRecords"]) == 1
    assert [record["fields"]["Priority"] for record in body["records"]] == [9, 1]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", CONTACTS_URL, {"params": {"page_size": 0}}, 422),
        ("GET", CONTACTS_URL, {"params": {"page_size": 101}}, 422),
        ("GET", CONTACTS_URL, {"params": {"all": "perhaps"}}, 422),
        ("POST", TASKS_URL, {"json": {"records": []}}, 422),
        ("POST", TASKS_URL, {"json": {"records": [{"id": "recX"}]}}, 422),
        ("POST", TASKS_URL, {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ("PATCH", TASKS_URL, {"json": [{"Name": "no id"}]}, 422),
        ("POST", f"{TASKS_URL}/upsert", {"json": {"records": [{"fields": {}}]}}, 422),
        ("DELETE", TASKS_URL, {}, 422),
        ("DELETE", TASKS_URL, {"params": {"record_ids": ",".join(f"rec{n:014d}" for n in range(1001))}}, 422),
        ("POST", TASKS_URL, {"json": [{"Name": "x"}] * 1001}, 422),
        ("PATCH", TASKS_URL, {"json": {"records": []}}, 422),
        ("PATCH", TASKS_URL, {"json": [{"id": "recTask0000000001", "Name": "x"}] * 1001}, 422),
        ("PUT", f"{API}/token", {"json": {"token": "short"}}, 422),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    client: httpx.AsyncClient, emulator: Emulator, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text[:500]  # 400: not JSON at all; 422: JSON, but invalid
    assert response.headers["content-type"] == PROBLEM
    assert upstream_log(emulator) == []


async def test_every_route_needs_an_access_token(client: httpx.AsyncClient, emulator: Emulator) -> None:
    for path in (f"{API}/bases", CONTACTS_URL, f"{API}/v0/meta/bases", f"{API}/token"):
        response = await client.get(path, headers={"Authorization": ""})
        assert response.status_code == 401
    assert upstream_log(emulator) == []


async def test_the_base_allow_list(make_settings: SettingsFactory, emulator: Emulator) -> None:
    async with app_client(create_app(make_settings(airtable_bases=CRM_BASE))) as client:
        client.headers.update(bearer())
        assert [base["id"] for base in (await client.get(f"{API}/bases")).json()["bases"]] == [CRM_BASE]
        assert [base["id"] for base in (await client.get(f"{API}/v0/meta/bases")).json()["bases"]] == [CRM_BASE]
        for path in (TASKS_URL, f"{API}/bases/{OPS_BASE}/tables", f"{API}/v0/{OPS_BASE}/{TASKS}"):
            refused = await client.get(path)
            assert refused.status_code == 403
            assert refused.json()["code"] == "base-not-allowed"
        assert (await client.get(CONTACTS_URL, params={"page_size": 1})).status_code == 200
    assert upstream_log(emulator, OPS_BASE) == []


async def test_without_any_airtable_token_a_clear_503(make_settings: SettingsFactory, emulator: Emulator) -> None:
    async with app_client(create_app(make_settings(airtable_token=""))) as client:
        response = await client.get(f"{API}/bases", headers=bearer())
    assert response.status_code == 503
    assert response.json()["code"] == "airtable-token-missing"


async def test_airtables_own_4xx_pass_through_never_a_500(make_settings: SettingsFactory) -> None:
    async with app_client(create_app(make_settings(airtable_token="not-a-token-emulator-knows"))) as client:
        response = await client.get(f"{API}/bases", headers=bearer())
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["error"]["type"] == "AUTHENTICATION_REQUIRED"
    assert "www-authenticate" not in response.headers  # the platform token is fine: Airtable's is not


async def test_dot_segments_never_escape_the_checked_base(make_settings: SettingsFactory, emulator: Emulator) -> None:
    async with app_client(create_app(make_settings(airtable_bases=CRM_BASE))) as client:
        client.headers.update(bearer())
        for path in (
            f"{API}/v0/{CRM_BASE}/%2E%2E/{OPS_BASE}/{TASKS}",
            f"{API}/bases/{CRM_BASE}/tables/%2E%2E/records",
            f"{API}/bases/{CRM_BASE}/tables/{CONTACTS}/records/%2E%2E",
        ):
            response = await client.get(path)
            assert response.status_code == 404, (path, response.text)
            assert response.headers["content-type"] == PROBLEM
    assert upstream_log(emulator) == []


async def test_the_openapi_document_names_every_operation(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    operations = [op["operationId"] for path in response.json()["paths"].values() for op in path.values()]
    assert len(operations) == len(set(operations))
    assert {"list_records", "create_records", "upsert_records", "set_airtable_token", "airtable_v0_get"} <= set(
        operations
    )
