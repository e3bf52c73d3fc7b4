"""``filterByFormula``: a table of formulas and the records each one selects, and formulas that are refused."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.airtable_gateway.emulator_fixture import in_process

BASE = "appFormulaBase000"
URL = f"/v0/{BASE}/People"


def record(name: str, **cells: Any) -> dict[str, Any]:
    return {"id": f"rec{name.split()[0][:14]:0<14}", "fields": {"Name": name, **cells}}


SEED = {
    "bases": [
        {
            "id": BASE,
            "name": "Formulas",
            "tables": [
                {
                    "name": "People",
                    "fields": [
                        {"name": "Name", "type": "singleLineText"},
                        {"name": "Age", "type": "number", "options": {"precision": 0}},
                        {"name": "Active", "type": "checkbox", "options": {"color": "greenBright", "icon": "check"}},
                        {
                            "name": "Status",
                            "type": "singleSelect",
                            "options": {"choices": [{"name": "Lead"}, {"name": "Customer"}]},
                        },
                        {
                            "name": "Tags",
                            "type": "multipleSelects",
                            "options": {"choices": [{"name": "a"}, {"name": "b"}]},
                        },
                        {"name": "Notes", "type": "multilineText"},
                        {
                            "name": "Joined",
                            "type": "date",
                            "options": {"dateFormat": {"name": "iso", "format": "YYYY-MM-DD"}},
                        },
                        {"name": "Full name", "type": "singleLineText"},
                    ],
                    "records": [
                        record(
                            "Alice",
                            Age=30,
                            Active=True,
                            Status="Lead",
                            Tags=["a", "b"],
                            Notes="hello world",
                            Joined="2026-01-05",
                        ),
                        record("Bob", Age=25, Status="Customer", Tags=["b"], Joined="2025-12-31"),
                        record("Carol", Active=True, Status="Customer", Notes="Hello"),
                        record("dave", Age=40),
                        record("Eve O'Neil", Age=0, Active=True, Status="Lead", **{"Full name": "Eve O'Neil"}),
                    ],
                }
            ],
        }
    ]
}
ALL = {"Alice", "Bob", "Carol", "dave", "Eve"}

FORMULAS = [
    ("{Age} > 28", {"Alice", "dave"}),
    ("{Age} = 30", {"Alice"}),
    ("{Age} != 30", ALL - {"Alice"}),
    ("{Age} >= 30", {"Alice", "dave"}),
    ("{Age} <= 25", {"Bob", "Carol", "Eve"}),  # a blank number compares as 0
    ("{Age} < 26", {"Bob", "Carol", "Eve"}),
    ("{Age} = '30'", {"Alice"}),
    ("{Name} = 'Alice'", {"Alice"}),
    ('{Name} = "Bob"', {"Bob"}),
    ("Name = 'Bob'", {"Bob"}),
    ("{Name} = 'alice'", set()),
    ("{Name} = 'Eve O\\'Neil'", {"Eve"}),
    ('{Full name} = "Eve O\'Neil"', {"Eve"}),
    ("{Active}", {"Alice", "Carol", "Eve"}),
    ("NOT({Active})", {"Bob", "dave"}),
    ("{Active} = TRUE()", {"Alice", "Carol", "Eve"}),
    ("{Active} = FALSE()", {"Bob", "dave"}),
    ("{Active} = 1", {"Alice", "Carol", "Eve"}),
    ("AND({Active}, {Age} > 10)", {"Alice"}),
    ("OR({Name} = 'Bob', {Name} = 'dave')", {"Bob", "dave"}),
    ("AND(OR({Status} = 'Lead', {Status} = 'Customer'), NOT({Age} = 0))", {"Alice", "Bob"}),  # blank = 0
    ("FIND('world', {Notes})", {"Alice"}),
    ("FIND('hello', {Notes})", {"Alice"}),
    ("FIND('hello', {Notes}) > 0", {"Alice"}),
    ("SEARCH('hello', {Notes})", {"Alice", "Carol"}),
    ("FIND('a', {Tags})", {"Alice"}),
    ("{Status} = BLANK()", {"dave"}),
    ("{Notes} = ''", {"Bob", "dave", "Eve"}),
    ("{Notes} != ''", {"Alice", "Carol"}),
    ("LEN({Name}) = 3", {"Bob"}),
    ("LOWER({Name}) = 'dave'", {"dave"}),
    ("UPPER({Name}) = 'ALICE'", {"Alice"}),
    ("TRIM(' Bob ') = {Name}", {"Bob"}),
    ("LEFT({Name}, 2) = 'Ca'", {"Carol"}),
    ("{Age} + 5 = 35", {"Alice"}),
    ("{Age} * 2 > 70 - 5", {"dave"}),
    ("-{Age} < -35", {"dave"}),
    ("{Name} & '!' = 'Bob!'", {"Bob"}),
    ("CONCATENATE({Name}, '-', {Age}) = 'dave-40'", {"dave"}),
    ("IF({Age} > 35, 1, 0)", {"dave"}),
    ("IF({Active}, 'yes', '') = 'yes'", {"Alice", "Carol", "Eve"}),
    ("AND({Joined}, {Joined} < '2026-01-01')", {"Bob"}),
    ("RECORD_ID() = 'recBob00000000000'", {"Bob"}),
    ("AND({Joined}, {Joined} >= DATETIME_PARSE('2026-01-01'))", {"Alice"}),
    ("AND({Joined}, IS_BEFORE({Joined}, '2026-01-01'))", {"Bob"}),
    ("IS_AFTER({Joined}, '2026-01-01T00:00:00+02:00')", {"Alice"}),
    ("REGEX_MATCH({Name}, '^[A-C]')", {"Alice", "Bob", "Carol"}),
    ("MOD({Age}, 20) = 0", {"dave", "Carol", "Eve"}),
    ("ROUND({Age} / 7, 1) = 4.3", {"Alice"}),
    ("VALUE('12') = 12", ALL),
    ("TRUE()", ALL),
    ("TRUE", ALL),
    ("1", ALL),
    ("FALSE()", set()),
    ("0", set()),
    ("''", set()),
    ("{Age} / 0", set()),  # an error value never matches
    ("  {Age}   >   28  ", {"Alice", "dave"}),
    ("and({Active}, {Age} > 10)", {"Alice"}),
]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(SEED, requests_per_second=0) as client:
        yield client


async def names(client: httpx.AsyncClient, formula: str) -> set[str]:
    response = await client.get(URL, params={"filterByFormula": formula})
    assert response.status_code == 200, response.text
    return {r["fields"]["Name"].split()[0] for r in response.json()["records"]}


@pytest.mark.parametrize(("formula", "expected"), FORMULAS)
async def test_a_formula_selects_the_expected_records(
    client: httpx.AsyncClient, formula: str, expected: set[str]
) -> None:
    assert await names(client, formula) == expected


async def test_the_same_formula_works_in_a_list_records_body(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{URL}/listRecords", json={"filterByFormula": "AND({Active}, {Age} > 10)"})
    assert [r["fields"]["Name"] for r in response.json()["records"]] == ["Alice"]


@pytest.mark.parametrize(
    ("formula", "reason"),
    [
        ("{Nope} = 1", "Unknown field names: Nope"),
        ("AND({Active}, Missing)", "Unknown field names: Missing"),
        ("NOPE(1)", "Unknown function names: NOPE"),
        ("AND(", "ends too early"),
        ("{Age} = = 1", "unexpected '='"),
        ("'unterminated", "unexpected character"),
        ("NOT(1, 2)", "wrong number of arguments"),
        ("{Age} > 1)", "unexpected ')'"),
        ("{Age} # 1", "unexpected character"),
    ],
)
async def test_a_bad_formula_is_refused_with_the_reason(client: httpx.AsyncClient, formula: str, reason: str) -> None:
    response = await client.get(URL, params={"filterByFormula": formula})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "INVALID_FILTER_BY_FORMULA"
    assert error["message"].startswith("The formula for filtering records is invalid")
    assert reason in error["message"]


async def test_an_empty_formula_filters_nothing(client: httpx.AsyncClient) -> None:
    assert await names(client, "") == ALL
