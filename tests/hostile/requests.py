"""Hostile requests for every operation of an OpenAPI document.

Each operation is first given a request that fits its document (path parameters, required query
parameters and a body built from its schemas); each hostile request then changes one thing of
it: the NUL character in a string field or parameter, a body nested 1,000 deep (whole and inside
an object field), a 10 MB string, numbers and date-times at and past their limits, bytes that are
not UTF-8, a value of the wrong type. ``must_refuse`` says whether the answer has to be a 4xx: a
value at a limit may be accepted; nothing may be a 5xx.
"""

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgspec

DEPTH = 1_000
HUGE = 10 * 1024 * 1024  # a 10 MB string
LONG = 8 * 1024  # an 8 KB parameter (about what a server takes in one request line)
NUL = "a\x00b"
INT64_MAX = 2**63 - 1
# A date-time at each end of what a date-time holds, then with offsets that move it past them.
DATES_AT_LIMIT = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00", "9999-12-31T23:59:59"]
DATES_PAST_LIMIT = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "10000-01-01T00:00:00Z", "0000-12-31"]
SLOT_DEPTH = 3  # how far into a body's objects and arrays fields are varied


@dataclass
class Hostile:
    """One request; ``kind`` says what is hostile in it (``nul``, ``deep``, ``huge``, ...)."""

    kind: str
    operation: str
    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    must_refuse: bool = True
    where: str = ""

    def target(self) -> str:
        query = "&".join(f"{_escape(name)}={_escape(value)}" for name, value in self.query)
        return f"{self.path}?{query}" if query else self.path

    def label(self) -> str:
        return f"{self.kind} {self.method} {self.path} {self.where}".strip()


def _escape(text: str) -> str:
    """Percent-encoded UTF-8; a lone surrogate escape (``"\\udcff"``) stands for a byte that is
    not UTF-8 (``%FF``)."""
    return quote(text, safe="", errors="surrogateescape")


class Schemas:
    """Resolves ``$ref`` and the ``oneOf``/``anyOf`` Litestar writes for optional values."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any] | None) -> dict[str, Any]:
        schema = dict(schema or {})
        while "$ref" in schema:
            target = self.components[schema.pop("$ref").rsplit("/", 1)[-1]]
            schema = {**target, **schema}
        for combinator in ("oneOf", "anyOf"):
            if combinator in schema:
                choices = [self.resolve(choice) for choice in schema.pop(combinator)]
                concrete = [choice for choice in choices if choice.get("type") != "null"]
                if concrete:
                    schema = {**concrete[0], **schema}
        return schema


def sample(schemas: Schemas, schema: dict[str, Any], depth: int = 0) -> Any:
    """A value that fits ``schema`` (as far as a simple guess can)."""
    schema = schemas.resolve(schema)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), None)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        return {name: sample(schemas, properties[name], depth + 1) for name in schema.get("required", [])}
    if kind == "array":
        count = int(schema.get("minItems", 0)) or (1 if depth < SLOT_DEPTH else 0)
        return [sample(schemas, schema.get("items", {}), depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if kind == "string":
        return _sample_text(schema)
    return "hostile"


def _sample_text(schema: dict[str, Any]) -> str:
    formats = {
        "uuid": str(uuid.uuid4()),
        "date-time": "2026-06-01T12:00:00Z",
        "date": "2026-06-01",
        "email": "hostile@example.com",
        "uri": "https://example.com/a",
    }
    if schema.get("format") in formats:
        return formats[schema["format"]]
    candidates = ["hostile", "Europe/Paris", "https://example.com/a", "+33 1 23 45 67", "en-GB", "a1b2c3d4e5f6"]
    candidates.append(str(uuid.uuid4()))
    pattern = schema.get("pattern")
    low, high = int(schema.get("minLength", 0)), int(schema.get("maxLength", 10_000))
    for text in candidates:
        text = text.ljust(low, "x") if not pattern else text
        if low <= len(text) <= high and (pattern is None or re.search(pattern, text)):
            return text
    return "x" * max(low, 1)


@dataclass
class Slot:
    """A place in a body (``path`` of keys and indexes) and the schema of what goes there."""

    path: tuple[str | int, ...]
    schema: dict[str, Any]

    def name(self) -> str:
        return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in self.path).lstrip(".")


def slots(schemas: Schemas, schema: dict[str, Any], path: tuple[str | int, ...] = ()) -> Iterator[Slot]:
    """Every field of a body's schema, objects and arrays entered ``SLOT_DEPTH`` levels deep."""
    schema = schemas.resolve(schema)
    if path:
        yield Slot(path, schema)
    if len(path) >= SLOT_DEPTH:
        return
    for name, inner in schema.get("properties", {}).items():
        yield from slots(schemas, inner, (*path, name))
    if schema.get("type") == "array" and "items" in schema:
        yield from slots(schemas, schema["items"], (*path, 0))


def with_value(base: Any, schemas: Schemas, root: dict[str, Any], path: tuple[str | int, ...], value: Any) -> Any:
    """A copy of ``base`` with ``value`` placed at ``path`` (containers on the way filled in)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    schema = schemas.resolve(root)
    if isinstance(head, int):
        items = list(base) if isinstance(base, list) else []
        inner = schema.get("items", {})
        if not items:
            items = [sample(schemas, inner, SLOT_DEPTH)]
        items[0] = with_value(items[0], schemas, inner, rest, value)
        return items
    container = dict(base) if isinstance(base, dict) else {}
    inner = schema.get("properties", {}).get(head, {})
    current = container.get(head, sample(schemas, inner, SLOT_DEPTH) if rest else None)
    container[head] = with_value(current, schemas, inner, rest, value)
    return container


def _kind_of(schemas: Schemas, schema: dict[str, Any]) -> str | None:
    resolved = schemas.resolve(schema)
    kind = resolved.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), None)
    if kind == "string" and resolved.get("format") in ("date-time", "date"):
        return "date-time"
    if kind is None and "properties" in resolved:
        return "object"
    return kind if isinstance(kind, str) else None


def _wrong_values(kind: str | None) -> list[Any]:
    """Values of another JSON type than ``kind`` (nothing for a field that takes any)."""
    return {
        "string": [12345, ["text"], {"text": "x"}],
        "date-time": [12345, True],
        "integer": ["12", 1.5, [1]],
        "number": ["1.5", {"n": 1}],
        "boolean": ["true", 1],
        "array": ["text", {"a": 1}],
        "object": ["text", [1, 2]],
    }.get(kind or "", [])


def _number_values(schema: dict[str, Any], integer: bool) -> tuple[list[Any], list[Any]]:
    """(values at the field's limits, values past them)."""
    # Past a 64-bit integer: no column holds it. A float has no such end short of infinity.
    at: list[Any] = [] if integer else [1e308, -1e308]
    past: list[Any] = [10**30, -(10**30)] if integer else []
    if "maximum" in schema:
        top = int(schema["maximum"]) if integer else schema["maximum"]
        at.append(top)
        past.append(top + 1)
    if "minimum" in schema:
        bottom = int(schema["minimum"]) if integer else schema["minimum"]
        at.append(bottom)
        past.append(bottom - 1)
    if integer and "maximum" not in schema:
        at.append(INT64_MAX)
        past.append(INT64_MAX + 1)
    return at, past


class Generator:
    """The hostile requests for one document; ``parameters`` fills path parameters by name."""

    def __init__(self, document: dict[str, Any], path_values: dict[str, str] | None = None) -> None:
        self.document = document
        self.schemas = Schemas(document)
        self.path_values = path_values or {}

    def operations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for path, item in self.document.get("paths", {}).items():
            for method, operation in item.items():
                if method in ("get", "post", "put", "patch", "delete") and isinstance(operation, dict):
                    yield path, method.upper(), operation

    def requests(self) -> Iterator[Hostile]:
        for path, method, operation in self.operations():
            yield from self.for_operation(path, method, operation)

    def for_operation(self, template: str, method: str, operation: dict[str, Any]) -> Iterator[Hostile]:
        label = operation.get("operationId", f"{method} {template}")
        parameters = operation.get("parameters", [])
        path_params = {p["name"]: p for p in parameters if p.get("in") == "path"}
        query_params = [p for p in parameters if p.get("in") == "query"]
        fills = {name: self._path_value(name, p.get("schema", {})) for name, p in path_params.items()}
        query = [(p["name"], str(sample(self.schemas, p.get("schema", {})))) for p in query_params if p.get("required")]

        def build(kind: str, *, path: dict[str, str] | None = None, **changes: Any) -> Hostile:
            values = {**fills, **(path or {})}
            concrete = template
            for name, value in values.items():
                concrete = concrete.replace("{" + name + "}", _escape(value))
            return Hostile(kind=kind, operation=label, method=method, path=concrete, **changes)

        body_schema = self._body_schema(operation)
        base_body = sample(self.schemas, body_schema) if body_schema is not None else None
        encoded = None if base_body is None else msgspec.json.encode(base_body)

        for name in path_params:
            where = f"path {name}"
            yield build("nul", path={name: NUL}, query=query, body=encoded, where=where)
            yield build("long", path={name: "x" * LONG}, query=query, body=encoded, where=where, must_refuse=False)
            yield build("invalid-utf8", path={name: "\udcff"}, query=query, body=encoded, where=where)
        for parameter in query_params:
            yield from self._query_variants(build, parameter, query, encoded)
        if body_schema is not None:
            yield from self._body_variants(build, body_schema, base_body, query)

    def well_formed(self) -> Iterator[Hostile]:
        """One plain request per operation, as the document describes it (path and required query
        parameters, the body): nothing hostile in it but how often it may be sent."""
        for template, method, operation in self.operations():
            parameters = operation.get("parameters", [])
            path = template
            for parameter in parameters:
                if parameter.get("in") == "path":
                    value = self._path_value(parameter["name"], parameter.get("schema", {}))
                    path = path.replace("{" + parameter["name"] + "}", _escape(value))
            query = [
                (p["name"], str(sample(self.schemas, p.get("schema", {}))))
                for p in parameters
                if p.get("in") == "query" and p.get("required")
            ]
            body_schema = self._body_schema(operation)
            body = None if body_schema is None else msgspec.json.encode(sample(self.schemas, body_schema))
            label = operation.get("operationId", f"{method} {template}")
            yield Hostile("well-formed", label, method, path, query, body, must_refuse=False)

    def _path_value(self, name: str, schema: dict[str, Any]) -> str:
        if name in self.path_values:
            return self.path_values[name]
        return str(sample(self.schemas, schema))

    def _query_variants(self, build: Any, parameter: dict[str, Any], query: list[tuple[str, str]], body: Any) -> Any:
        name, schema = parameter["name"], self.schemas.resolve(parameter.get("schema", {}))
        others = [(key, value) for key, value in query if key != name]
        where = f"query {name}"

        def one(kind: str, value: str, must_refuse: bool = True) -> Hostile:
            hostile: Hostile = build(
                kind, query=[*others, (name, value)], body=body, where=where, must_refuse=must_refuse
            )
            return hostile

        yield one("nul", NUL)
        yield one("invalid-utf8", "\udcff")
        yield one("long", "x" * LONG, must_refuse="maxLength" in schema or schema.get("type") != "string")
        kind = _kind_of(self.schemas, schema)
        if kind in ("integer", "number"):
            at, past = _number_values(schema, kind == "integer")
            yield from (one("number-at-limit", str(value), must_refuse=False) for value in at)
            yield from (one("number-past-limit", str(value)) for value in past)
            yield one("wrong-type", "not-a-number")
        elif kind == "date-time":
            yield from (one("date-at-limit", value, must_refuse=False) for value in DATES_AT_LIMIT)
            yield from (one("date-past-limit", value) for value in DATES_PAST_LIMIT)
            yield one("wrong-type", "yesterday")
        elif kind == "boolean":
            yield one("wrong-type", "maybe")
        elif schema.get("format") == "uuid":
            yield one("wrong-type", "not-a-uuid")
        elif "enum" in schema:
            yield one("wrong-type", "not-an-option")

    def _body_variants(self, build: Any, root: dict[str, Any], base: Any, query: list[tuple[str, str]]) -> Any:
        def one(kind: str, body: bytes, where: str, must_refuse: bool = True) -> Hostile:
            hostile: Hostile = build(kind, query=query, body=body, where=where, must_refuse=must_refuse)
            return hostile

        def placed(path: tuple[str | int, ...], value: Any) -> bytes:
            return msgspec.json.encode(with_value(base, self.schemas, root, path, value))

        deep = ("[" * DEPTH + "]" * DEPTH).encode()
        yield one("deep", deep, "body")
        yield one("invalid-utf8", b'{"text": "\xff\xfe\xed\xa0\x80"}', "body")
        yield one("wrong-type", b'"a string where an object belongs"', "body")
        huge_placed = False
        for slot in slots(self.schemas, root):
            where = f"body {slot.name()}"
            kind = _kind_of(self.schemas, slot.schema)
            if kind in ("string", "date-time", None):
                yield one("nul", placed(slot.path, NUL), where)
            if kind == "string" and not huge_placed:
                huge_placed = True
                yield one("huge", placed(slot.path, "x" * HUGE), where)
            if kind == "string":
                invalid = placed(slot.path, "VALID-TEXT").replace(b"VALID-TEXT", b"\xc3\x28\xff")
                yield one("invalid-utf8", invalid, where)
            if kind in ("object", None):
                nested = placed(slot.path, "DEEP").replace(b'"DEEP"', b'{"a":' * DEPTH + b"1" + b"}" * DEPTH)
                yield one("deep", nested, where)
                # A field that takes any JSON: numbers no column type holds, which it may still take.
                for number in (b"1e400", b"-1e400", str(10**30).encode()):
                    huge_number = placed(slot.path, {"n": "NUMBER"}).replace(b'"NUMBER"', number)
                    yield one("number-past-limit", huge_number, where, must_refuse=False)
            if kind in ("integer", "number"):
                at, past = _number_values(slot.schema, kind == "integer")
                yield from (one("number-at-limit", placed(slot.path, value), where, False) for value in at)
                yield from (one("number-past-limit", placed(slot.path, value), where) for value in past)
            if kind == "date-time":
                yield from (one("date-at-limit", placed(slot.path, value), where, False) for value in DATES_AT_LIMIT)
                yield from (one("date-past-limit", placed(slot.path, value), where) for value in DATES_PAST_LIMIT)
            for value in _wrong_values(kind):
                yield one("wrong-type", placed(slot.path, value), where)
        if not huge_placed:
            yield one("huge", msgspec.json.encode({"text": "x" * HUGE}), "body")

    def _body_schema(self, operation: dict[str, Any]) -> dict[str, Any] | None:
        content = operation.get("requestBody", {}).get("content", {})
        for media_type, item in content.items():
            if "json" in media_type:
                schema: dict[str, Any] = item.get("schema", {})
                return schema
        return None
