"""Request and response bodies of the Airtable gateway (msgspec Structs).

Record ``fields`` are whatever the table holds, so they stay ``dict[str, Any]``.
"""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

# 100 writes of 10: about 22 s at Airtable's 5 requests/s, inside the API gateway's 30 s timeout.
MAX_RECORDS_PER_CALL = 1_000
RecordId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Fields = dict[str, Any]


class Record(msgspec.Struct, rename="camel", omit_defaults=True):
    id: str
    created_time: str | None = None
    fields: Fields = {}


class RecordList(msgspec.Struct, rename="camel"):
    """A page of records; ``offset`` asks for the next one while ``hasMore`` is true."""

    records: list[Record]
    offset: str | None
    has_more: bool


class RecordFields(msgspec.Struct, forbid_unknown_fields=True):
    fields: Fields


class RecordsCreate(msgspec.Struct, forbid_unknown_fields=True):
    """``{"records": [{"fields": {...}}, ...]}`` or one ``{"fields": {...}}``; a bare list of field
    objects (``[{...}, ...]``, the Phase-1 shape) is accepted too."""

    records: Annotated[list[RecordFields], msgspec.Meta(max_length=MAX_RECORDS_PER_CALL)] = []
    fields: Fields | None = None
    typecast: bool = False


class RecordUpdate(msgspec.Struct, forbid_unknown_fields=True):
    id: RecordId
    fields: Fields


class RecordsUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """``{"records": [{"id": ..., "fields": {...}}, ...]}``; or ``[{"id": ..., <fields>}, ...]`` (Phase 1)."""

    records: Annotated[list[RecordUpdate], msgspec.Meta(max_length=MAX_RECORDS_PER_CALL)]
    typecast: bool = False


class RecordChange(msgspec.Struct, forbid_unknown_fields=True):
    fields: Fields
    typecast: bool = False


class UpsertRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Records matched on ``fields_to_merge_on``: updated when one matches, created otherwise."""

    records: Annotated[list[RecordFields], msgspec.Meta(min_length=1, max_length=MAX_RECORDS_PER_CALL)]
    fields_to_merge_on: Annotated[list[str], msgspec.Meta(min_length=1, max_length=3)]
    typecast: bool = False


LegacyRecords = Annotated[list[Fields], msgspec.Meta(max_length=MAX_RECORDS_PER_CALL)]
CreateBody = RecordsCreate | LegacyRecords
UpdateBody = RecordsUpdate | LegacyRecords


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    type: str
    message: str | None = None


class RecordResult(msgspec.Struct, omit_defaults=True):
    """The outcome for one record of a batch, in the order the records were given."""

    index: int
    status: int
    record: Record | None = None
    error: ErrorDetail | None = None


class BatchResponse(msgspec.Struct, rename="camel", omit_defaults=True):
    """Every record written (``records``) and a result per record given (``results``); the
    status is 207 when some failed. An upsert also lists which records were created and updated."""

    records: list[Record]
    results: list[RecordResult]
    created_records: list[str] | None = None
    updated_records: list[str] | None = None


class Deleted(msgspec.Struct):
    id: str
    deleted: bool


class DeletedList(msgspec.Struct):
    records: list[Deleted]
    results: list[RecordResult]


class Base(msgspec.Struct, rename="camel"):
    id: str
    name: str
    permission_level: str | None = None


class BaseList(msgspec.Struct, omit_defaults=True):
    bases: list[Base]
    offset: str | None = None


class Table(msgspec.Struct, rename="camel", omit_defaults=True):
    id: str
    name: str
    primary_field_id: str | None = None
    description: str | None = None
    fields: list[dict[str, Any]] = []
    views: list[dict[str, Any]] = []


class TableList(msgspec.Struct):
    tables: list[Table]


class TokenUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Your own Airtable personal access token; your requests use it instead of the platform's."""

    token: Annotated[str, msgspec.Meta(min_length=10, max_length=512, pattern=r"^[A-Za-z0-9._-]+$")]


class TokenStatus(msgspec.Struct, omit_defaults=True):
    configured: bool
    hint: str | None = None
    updated_at: datetime | None = None


# Airtable's base ids: "app" and 14 letters or digits.
BASE_ID_PATTERN = r"^app[A-Za-z0-9]{14}$"
GrantAccess = Literal["read", "write"]


class GrantUpdate(msgspec.Struct, forbid_unknown_fields=True):
    access: GrantAccess


class Grant(msgspec.Struct):
    """An organisation's access to a base through the platform's Airtable token."""

    organization_id: uuid.UUID
    base_id: str
    access: GrantAccess
    created_by: uuid.UUID
    created_at: datetime
    updated_at: datetime


class GrantList(msgspec.Struct):
    grants: list[Grant]
