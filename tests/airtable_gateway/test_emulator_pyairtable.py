"""The ``pyairtable`` package, unchanged, against the emulator process: its endpoint URL is all that differs."""

from collections.abc import Iterator

import pytest
import requests
from pyairtable import Api, Table
from pyairtable.formulas import GT, Field, match

from tests.airtable_gateway.emulator_fixture import (
    CRM_BASE,
    OPS_BASE,
    TASKS,
    TOKEN,
    Emulator,
    run_emulator,
)


@pytest.fixture(scope="module")
def unlimited_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with run_emulator(tmp_path_factory.mktemp("pyairtable"), requests_per_second=0) as running:
        yield running


@pytest.fixture
def api(unlimited_process: Emulator) -> Api:
    unlimited_process.reset()
    return Api(TOKEN, endpoint_url=unlimited_process.url, timeout=(5, 10))


@pytest.fixture
def tasks(api: Api) -> Table:
    return api.table(OPS_BASE, "Tasks")


def test_bases_and_schema_parse_into_pyairtable_models(api: Api) -> None:
    assert [(base.id, base.name, base.permission_level) for base in api.bases()] == [
        (CRM_BASE, "CRM", "create"),
        (OPS_BASE, "Operations", "create"),
    ]
    schema = api.base(CRM_BASE).schema()
    contacts = schema.table("Contacts")
    assert contacts.primary_field_id == contacts.field("Name").id
    assert contacts.field("Status").type == "singleSelect"
    assert [view.name for view in contacts.views] == ["Grid view", "Active contacts", "By age"]
    assert api.base(OPS_BASE).table(TASKS, validate=True).name == "Tasks"


def test_all_follows_every_page(api: Api) -> None:
    contacts = api.table(CRM_BASE, "Contacts")
    records = contacts.all()
    assert len(records) == len({r["id"] for r in records}) == 250
    pages = list(contacts.iterate(page_size=40))
    assert [len(page) for page in pages] == [40] * 6 + [10]


def test_all_with_formula_sort_fields_view_and_max_records(tasks: Table) -> None:
    records = tasks.all(formula=GT(Field("Priority"), 1), sort=["-Priority", "Name"], fields=["Name", "Priority"])
    assert [(r["fields"]["Priority"], r["fields"]["Name"]) for r in records] == sorted(
        ((r["fields"]["Priority"], r["fields"]["Name"]) for r in records), key=lambda k: (-k[0], k[1])
    )
    assert len(records) == 14 and all(set(r["fields"]) == {"Name", "Priority"} for r in records)
    open_tasks = tasks.all(view="Open tasks")
    assert len(open_tasks) == 10 and not any(r["fields"].get("Done") for r in open_tasks)
    assert len(tasks.all(max_records=3)) == 3


def test_first_and_get(tasks: Table) -> None:
    first = tasks.first(formula=match({"Name": "Task 07"}))
    assert first is not None and first["id"] == "recTask0000000007"
    assert tasks.first(formula=match({"Name": "nobody"})) is None
    assert tasks.get("recTask0000000007") == first


def test_create_update_and_delete(tasks: Table) -> None:
    created = tasks.create({"Name": "From pyairtable", "Priority": 2})
    assert created["fields"] == {"Name": "From pyairtable", "Priority": 2}
    updated = tasks.update(created["id"], {"Done": True})
    assert updated["fields"] == {"Name": "From pyairtable", "Priority": 2, "Done": True}
    replaced = tasks.update(created["id"], {"Name": "Replaced"}, replace=True)
    assert replaced["fields"] == {"Name": "Replaced"}
    assert tasks.delete(created["id"]) == {"id": created["id"], "deleted": True}
    with pytest.raises(requests.HTTPError, match="404"):
        tasks.get(created["id"])


def test_batch_create_update_and_delete_in_chunks_of_10(tasks: Table, unlimited_process: Emulator) -> None:
    created = tasks.batch_create([{"Name": f"Bulk {i:02d}", "Priority": i} for i in range(25)])
    assert [r["fields"]["Name"] for r in created] == [f"Bulk {i:02d}" for i in range(25)]
    updated = tasks.batch_update([{"id": r["id"], "fields": {"Done": True}} for r in created])
    assert all(r["fields"]["Done"] for r in updated)
    deleted = tasks.batch_delete([r["id"] for r in created])
    assert [d["id"] for d in deleted] == [r["id"] for r in created]
    assert len(tasks.all()) == 20
    writes = [e for e in unlimited_process.stats()["log"] if e["method"] in ("POST", "PATCH", "DELETE")]
    assert [e["method"] for e in writes] == ["POST"] * 3 + ["PATCH"] * 3 + ["DELETE"] * 3


def test_batch_upsert_reports_created_and_updated(tasks: Table) -> None:
    result = tasks.batch_upsert(
        [{"fields": {"Name": "Task 01", "Priority": 9}}, {"fields": {"Name": "Fresh", "Priority": 1}}],
        key_fields=["Name"],
    )
    assert result["updatedRecords"] == ["recTask0000000001"]
    assert len(result["createdRecords"]) == 1
    assert [r["fields"]["Priority"] for r in result["records"]] == [9, 1]
    assert tasks.get("recTask0000000001")["fields"]["Due"] == "2026-02-01"


def test_typecast_and_field_ids(api: Api) -> None:
    by_id = Api(TOKEN, endpoint_url=api.endpoint_url, use_field_ids=True).table(OPS_BASE, TASKS)
    record = by_id.create({"Name": "typed", "Priority": "5"}, typecast=True)
    assert record["fields"] == {"fldTasksName00000": "typed", "fldTasksPriority0": 5}
    assert by_id.get(record["id"])["fields"]["fldTasksPriority0"] == 5


def test_airtable_errors_reach_pyairtable(api: Api, tasks: Table) -> None:
    with pytest.raises(requests.HTTPError, match="INVALID_FILTER_BY_FORMULA"):
        tasks.all(formula="{Nope} = 1")
    with pytest.raises(requests.HTTPError, match="401"):
        Api("wrong", endpoint_url=api.endpoint_url).table(OPS_BASE, TASKS).all()


def test_pyairtable_retries_ride_out_a_429_penalty(emulator: Emulator) -> None:
    """The session emulator: 5 requests/s per base and a 1 s penalty; pyairtable retries 429 with backoff."""
    emulator.fail(CRM_BASE, 429)
    contacts = Api(TOKEN, endpoint_url=emulator.url, timeout=(5, 10)).table(CRM_BASE, "Contacts")
    assert len(contacts.all()) == 250
    assert emulator.stats()["throttled"][CRM_BASE] >= 1
