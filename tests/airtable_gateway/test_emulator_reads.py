"""The emulator's read routes against the default seed: meta, list parameters, pagination, errors."""

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.airtable_gateway.emulator_fixture import CONTACTS, CRM_BASE, OPS_BASE, TASKS, in_process

CONTACTS_URL = f"/v0/{CRM_BASE}/{CONTACTS}"
ID = re.compile(r"^(app|tbl|fld|viw|rec)[A-Za-z0-9]{14}$")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(requests_per_second=0) as client:
        yield client


def assert_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == error_type
    assert response.json()["error"]["message"]


async def all_pages(client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    offset = None
    while True:
        response = await client.get(url, params={**params, **({"offset": offset} if offset else {})})
        assert response.status_code == 200, response.text
        pages.append(response.json()["records"])
        offset = response.json().get("offset")
        if offset is None:
            return pages


async def test_meta_lists_the_bases_and_their_tables_with_airtable_ids(client: httpx.AsyncClient) -> None:
    bases = (await client.get("/v0/meta/bases")).json()
    assert bases == {
        "bases": [
            {"id": CRM_BASE, "name": "CRM", "permissionLevel": "create"},
            {"id": OPS_BASE, "name": "Operations", "permissionLevel": "create"},
        ]
    }
    tables = (await client.get(f"/v0/meta/bases/{CRM_BASE}/tables")).json()["tables"]
    assert [table["name"] for table in tables] == ["Contacts", "Companies"]
    contacts = tables[0]
    assert contacts["primaryFieldId"] == contacts["fields"][0]["id"]
    assert {f["type"] for f in contacts["fields"]} >= {"singleLineText", "number", "checkbox", "singleSelect", "date"}
    assert contacts["views"][0] == {"id": contacts["views"][0]["id"], "name": "Grid view", "type": "grid"}
    for item in [contacts, *contacts["fields"], *contacts["views"]]:
        assert ID.match(item["id"]), item["id"]


async def test_meta_of_an_unknown_base_is_forbidden_or_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/v0/meta/bases/appNoSuchBase0000/tables")
    assert_error(response, 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND")


async def test_a_table_is_found_by_id_or_by_name(client: httpx.AsyncClient) -> None:
    by_id = (await client.get(CONTACTS_URL, params={"maxRecords": 3})).json()
    by_name = (await client.get(f"/v0/{CRM_BASE}/Contacts", params={"maxRecords": 3})).json()
    assert by_id == by_name
    assert [record["id"] for record in by_id["records"]] == [
        "recContact0000001",
        "recContact0000002",
        "recContact0000003",
    ]


async def test_pages_of_100_chained_by_offset_cover_every_record_exactly_once(client: httpx.AsyncClient) -> None:
    pages = await all_pages(client, CONTACTS_URL, {})
    assert [len(page) for page in pages] == [100, 100, 50]
    ids = [record["id"] for page in pages for record in page]
    assert len(ids) == len(set(ids)) == 250


@pytest.mark.parametrize(("page_size", "sizes"), [(1, [1] * 20), (7, [7, 7, 6]), (20, [20]), (100, [20])])
async def test_page_size_sets_the_records_per_page(client: httpx.AsyncClient, page_size: int, sizes: list[int]) -> None:
    pages = await all_pages(client, f"/v0/{OPS_BASE}/{TASKS}", {"pageSize": page_size})
    assert [len(page) for page in pages] == sizes


@pytest.mark.parametrize("page_size", ["0", "101", "ten", "-3"])
async def test_a_page_size_outside_1_to_100_is_rejected(client: httpx.AsyncClient, page_size: str) -> None:
    assert_error(await client.get(CONTACTS_URL, params={"pageSize": page_size}), 422, "INVALID_REQUEST_UNKNOWN")


async def test_max_records_caps_the_whole_listing_across_pages(client: httpx.AsyncClient) -> None:
    pages = await all_pages(client, CONTACTS_URL, {"maxRecords": 130, "pageSize": 50})
    assert [len(page) for page in pages] == [50, 50, 30]
    assert_error(await client.get(CONTACTS_URL, params={"maxRecords": "0"}), 422, "INVALID_REQUEST_UNKNOWN")


async def test_a_pagination_snapshot_survives_writes_between_pages(client: httpx.AsyncClient) -> None:
    first = (await client.get(f"/v0/{OPS_BASE}/{TASKS}", params={"pageSize": 10})).json()
    created = await client.post(f"/v0/{OPS_BASE}/{TASKS}", json={"fields": {"Name": "Late task"}})
    assert created.status_code == 200
    deleted = first["records"][0]["id"]
    second_page_first = first["offset"].split("/")[1]
    assert (await client.delete(f"/v0/{OPS_BASE}/{TASKS}/{second_page_first}")).status_code == 200
    second = (await client.get(f"/v0/{OPS_BASE}/{TASKS}", params={"pageSize": 10, "offset": first["offset"]})).json()
    ids = [r["id"] for r in first["records"] + second["records"]]
    assert len(ids) == 19  # the 20 of the snapshot, minus the one deleted before its page was read
    assert second_page_first not in ids and deleted in ids and "offset" not in second


@pytest.mark.parametrize(
    ("offset", "error_type"),
    [
        ("garbage", "INVALID_OFFSET_VALUE"),
        ("100", "INVALID_OFFSET_VALUE"),
        ("itrNoSuchIterator/recContact0000001", "LIST_RECORDS_ITERATOR_NOT_AVAILABLE"),
    ],
)
async def test_an_unknown_offset_is_rejected(client: httpx.AsyncClient, offset: str, error_type: str) -> None:
    assert_error(await client.get(CONTACTS_URL, params={"offset": offset}), 422, error_type)


async def test_fields_returns_only_the_named_fields_by_name_or_id(client: httpx.AsyncClient) -> None:
    page = (await client.get(CONTACTS_URL, params={"fields[]": ["Name", "fldContactsAge000"], "maxRecords": 5})).json()
    assert all(set(record["fields"]) == {"Name", "Age"} for record in page["records"])
    unknown = await client.get(CONTACTS_URL, params={"fields[]": ["Name", "Nope"]})
    assert_error(unknown, 422, "UNKNOWN_FIELD_NAME")


async def test_return_fields_by_field_id_keys_cells_by_field_id(client: httpx.AsyncClient) -> None:
    page = (await client.get(CONTACTS_URL, params={"returnFieldsByFieldId": "true", "maxRecords": 1})).json()
    assert page["records"][0]["fields"]["fldContactsName00"] == "Ada Lovelace 001"
    record = (await client.get(f"{CONTACTS_URL}/recContact0000001", params={"returnFieldsByFieldId": "1"})).json()
    assert "fldContactsName00" in record["fields"] and "Name" not in record["fields"]


async def test_sort_by_several_fields_and_directions_with_selects_in_option_order(client: httpx.AsyncClient) -> None:
    params = {
        "sort[0][field]": "Status",
        "sort[0][direction]": "desc",
        "sort[1][field]": "Age",
        "fields[]": ["Status", "Age"],
    }
    records = [r for page in await all_pages(client, CONTACTS_URL, params) for r in page]
    keys = [(r["fields"]["Status"], r["fields"]["Age"]) for r in records]
    statuses = list(dict.fromkeys(k[0] for k in keys))
    assert statuses == ["Churned", "Customer", "Lead"]  # a select sorts by its options' order (Lead, Customer, Churned)
    for status in statuses:
        ages = [age for s, age in keys if s == status]
        assert ages == sorted(ages)


async def test_blank_values_sort_first_ascending_and_last_descending(client: httpx.AsyncClient) -> None:
    ascending = (await client.get(CONTACTS_URL, params={"sort[0][field]": "Score", "fields[]": "Score"})).json()
    assert ascending["records"][0]["fields"] == {}
    descending = (
        await client.get(
            CONTACTS_URL, params={"sort[0][field]": "Score", "sort[0][direction]": "desc", "fields[]": "Score"}
        )
    ).json()
    scores = [r["fields"]["Score"] for r in descending["records"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    "params",
    [{"sort[0][field]": "Nope"}, {"sort[0][field]": "Age", "sort[0][direction]": "up"}],
)
async def test_a_bad_sort_is_rejected(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await client.get(CONTACTS_URL, params=params)
    assert response.status_code == 422
    assert response.json()["error"]["type"] in ("UNKNOWN_FIELD_NAME", "INVALID_REQUEST_UNKNOWN")


async def test_a_view_filters_and_orders_its_records(client: httpx.AsyncClient) -> None:
    records = [r for page in await all_pages(client, CONTACTS_URL, {"view": "Active contacts"}) for r in page]
    names = [r["fields"]["Name"] for r in records]
    assert len(records) == 167  # the seed ticks Active on every record whose number is not a multiple of 3
    assert all(r["fields"]["Active"] is True for r in records)
    assert names == sorted(names, key=str.casefold)
    by_id = (await client.get(CONTACTS_URL, params={"view": "viwContactsByAge0", "maxRecords": 5})).json()
    ages = [r["fields"]["Age"] for r in by_id["records"]]
    assert ages == sorted(ages, reverse=True)
    assert ages[0] == 77


async def test_sort_overrides_the_view_order(client: httpx.AsyncClient) -> None:
    params = {"view": "By age", "sort[0][field]": "Age", "maxRecords": 3}
    ages = [r["fields"]["Age"] for r in (await client.get(CONTACTS_URL, params=params)).json()["records"]]
    assert ages == [18, 18, 18]


async def test_an_unknown_view_is_rejected(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(CONTACTS_URL, params={"view": "Nope"}), 422, "VIEW_NAME_NOT_FOUND")


async def test_list_records_by_post_takes_the_parameters_in_the_body(client: httpx.AsyncClient) -> None:
    body = {
        "pageSize": 5,
        "fields": ["Name", "Age"],
        "sort": [{"field": "Age", "direction": "desc"}],
        "filterByFormula": "{Age} >= 70",
        "view": "Grid view",
    }
    first = (await client.post(f"{CONTACTS_URL}/listRecords", json=body)).json()
    assert len(first["records"]) == 5 and all(r["fields"]["Age"] >= 70 for r in first["records"])
    records = list(first["records"])
    offset = first.get("offset")
    while offset:
        page = (await client.post(f"{CONTACTS_URL}/listRecords", json={**body, "offset": offset})).json()
        records += page["records"]
        offset = page.get("offset")
    expected = (await client.get(CONTACTS_URL, params={"filterByFormula": "{Age} >= 70", "pageSize": 100})).json()
    assert len(records) == len(expected["records"]) == len({r["id"] for r in records})
    bad = await client.post(f"{CONTACTS_URL}/listRecords", json={"pageSize": "many"})
    assert_error(bad, 422, "INVALID_REQUEST_UNKNOWN")


async def test_get_a_record_and_its_not_found_errors(client: httpx.AsyncClient) -> None:
    record = (await client.get(f"{CONTACTS_URL}/recContact0000249")).json()
    assert record["id"] == "recContact0000249"
    assert record["createdTime"].endswith("Z")
    assert record["fields"]["Name"].endswith("249")
    assert "Active" not in record["fields"]  # an unticked checkbox is left out, as Airtable does
    assert_error(await client.get(f"{CONTACTS_URL}/recNoSuchRecord00"), 404, "MODEL_ID_NOT_FOUND")
    assert_error(await client.get(f"/v0/{OPS_BASE}/{TASKS}/recContact0000001"), 404, "MODEL_ID_NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        ("GET", f"/v0/appNoSuchBase0000/{CONTACTS}", 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"),
        ("GET", f"/v0/{CRM_BASE}/NoSuchTable", 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"),
        ("GET", f"/v0/{OPS_BASE}/{CONTACTS}", 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"),
        ("GET", "/v0/", 404, "NOT_FOUND"),
        ("GET", f"/v0/{CRM_BASE}", 404, "NOT_FOUND"),
        ("GET", f"{CONTACTS_URL}/recContact0000001/extra", 404, "NOT_FOUND"),
        ("GET", f"{CONTACTS_URL}/listRecords", 404, "NOT_FOUND"),
        ("POST", f"{CONTACTS_URL}/recContact0000001", 404, "NOT_FOUND"),
        ("POST", "/v0/meta/bases", 404, "NOT_FOUND"),
        ("GET", "/elsewhere", 404, "NOT_FOUND"),
    ],
)
async def test_unknown_routes_and_models_answer_airtable_errors(
    client: httpx.AsyncClient, method: str, path: str, status: int, error_type: str
) -> None:
    assert_error(await client.request(method, path), status, error_type)


async def test_a_table_name_with_spaces_and_slashes_is_percent_decoded(client: httpx.AsyncClient) -> None:
    seed = {
        "bases": [
            {
                "id": "appSpacesBase0000",
                "name": "Spaces",
                "tables": [
                    {"name": "To do / done", "fields": [{"name": "Name", "type": "singleLineText"}], "records": []}
                ],
            }
        ]
    }
    async with in_process(seed) as spaced:
        created = await spaced.post("/v0/appSpacesBase0000/To%20do%20%2F%20done", json={"fields": {"Name": "x"}})
        assert created.status_code == 200, created.text
        listed = (await spaced.get("/v0/appSpacesBase0000/To%20do%20%2F%20done")).json()
        assert [r["fields"] for r in listed["records"]] == [{"Name": "x"}]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic ZW11bGF0b3ItdG9rZW4="},
        {"Authorization": "Bearer"},
    ],
)
async def test_requests_without_a_known_bearer_token_are_refused(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    client.headers.pop("Authorization")
    for path in ("/v0/meta/bases", CONTACTS_URL, f"{CONTACTS_URL}/recContact0000001"):
        assert_error(await client.get(path, headers=headers), 401, "AUTHENTICATION_REQUIRED")


async def test_any_of_several_configured_tokens_is_accepted() -> None:
    async with in_process(tokens=("first", "second")) as client:
        for token, status in (("first", 200), ("second", 200), ("emulator-token", 401)):
            response = await client.get("/v0/meta/bases", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == status


async def test_cell_format_string_is_refused_rather_than_ignored(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(CONTACTS_URL, params={"cellFormat": "string"}), 422, "INVALID_REQUEST_UNKNOWN")


async def test_one_token_over_its_own_limit_is_penalised_on_every_base_while_another_token_is_not() -> None:
    async with in_process(tokens=("a", "b"), requests_per_second=0, requests_per_second_per_token=3) as client:
        paths = [CONTACTS_URL, f"/v0/{OPS_BASE}/{TASKS}", "/v0/meta/bases"]
        statuses: list[int] = []
        while 429 not in statuses:
            assert len(statuses) < 1000, "never throttled"
            response = await client.get(paths[len(statuses) % 3], headers={"Authorization": "Bearer a"})
            statuses.append(response.status_code)
        assert statuses.count(200) >= 3
        for path in paths:
            assert_error(await client.get(path, headers={"Authorization": "Bearer a"}), 429, "TOO_MANY_REQUESTS")
            assert (await client.get(path, headers={"Authorization": "Bearer b"})).status_code == 200
