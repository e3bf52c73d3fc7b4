"""The emulator's in-memory bases: loaded from a seed, queried and written as Airtable does.

Cell values are kept by field id, so renaming never matters and ``returnFieldsByFieldId`` is a lookup.
Empty values (``None``, ``""``, ``[]``, an unticked checkbox) are not stored: Airtable leaves them out of
its answers too.
"""

import copy
import datetime
import functools
import json
import re
import secrets
import string
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from airtable_gateway.emulator import errors, formula
from airtable_gateway.emulator.errors import AirtableError

JSON = dict[str, Any]
BASE62 = string.ascii_letters + string.digits
ID_PATTERN = {prefix: re.compile(rf"^{prefix}[A-Za-z0-9]{{14}}$") for prefix in ("app", "tbl", "fld", "viw", "rec")}
OFFSET_PATTERN = re.compile(r"^(itr[A-Za-z0-9]{14})/(rec[A-Za-z0-9]{14})$")
MAX_PAGE_SIZE = 100
MAX_RECORDS_PER_WRITE = 10
MAX_ITERATORS = 2000
TEXT_TYPES = {"singleLineText", "multilineText", "email", "url", "phoneNumber", "richText", "barcode"}
NUMBER_TYPES = {"number", "currency", "percent", "rating", "duration"}
COMPUTED_TYPES = {
    "formula",
    "rollup",
    "count",
    "lookup",
    "multipleLookupValues",
    "createdTime",
    "lastModifiedTime",
    "autoNumber",
    "createdBy",
    "lastModifiedBy",
    "button",
}
TRUE_TEXTS = {"true", "1", "yes", "y", "on", "checked", "x"}
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def new_id(prefix: str) -> str:
    """An id in Airtable's format: a three-letter prefix and 14 base62 characters."""
    return prefix + "".join(secrets.choice(BASE62) for _ in range(14))


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


@dataclass
class Field:
    id: str
    name: str
    type: str
    options: JSON | None = None
    description: str | None = None

    def schema(self) -> JSON:
        out: JSON = {"id": self.id, "name": self.name, "type": self.type}
        if self.description:
            out["description"] = self.description
        if self.options is not None:
            out["options"] = copy.deepcopy(self.options)
        return out

    def choice_names(self) -> list[str]:
        return [str(choice["name"]) for choice in (self.options or {}).get("choices", [])]


@dataclass
class View:
    """A view; ``filter`` (a formula) and ``sort`` are emulator extensions that give it an effect."""

    id: str
    name: str
    type: str = "grid"
    filter: formula.Node | None = None
    sort: list[JSON] = field(default_factory=list)

    def schema(self) -> JSON:
        return {"id": self.id, "name": self.name, "type": self.type}


@dataclass
class Record:
    id: str
    created_time: str
    cells: dict[str, Any]  # field id -> value


@dataclass
class Table:
    id: str
    name: str
    primary_field_id: str
    fields: list[Field]
    views: list[View]
    records: dict[str, Record]
    description: str | None = None

    def schema(self) -> JSON:
        out: JSON = {"id": self.id, "name": self.name, "primaryFieldId": self.primary_field_id}
        if self.description:
            out["description"] = self.description
        out["fields"] = [f.schema() for f in self.fields]
        out["views"] = [v.schema() for v in self.views]
        return out

    def field(self, id_or_name: str) -> Field | None:
        for candidate in self.fields:
            if candidate.id == id_or_name or candidate.name == id_or_name:
                return candidate
        return None

    def require_field(self, id_or_name: str) -> Field:
        found = self.field(id_or_name)
        if found is None:
            raise errors.unknown_field(id_or_name)
        return found

    def view(self, id_or_name: str) -> View:
        for candidate in self.views:
            if candidate.id == id_or_name or candidate.name == id_or_name:
                return candidate
        raise AirtableError(422, "VIEW_NAME_NOT_FOUND", f'Could not find view "{id_or_name}" in table "{self.name}"')

    def record(self, record_id: str) -> Record:
        found = self.records.get(record_id)
        if found is None:
            raise errors.record_not_found(record_id)
        return found

    def output(self, record: Record, *, by_field_id: bool = False, only: Sequence[Field] | None = None) -> JSON:
        """A record as the API returns it: ``{id, createdTime, fields}``."""
        wanted = only if only is not None else self.fields
        cells = {
            (f.id if by_field_id else f.name): copy.deepcopy(record.cells[f.id]) for f in wanted if f.id in record.cells
        }
        return {"id": record.id, "createdTime": record.created_time, "fields": cells}


@dataclass
class Base:
    id: str
    name: str
    permission_level: str
    tables: list[Table]

    def info(self) -> JSON:
        return {"id": self.id, "name": self.name, "permissionLevel": self.permission_level}

    def table(self, id_or_name: str) -> Table:
        for candidate in self.tables:
            if candidate.id == id_or_name or candidate.name == id_or_name:
                return candidate
        raise errors.model_not_found()


# --- seed -------------------------------------------------------------------------------------------------


class SeedError(ValueError):
    """The seed is not usable; the message names the bad entry."""


def read_seed(seed: Mapping[str, Any] | str | Path | None) -> JSON:
    """The seed as a dict: ``None`` is the packaged default, a str starting with ``{`` is JSON, else a path."""
    if seed is None:
        text = resources.files("airtable_gateway.emulator").joinpath("seed.json").read_text(encoding="utf-8")
        return dict(json.loads(text))
    if isinstance(seed, Mapping):
        return copy.deepcopy(dict(seed))
    if isinstance(seed, str) and seed.lstrip().startswith("{"):
        return dict(json.loads(seed))
    return dict(json.loads(Path(seed).read_text(encoding="utf-8")))


def _check_id(value: Any, prefix: str, where: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN[prefix].match(value):
        raise SeedError(f"{where}: id {value!r} is not {prefix!r} followed by 14 letters or digits")
    return value


def _load_field(raw: JSON, where: str) -> Field:
    if not isinstance(raw.get("name"), str) or not isinstance(raw.get("type"), str):
        raise SeedError(f"{where}: a field needs a name and a type")
    options = raw.get("options")
    return Field(
        id=_check_id(raw.get("id") or new_id("fld"), "fld", where),
        name=raw["name"],
        type=raw["type"],
        options=dict(options) if isinstance(options, dict) else None,
        description=raw.get("description"),
    )


def _load_view(raw: JSON, table: Table, where: str) -> View:
    view = View(id=_check_id(raw.get("id") or new_id("viw"), "viw", where), name=str(raw["name"]))
    view.type = str(raw.get("type", "grid"))
    try:
        if raw.get("filter"):
            view.filter = compile_formula(table, str(raw["filter"]))
        view.sort = parse_sort_specs(table, raw.get("sort", []))
    except AirtableError as error:
        raise SeedError(f"{where}: {error.message}") from None
    return view


def _load_table(raw: JSON, where: str) -> Table:
    fields = [_load_field(f, f"{where} field {i}") for i, f in enumerate(raw.get("fields") or [])]
    if not fields:
        raise SeedError(f"{where}: a table needs at least one field")
    table = Table(
        id=_check_id(raw.get("id") or new_id("tbl"), "tbl", where),
        name=str(raw["name"]),
        primary_field_id=str(raw.get("primaryFieldId") or fields[0].id),
        fields=fields,
        views=[],
        records={},
        description=raw.get("description"),
    )
    if table.field(table.primary_field_id) is None:
        raise SeedError(f"{where}: primaryFieldId {table.primary_field_id!r} is not one of its fields")
    views = raw.get("views") or [{"name": "Grid view", "type": "grid"}]
    table.views = [_load_view(v, table, f"{where} view {v.get('name')!r}") for v in views]
    for i, record in enumerate(raw.get("records") or []):
        record_id = _check_id(record.get("id") or new_id("rec"), "rec", f"{where} record {i}")
        try:
            cells = validate_cells(table, record.get("fields") or {}, typecast=False, allow_computed=True)
        except AirtableError as error:
            raise SeedError(f"{where} record {record_id}: {error.message}") from None
        table.records[record_id] = Record(record_id, str(record.get("createdTime") or now_iso()), cells)
    return table


def load_bases(seed: JSON) -> dict[str, Base]:
    bases: dict[str, Base] = {}
    for i, raw in enumerate(seed.get("bases") or []):
        where = f"bases[{i}]"
        base = Base(
            id=_check_id(raw.get("id"), "app", where),
            name=str(raw.get("name", raw.get("id"))),
            permission_level=str(raw.get("permissionLevel", "create")),
            tables=[
                _load_table(t, f"{where}.tables[{j}] {t.get('name')!r}") for j, t in enumerate(raw.get("tables", []))
            ],
        )
        bases[base.id] = base
    return bases


# --- cell values ------------------------------------------------------------------------------------------


def _integral(number: float | int) -> float | int:
    return int(number) if isinstance(number, float) and number.is_integer() else number


def _number(f: Field, value: Any, typecast: bool) -> float | int:
    if isinstance(value, bool):
        raise errors.invalid_value(f.name)
    if isinstance(value, int | float):
        return _integral(value)
    if typecast and isinstance(value, str):
        try:
            return _integral(float(value.strip().replace(",", "")))
        except ValueError:
            pass
    raise errors.invalid_value(f.name)


def _text(f: Field, value: Any, typecast: bool) -> str:
    if isinstance(value, str):
        return value
    if typecast and isinstance(value, int | float | bool):
        return formula.to_text(value)
    raise errors.invalid_value(f.name)


def _checkbox(f: Field, value: Any, typecast: bool) -> bool:
    if isinstance(value, bool):
        return value
    if typecast and isinstance(value, str):
        return value.strip().lower() in TRUE_TEXTS
    if typecast and isinstance(value, int | float):
        return value != 0
    raise errors.invalid_value(f.name)


def _date(f: Field, value: Any, typecast: bool) -> str:
    if isinstance(value, str) and DATE_PATTERN.match(value):
        return value
    if typecast and isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).date().isoformat()
        except ValueError:
            pass
    raise errors.invalid_value(f.name)


def _date_time(f: Field, value: Any, typecast: bool) -> str:
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise errors.invalid_value(f.name) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    raise errors.invalid_value(f.name)


def _choice(f: Field, name: str, typecast: bool) -> str:
    if name in f.choice_names():
        return name
    if not typecast:
        raise errors.invalid_value(
            f.name, f'cannot accept the provided value: no select option ""{name}"" (typecast creates one)'
        )
    options = f.options if f.options is not None else {}
    options.setdefault("choices", []).append({"id": new_id("sel"), "name": name, "color": "blueLight2"})
    f.options = options
    return name


def _single_select(f: Field, value: Any, typecast: bool) -> str:
    if isinstance(value, str):
        return _choice(f, value, typecast)
    if typecast and isinstance(value, int | float) and not isinstance(value, bool):
        return _choice(f, formula.to_text(value), typecast)
    raise errors.invalid_value(f.name)


def _multiple_selects(f: Field, value: Any, typecast: bool) -> list[str]:
    if typecast and isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise errors.invalid_value(f.name)
    return list(dict.fromkeys(_choice(f, item, typecast) for item in value))


def _record_links(f: Field, value: Any, typecast: bool) -> list[str]:
    if typecast and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(item, str) and ID_PATTERN["rec"].match(item) for item in value
    ):
        raise errors.invalid_value(f.name)
    return list(value)


def _attachments(f: Field, value: Any, typecast: bool) -> list[JSON]:
    if not isinstance(value, list) or not all(isinstance(item, dict) and item.get("url") for item in value):
        raise errors.invalid_value(f.name)
    return [
        {
            "id": item.get("id") or new_id("att"),
            "url": str(item["url"]),
            "filename": str(item.get("filename") or str(item["url"]).rsplit("/", 1)[-1]),
        }
        for item in value
    ]


CONVERTERS: dict[str, Any] = {
    **dict.fromkeys(TEXT_TYPES, _text),
    **dict.fromkeys(NUMBER_TYPES, _number),
    "checkbox": _checkbox,
    "date": _date,
    "dateTime": _date_time,
    "singleSelect": _single_select,
    "multipleSelects": _multiple_selects,
    "multipleRecordLinks": _record_links,
    "multipleAttachments": _attachments,
}


def normalize_cell(f: Field, value: Any, *, typecast: bool) -> Any:
    """The value to store for a field, or ``None`` to clear it; 422 INVALID_VALUE_FOR_COLUMN when it does not fit."""
    if value is None or value == "" or value == [] or value is False:
        return None
    convert = CONVERTERS.get(f.type)
    converted = convert(f, value, typecast) if convert is not None else copy.deepcopy(value)
    return None if converted is False or converted == [] else converted


def validate_cells(table: Table, fields: Any, *, typecast: bool, allow_computed: bool = False) -> dict[str, Any]:
    """Field names or ids -> values, as ``{field id: value or None}``, checked against the table's fields."""
    if not isinstance(fields, dict):
        raise errors.invalid_request("fields must be an object")
    cells: dict[str, Any] = {}
    for key, value in fields.items():
        f = table.require_field(str(key))
        if f.type in COMPUTED_TYPES and not allow_computed:
            raise errors.invalid_value(f.name, "cannot accept a value because the field is computed")
        cells[f.id] = normalize_cell(f, value, typecast=typecast)
    return cells


def _apply(record: Record, cells: Mapping[str, Any], *, replace: bool) -> None:
    if replace:
        record.cells = {}
    for field_id, value in cells.items():
        if value is None:
            record.cells.pop(field_id, None)
        else:
            record.cells[field_id] = value


# --- queries ----------------------------------------------------------------------------------------------


def compile_formula(table: Table, text: str) -> formula.Node:
    try:
        node = formula.parse(text)
    except formula.FormulaError as error:
        raise errors.invalid_formula(str(error)) from None
    unknown = sorted(name for name in formula.field_names(node) if table.field(name) is None)
    if unknown:
        raise errors.invalid_formula(f"Unknown field names: {', '.join(unknown)}")
    return node


def parse_sort_specs(table: Table, specs: Any) -> list[JSON]:
    """``[{field, direction?}]`` with each field resolved; 422 for an unknown field or direction."""
    if not isinstance(specs, list):
        raise errors.invalid_request("sort must be a list")
    parsed: list[JSON] = []
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("field"), str):
            raise errors.invalid_request("each sort needs a field")
        direction = spec.get("direction", "asc")
        if direction not in ("asc", "desc"):
            raise errors.invalid_request(f"sort direction must be asc or desc, not {direction!r}")
        parsed.append({"field": table.require_field(spec["field"]), "direction": direction})
    return parsed


def _sort_key_value(f: Field, value: Any) -> tuple[int, Any]:
    if f.type == "singleSelect" and value in (names := f.choice_names()):
        return (0, names.index(value))  # Airtable orders a select by its options, not alphabetically
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (1, value)
    return (2, formula.to_text(value).casefold())


def _compare_records(specs: Sequence[JSON], left: Record, right: Record) -> int:
    for spec in specs:
        f = spec["field"]
        a, b = left.cells.get(f.id), right.cells.get(f.id)
        if a is None and b is None:
            continue
        if a is None or b is None:
            result = -1 if a is None else 1  # blanks sort first ascending
        else:
            ka, kb = _sort_key_value(f, a), _sort_key_value(f, b)
            result = (ka > kb) - (ka < kb)
        if result:
            return result if spec["direction"] == "asc" else -result
    return 0


def sort_records(records: list[Record], specs: Sequence[JSON]) -> list[Record]:
    if not specs:
        return records
    return sorted(records, key=functools.cmp_to_key(functools.partial(_compare_records, specs)))


def filter_records(table: Table, records: Iterable[Record], node: formula.Node) -> list[Record]:
    def value_of_field(record: Record, name: str) -> Any:
        f = table.field(name)
        return record.cells.get(f.id) if f is not None else None

    def context_of(record: Record) -> formula.Context:
        return formula.Context(record.id, functools.partial(value_of_field, record))

    try:
        return formula.select(node, records, context_of)
    except formula.FormulaError as error:  # too costly to evaluate: 422, as a formula it cannot parse
        raise errors.invalid_formula(str(error)) from None


@dataclass
class ListQuery:
    page_size: int = MAX_PAGE_SIZE
    max_records: int | None = None
    offset: str | None = None
    fields: list[str] | None = None
    sort: list[JSON] = field(default_factory=list)
    view: str | None = None
    formula: str | None = None
    by_field_id: bool = False


class Store:
    """Every base of one emulator, plus the list iterators that back ``offset``."""

    def __init__(self, seed: JSON) -> None:
        self.seed = seed
        self.bases = load_bases(seed)
        self.iterators: OrderedDict[str, list[str]] = OrderedDict()

    def reset(self) -> None:
        self.bases = load_bases(self.seed)
        self.iterators.clear()

    def base(self, base_id: str) -> Base:
        base = self.bases.get(base_id)
        if base is None:
            raise errors.model_not_found()
        return base

    def table(self, base_id: str, table_id_or_name: str) -> Table:
        return self.base(base_id).table(table_id_or_name)

    # reads

    def list_records(self, table: Table, query: ListQuery) -> JSON:
        if not 1 <= query.page_size <= MAX_PAGE_SIZE:
            raise errors.invalid_request(f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
        if query.max_records is not None and query.max_records < 1:
            raise errors.invalid_request("maxRecords must be a positive integer")
        only = [table.require_field(name) for name in query.fields] if query.fields is not None else None
        sort = parse_sort_specs(table, query.sort)
        view = table.view(query.view) if query.view is not None else None
        node = compile_formula(table, query.formula) if query.formula else None
        if query.offset:
            iterator_id, ids, start = self._resume(query.offset)
        else:
            ids = [record.id for record in self._select(table, view, node, sort)]
            if query.max_records is not None:
                ids = ids[: query.max_records]
            iterator_id, start = None, 0
        page: list[JSON] = []
        position = start
        while position < len(ids) and len(page) < query.page_size:
            record = table.records.get(ids[position])
            position += 1
            if record is not None:  # deleted since the first page
                page.append(table.output(record, by_field_id=query.by_field_id, only=only))
        result: JSON = {"records": page}
        if position < len(ids):
            iterator_id = iterator_id or self._remember(ids)
            result["offset"] = f"{iterator_id}/{ids[position]}"
        return result

    def _select(self, table: Table, view: View | None, node: formula.Node | None, sort: list[JSON]) -> list[Record]:
        records = list(table.records.values())
        if view is not None and view.filter is not None:
            records = filter_records(table, records, view.filter)
        if node is not None:
            records = filter_records(table, records, node)
        return sort_records(records, sort or (view.sort if view is not None else []))

    def _remember(self, ids: list[str]) -> str:
        iterator_id = new_id("itr")
        self.iterators[iterator_id] = ids
        while len(self.iterators) > MAX_ITERATORS:
            self.iterators.popitem(last=False)
        return iterator_id

    def _resume(self, offset: str) -> tuple[str, list[str], int]:
        match = OFFSET_PATTERN.match(offset)
        if match is None:
            raise AirtableError(422, "INVALID_OFFSET_VALUE", f"The value of offset {offset} is invalid")
        iterator_id, record_id = match.groups()
        ids = self.iterators.get(iterator_id)
        if ids is None:
            raise AirtableError(
                422, "LIST_RECORDS_ITERATOR_NOT_AVAILABLE", "The list records iterator is no longer available"
            )
        try:
            return iterator_id, ids, ids.index(record_id)
        except ValueError:
            raise AirtableError(422, "INVALID_OFFSET_VALUE", f"The value of offset {offset} is invalid") from None

    # writes

    def create(self, table: Table, fields_list: Sequence[Any], *, typecast: bool) -> list[Record]:
        prepared = [validate_cells(table, fields, typecast=typecast) for fields in fields_list]
        created = []
        for cells in prepared:
            record = Record(new_id("rec"), now_iso(), {})
            _apply(record, cells, replace=True)
            table.records[record.id] = record
            created.append(record)
        return created

    def update(
        self, table: Table, changes: Sequence[tuple[str, Any]], *, typecast: bool, replace: bool
    ) -> list[Record]:
        """``(record id, fields)`` pairs, all checked before any is written; PUT (``replace``) clears the rest."""
        prepared = [
            (table.record(record_id), validate_cells(table, fields, typecast=typecast)) for record_id, fields in changes
        ]
        for record, cells in prepared:
            _apply(record, cells, replace=replace)
        return [record for record, _ in prepared]

    def delete(self, table: Table, record_ids: Sequence[str]) -> list[str]:
        for record_id in record_ids:
            table.record(record_id)
        for record_id in record_ids:
            table.records.pop(record_id, None)
        return list(record_ids)

    def upsert(
        self, table: Table, records: Sequence[JSON], merge_on: Sequence[str], *, typecast: bool, replace: bool
    ) -> tuple[list[Record], list[str], list[str]]:
        """Records with an id are updated; the others match on ``merge_on``: none → created, one → updated."""
        if not merge_on or len(merge_on) > 3 or not all(isinstance(name, str) for name in merge_on):
            raise errors.invalid_request("performUpsert.fieldsToMergeOn must name 1 to 3 fields")
        keys = [table.require_field(name) for name in merge_on]
        plan: list[tuple[Record, dict[str, Any]]] = []
        new_records: dict[tuple[str, ...], Record] = {}
        for raw in records:
            cells = validate_cells(table, raw.get("fields", {}), typecast=typecast)
            if raw.get("id") is not None:
                plan.append((table.record(str(raw["id"])), cells))
                continue
            missing = [f.name for f in keys if cells.get(f.id) is None]
            if missing:
                raise invalid_upsert(f"every record must have a value for each of fieldsToMergeOn; missing {missing}")
            key = tuple(json.dumps(cells[f.id], sort_keys=True) for f in keys)
            target = self._match(table, keys, cells) or new_records.get(key)
            if target is None:
                target = new_records[key] = Record(new_id("rec"), now_iso(), {})
            plan.append((target, cells))
        created = [record.id for record in new_records.values()]
        updated = list(dict.fromkeys(record.id for record, _ in plan if record.id not in created))
        for record, cells in plan:
            table.records.setdefault(record.id, record)
            _apply(record, cells, replace=replace)
        return [record for record, _ in plan], created, updated

    @staticmethod
    def _match(table: Table, keys: Sequence[Field], cells: Mapping[str, Any]) -> Record | None:
        found = [r for r in table.records.values() if all(r.cells.get(f.id) == cells[f.id] for f in keys)]
        if len(found) > 1:
            raise invalid_upsert("fieldsToMergeOn matched more than one record")
        return found[0] if found else None


def invalid_upsert(message: str) -> AirtableError:
    return AirtableError(422, "INVALID_VALUE_FOR_COLUMN", message)
