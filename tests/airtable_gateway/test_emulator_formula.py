"""``filterByFormula``: a table of formulas and the records each one selects, formulas that are refused,
and hostile formulas (catastrophic regular expressions, huge numbers and texts, deep nesting) that
are answered at once instead of stalling the emulator."""

import json
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from airtable_gateway.emulator import formula as formula_module
from tests.airtable_gateway.emulator_fixture import Emulator, in_process, run_emulator
from tests.conftest import WAIT_SECONDS

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
    ("REGEX_MATCH({Name}, '(?i)^D')", {"dave"}),
    ("REGEX_EXTRACT({Notes}, 'w.rld') = 'world'", {"Alice"}),
    ("REGEX_EXTRACT({Name}, 'x')", set()),  # no match: an error value
    ("REGEX_REPLACE({Name}, '[aeiou]', '') = 'Bb'", {"Bob"}),
    ("REGEX_REPLACE({Name}, '(C)(a)', '\\\\2\\\\1') = 'aCrol'", {"Carol"}),
    ("REGEX_MATCH({Name}, '(a)\\\\1')", set()),  # a back-reference: not RE2, an error value
    ("REPT({Name}, 2) = 'BobBob'", {"Bob"}),
    ("REPT({Name}, -1) = ''", ALL),
    ("MOD({Age}, 20) = 0", {"dave", "Carol", "Eve"}),
    ("ROUND({Age} / 7, 1) = 4.3", {"Alice"}),
    ("ROUND(-2.5) = -3", ALL),  # half away from zero
    ("ROUND(1234, -2) = 1200", ALL),
    ("ROUND({Age} / 7, 10000000) = ROUND({Age} / 7, 15)", ALL),  # digits capped at 15
    ("ROUND(123, -10000000) = 0", ALL),
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


HOSTILE_SELECTS = [
    # Catastrophic for a backtracking engine (2**40 paths); linear for RE2.
    ("REGEX_MATCH(REPT('a', 40) & 'b', '(a+)+$')", set()),
    ("REGEX_MATCH(REPT('a', 5000) & 'b', '^(a|aa)*$')", set()),
    ("REGEX_REPLACE(REPT('ab', 200), '(a|ab)*b', 'x') = REPT('x', 200)", ALL),
    ("ROUND({Age}, 10000000) = {Age}", ALL),
    ("LEN(REPT('x', 1000000000)) > 0", set()),  # past the text limit: an error value, never built
    ("LEN(REPT(REPT('x', 100000), 100000)) > 0", set()),
    ("LEN(REPT('x', 99999) & 'xx') > 0", set()),
    (f"LEFT({{Name}}, 1{'0' * 300}) = {{Name}}", ALL),  # a huge count is held at the text limit
    (f"MID({{Name}}, -{'9' * 300}, 2) = LEFT({{Name}}, 2)", ALL),
    (f"LEN({'9' * 300} * {'9' * 300}) > 0", set()),  # past a double's range: an error value
    (f"{'9' * 300} * 2 > 0", ALL),  # a double, not a 300-digit integer that grows on
    ("MOD(VALUE('1e400'), 3) = 0", set()),  # an infinite text is not a number
    ("INT(VALUE('nan')) = 0", set()),
]
HOSTILE_REFUSED = [
    ("(" * 1000 + "1" + ")" * 1000, "deeper than"),
    ("1" + "+1" * 5000, "deeper than"),
    ("-" * 5000 + "1", "deeper than"),
    ("AND(" * 300 + "1" + ")" * 300, "deeper than"),
    ("'" + "x" * 20_000 + "'", "longer than"),
    ("LEN(1" + "0" * 400 + ")", "too large"),
]


@pytest.fixture(scope="module")
def emulator_with_people(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """A real emulator process: a stalled one fails the request's timeout instead of hanging the tests."""
    folder = tmp_path_factory.mktemp("formula-emulator")
    seed = folder / "seed.json"
    seed.write_text(json.dumps(SEED))
    with run_emulator(folder, seed=seed, requests_per_second=0) as running:
        yield running


def hostile(emulator: Emulator, formula: str) -> httpx.Response:
    # POST listRecords: a long formula does not fit in a URL.
    return httpx.post(
        f"{emulator.url}{URL}/listRecords",
        json={"filterByFormula": formula},
        headers=emulator.headers,
        timeout=WAIT_SECONDS,
    )


@pytest.mark.parametrize(("formula", "expected"), HOSTILE_SELECTS, ids=range(len(HOSTILE_SELECTS)))
def test_a_hostile_formula_is_evaluated_within_its_bounds(
    emulator_with_people: Emulator, formula: str, expected: set[str]
) -> None:
    response = hostile(emulator_with_people, formula)
    assert response.status_code == 200, response.text
    assert {r["fields"]["Name"].split()[0] for r in response.json()["records"]} == expected


@pytest.mark.parametrize(("formula", "reason"), HOSTILE_REFUSED, ids=range(len(HOSTILE_REFUSED)))
def test_a_formula_too_deep_or_too_long_is_refused_with_airtables_422(
    emulator_with_people: Emulator, formula: str, reason: str
) -> None:
    response = hostile(emulator_with_people, formula)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "INVALID_FILTER_BY_FORMULA"
    assert reason in error["message"]
    assert hostile(emulator_with_people, "{Age} > 28").status_code == 200  # and the emulator goes on


async def test_a_filter_that_outruns_its_time_budget_is_refused_with_a_422(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formula_module, "TIME_BUDGET_SECONDS", -1.0)  # already spent when evaluation starts

    response = await client.get(URL, params={"filterByFormula": "AND({Active}, {Age} > 10)"})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "INVALID_FILTER_BY_FORMULA"
    assert "takes longer than" in error["message"]
    monkeypatch.undo()
    assert await names(client, "AND({Active}, {Age} > 10)") == {"Alice"}


def generated_formulas(count: int, seed: int = 11) -> list[str]:
    """Calls of every function on edge values (huge, tiny, negative, NaN-like text, lists, blanks),
    with operators between them: the same list on every run."""
    values = [
        "0", "1", "-1", "0.5", "3.7", "100000", "9" * 300, "-" + "9" * 300, "''", "'abc'", "'2026-01-01'",
        "'nan'", "'inf'", "'-1e400'", "'1e308'", "BLANK()", "TRUE()", "{Age}", "{Name}", "{Tags}", "{Notes}",
        "{Joined}", "{Active}", "'(a+)+$'", "'[z-a]'", "'\\\\'",
    ]  # fmt: skip
    generator = random.Random(seed)
    formulas = []
    for _ in range(count):
        name = generator.choice(sorted(formula_module.FUNCTIONS))
        low, high = formula_module.FUNCTIONS[name][1]
        args = [generator.choice(values) for _ in range(generator.randint(low, low + 2 if high is None else high))]
        if args and generator.random() < 0.4:
            op = generator.choice(["+", "-", "*", "/", "&", "=", "<", ">="])
            args[0] = f"{generator.choice(values)} {op} {generator.choice(values)}"
        formulas.append(f"{name}({', '.join(args)})")
    return formulas


async def test_no_formula_is_a_server_error() -> None:
    """1,500 generated formulas: each selects records (200) or is Airtable's 422, never a 500."""
    async with in_process(SEED, requests_per_second=0, requests_per_second_per_token=0) as client:
        for formula in generated_formulas(1500):
            response = await client.post(f"{URL}/listRecords", json={"filterByFormula": formula})
            assert response.status_code in (200, 422), (formula, response.text)
            if response.status_code == 422:
                assert response.json()["error"]["type"] == "INVALID_FILTER_BY_FORMULA", formula
