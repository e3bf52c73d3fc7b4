import uuid
from typing import Annotated, Any, Literal, TypeVar

from litestar import Controller, Request, Response, delete, get, patch, post, put, route
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import HttpMethod, MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_207_MULTI_STATUS
from sqlalchemy.ext.asyncio import AsyncSession

from airtable_gateway.cache import Cached
from airtable_gateway.deps import (
    provide_airtable,
    provide_grant_management,
    provide_table_records,
    provide_user_tokens,
)
from airtable_gateway.errors import BaseNotGranted, BaseReadOnly, GrantNotFound, GrantsNotVisible, ReadOnlyRole
from airtable_gateway.schemas import (
    BASE_ID_PATTERN,
    MAX_RECORDS_PER_CALL,
    Base,
    BaseList,
    BatchResponse,
    CreateBody,
    DeletedList,
    Grant,
    GrantList,
    GrantUpdate,
    Record,
    RecordChange,
    RecordList,
    Table,
    TableList,
    TokenStatus,
    TokenUpdate,
    UpdateBody,
    UpsertRequest,
)
from airtable_gateway.services import AirtableService, GrantManagement, ListQuery, TableRecords, UserTokens
from shared.http import refuse_unsafe_json
from shared.security import Identity, require_admin

BEARER: list[dict[str, list[str]]] = [{"BearerAuth": []}]
# What a request for a base may meet before Airtable is asked (documented in the README, "Base grants").
READ_REFUSALS = [BaseNotGranted]
WRITE_REFUSALS = [BaseNotGranted, BaseReadOnly, ReadOnlyRole]
GrantedBaseId = Annotated[
    str, PathParameter(pattern=BASE_ID_PATTERN, description="Airtable base id: app + 14 characters")
]
Formula = Annotated[str | None, QueryParameter(max_length=10_000, description="Airtable formula")]
AnyRequest = Request[Identity, str, State]
Airtable = NamedDependency[AirtableService]
Records = NamedDependency[TableRecords]  # the records of the table in the route's path
Batch = TypeVar("Batch", BatchResponse, DeletedList)
# The routes' paths, each within the one before.
BASE = "/bases/{base_id:str}"
TABLES = f"{BASE}/tables"
TABLE = f"{TABLES}/{{table:str}}"
RECORDS = f"{TABLE}/records"
UPSERT = f"{RECORDS}/upsert"
RECORD = f"{RECORDS}/{{record_id:str}}"
# Far more than any page or the all-pages cap returns, and a number every upstream can parse.
MAX_RECORDS_PARAMETER = 2**31 - 1


PARTIAL = {207: ResponseSpec(data_container=BatchResponse, description="Some records failed (see results)")}
PARTIAL_DELETE = {207: ResponseSpec(data_container=DeletedList, description="Some records failed (see results)")}


def _spec(container: Any, description: str) -> dict[int, ResponseSpec]:
    return {
        200: ResponseSpec(data_container=container, description=description),
        304: ResponseSpec(data_container=None, description="Not modified (If-None-Match matched the ETag)"),
    }


class AirtableController(Controller):
    """Bases, tables and records of Airtable, cached and within Airtable's rate limits.

    Reads answer with ``X-Cache: HIT|MISS|STALE`` and an ``ETag`` (``If-None-Match`` → 304).
    """

    path = "/api/v1/airtable"
    tags = ["airtable"]
    security = BEARER
    dependencies = {
        "airtable": Provide(provide_airtable),
        "records": Provide(provide_table_records, sync_to_thread=False),
    }

    @get("/bases", operation_id="list_bases", responses=_spec(BaseList, "The bases the token can see"))
    async def list_bases(
        self,
        request: AnyRequest,
        airtable: Airtable,
        offset: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[bytes]:
        """The bases the Airtable token can see (``offset`` for the next page); with the platform's
        token only those your active organisation is granted."""
        return cached_response(request, await airtable.bases(offset))

    @get(BASE, operation_id="get_base", raises=READ_REFUSALS, responses=_spec(Base, "The base"))
    async def get_base(self, request: AnyRequest, airtable: Airtable, base_id: FromPath[str]) -> Response[bytes]:
        """One base: id, name and the token's permission level."""
        return cached_response(request, await airtable.base(base_id))

    @get(TABLES, operation_id="list_tables", raises=READ_REFUSALS, responses=_spec(TableList, "The tables"))
    async def list_tables(self, request: AnyRequest, airtable: Airtable, base_id: FromPath[str]) -> Response[bytes]:
        """The base's tables with their fields and views."""
        return cached_response(request, await airtable.tables(base_id))

    @get(TABLE, operation_id="get_table", raises=READ_REFUSALS, responses=_spec(Table, "The table"))
    async def get_table(
        self, request: AnyRequest, airtable: Airtable, base_id: FromPath[str], table: FromPath[str]
    ) -> Response[bytes]:
        """One table, by id or by name."""
        return cached_response(request, await airtable.table(base_id, table))

    @get(
        RECORDS,
        operation_id="list_records",
        raises=READ_REFUSALS,
        responses=_spec(RecordList, "A page of records (all of them with all=true, up to the cap)"),
    )
    async def list_records(
        self,
        request: AnyRequest,
        records: Records,
        view: Annotated[str | None, QueryParameter(max_length=255)] = None,
        fields: Annotated[list[str] | None, QueryParameter(max_items=500)] = None,
        filter_by_formula: Formula = None,
        sort: Annotated[
            list[str] | None, QueryParameter(max_items=20, description="field, or -field for descending")
        ] = None,
        sort_field: Annotated[str | None, QueryParameter(max_length=255)] = None,
        sort_direction: FromQuery[Literal["asc", "desc"]] = "asc",
        page_size: Annotated[int | None, QueryParameter(ge=1, le=100)] = None,
        offset: Annotated[str | None, QueryParameter(max_length=200)] = None,
        max_records: Annotated[int | None, QueryParameter(ge=1, le=MAX_RECORDS_PARAMETER)] = None,
        all_pages: Annotated[bool, QueryParameter(name="all", description="follow every page, up to the cap")] = False,
    ) -> Response[bytes]:
        """Records of a table: ``{records, offset, hasMore}``."""
        order = [
            (item[1:], "desc") if item.startswith("-") else (item, "asc") for item in sort or [] if item.strip("-")
        ]
        if sort_field:
            order.append((sort_field, sort_direction))
        query = ListQuery(
            view=view,
            fields=tuple(fields or ()),
            filter_by_formula=filter_by_formula,
            sort=tuple(order),
            page_size=page_size,
            offset=offset,
            max_records=max_records,
            all=all_pages,
        )
        return cached_response(request, await records.listing(query))

    @post(
        RECORDS, operation_id="create_records", raises=WRITE_REFUSALS, responses=PARTIAL, status_code=HTTP_201_CREATED
    )
    async def create_records(self, records: Records, data: JSONBody[CreateBody]) -> Response[BatchResponse]:
        """Create any number of records (sent to Airtable 10 at a time); a result per record."""
        return batch_response(await records.create(data), HTTP_201_CREATED)

    @patch(RECORDS, operation_id="update_records", raises=WRITE_REFUSALS, responses=PARTIAL)
    async def update_records(self, records: Records, data: JSONBody[UpdateBody]) -> Response[BatchResponse]:
        """Update the given fields of any number of records (10 per Airtable call)."""
        return batch_response(await records.update(data, replace=False))

    @put(RECORDS, operation_id="replace_records", raises=WRITE_REFUSALS, responses=PARTIAL)
    async def replace_records(self, records: Records, data: JSONBody[UpdateBody]) -> Response[BatchResponse]:
        """Replace any number of records (fields not given are cleared)."""
        return batch_response(await records.update(data, replace=True))

    @delete(
        RECORDS,
        operation_id="delete_records",
        raises=WRITE_REFUSALS,
        responses=PARTIAL_DELETE,
        status_code=HTTP_200_OK,
    )
    async def delete_records(
        self,
        records: Records,
        record_ids: Annotated[
            list[str],
            QueryParameter(min_items=1, max_items=MAX_RECORDS_PER_CALL, description="ids, repeated or comma-separated"),
        ],
    ) -> Response[DeletedList]:
        """Delete any number of records (10 per Airtable call)."""
        return batch_response(await records.delete(record_ids))

    @post(UPSERT, operation_id="upsert_records", raises=WRITE_REFUSALS, responses=PARTIAL, status_code=HTTP_200_OK)
    async def upsert_records(self, records: Records, data: JSONBody[UpsertRequest]) -> Response[BatchResponse]:
        """Update the records that match on ``fields_to_merge_on``, create the others."""
        return batch_response(await records.upsert(data))

    @get(RECORD, operation_id="get_record", raises=READ_REFUSALS, responses=_spec(Record, "The record"))
    async def get_record(self, request: AnyRequest, records: Records, record_id: FromPath[str]) -> Response[bytes]:
        """One record."""
        return cached_response(request, await records.get(record_id))

    @patch(RECORD, operation_id="update_record", raises=WRITE_REFUSALS)
    async def update_record(
        self, records: Records, record_id: FromPath[str], data: JSONBody[RecordChange]
    ) -> Response[bytes]:
        """Update the given fields of one record."""
        return json_response(await records.change(record_id, data, replace=False))

    @put(RECORD, operation_id="replace_record", raises=WRITE_REFUSALS)
    async def replace_record(
        self, records: Records, record_id: FromPath[str], data: JSONBody[RecordChange]
    ) -> Response[bytes]:
        """Replace one record (fields not given are cleared)."""
        return json_response(await records.change(record_id, data, replace=True))

    @delete(RECORD, operation_id="delete_record", raises=WRITE_REFUSALS, status_code=HTTP_200_OK)
    async def delete_record(self, records: Records, record_id: FromPath[str]) -> Response[bytes]:
        """Delete one record: ``{id, deleted: true}``."""
        return json_response(await records.remove(record_id))


class TokenController(Controller):
    """Your own Airtable token, stored encrypted; your requests use it instead of the platform's."""

    path = "/api/v1/airtable/token"
    tags = ["airtable"]
    security = BEARER
    dependencies = {"tokens": Provide(provide_user_tokens, sync_to_thread=False)}

    @get("/", operation_id="get_airtable_token")
    async def status(
        self, request: AnyRequest, db_session: NamedDependency[AsyncSession], tokens: NamedDependency[UserTokens]
    ) -> TokenStatus:
        """Whether you have set a token (its last characters, never the token)."""
        return await tokens.status(db_session, request.user.user_id)

    @put("/", operation_id="set_airtable_token")
    async def set_token(
        self,
        request: AnyRequest,
        data: JSONBody[TokenUpdate],
        db_session: NamedDependency[AsyncSession],
        tokens: NamedDependency[UserTokens],
    ) -> TokenStatus:
        """Store your Airtable personal access token (encrypted)."""
        return await tokens.save(db_session, request.user.user_id, data.token)

    @delete("/", operation_id="delete_airtable_token", status_code=HTTP_204_NO_CONTENT)
    async def delete_token(
        self, request: AnyRequest, db_session: NamedDependency[AsyncSession], tokens: NamedDependency[UserTokens]
    ) -> None:
        """Forget your token; your requests use the platform's again."""
        await tokens.delete(db_session, request.user.user_id)


class GrantController(Controller):
    """Which organisation may reach which Airtable base through the platform's token. Platform
    administrators manage grants; an organisation's owners and admins see their organisation's."""

    path = "/api/v1/airtable/grants"
    tags = ["airtable"]
    security = BEARER
    dependencies = {"grants": Provide(provide_grant_management)}

    @get("/", operation_id="list_grants", raises=[GrantsNotVisible])
    async def list_grants(
        self,
        grants: NamedDependency[GrantManagement],
        organization_id: Annotated[uuid.UUID | None, QueryParameter(description="one organisation's grants")] = None,
    ) -> GrantList:
        """Grants: platform administrators any organisation's (every one without ``organization_id``);
        an organisation's owners and admins their active organisation's only."""
        return await grants.listing(organization_id)

    @put(
        "/{organization_id:uuid}/{base_id:str}",
        operation_id="put_grant",
        guards=[require_admin],
        responses={201: ResponseSpec(data_container=Grant, description="Granted")},
    )
    async def put_grant(
        self,
        grants: NamedDependency[GrantManagement],
        organization_id: FromPath[uuid.UUID],
        base_id: GrantedBaseId,
        data: JSONBody[GrantUpdate],
    ) -> Response[Grant]:
        """Grant an organisation a base (201), or change its access (200); platform administrators only."""
        grant, created = await grants.put(organization_id, base_id, data.access)
        return Response(grant, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @delete(
        "/{organization_id:uuid}/{base_id:str}",
        operation_id="delete_grant",
        guards=[require_admin],
        raises=[GrantNotFound],
        status_code=HTTP_204_NO_CONTENT,
    )
    async def delete_grant(
        self, grants: NamedDependency[GrantManagement], organization_id: FromPath[uuid.UUID], base_id: GrantedBaseId
    ) -> None:
        """Revoke a grant: the organisation's members lose the base at once on this replica, within
        ``AIRTABLE_GRANT_CACHE_SECONDS`` on the others; platform administrators only."""
        await grants.revoke(organization_id, base_id)


class MirrorController(Controller):
    """Airtable's own Web API v0, mirrored: point an Airtable client's endpoint URL at
    ``/api/v1/airtable`` and use a platform access token as its API key."""

    path = "/api/v1/airtable/v0"
    tags = ["airtable"]
    security = BEARER
    dependencies = {"airtable": Provide(provide_airtable)}

    @route(
        "/{path:path}",
        http_method=[HttpMethod.GET, HttpMethod.POST, HttpMethod.PATCH, HttpMethod.PUT, HttpMethod.DELETE],
        operation_id=lambda _handler, method, _path: f"airtable_v0_{method.lower()}",
        raises=WRITE_REFUSALS,
        status_code=HTTP_200_OK,
    )
    async def mirror(self, request: AnyRequest, airtable: Airtable, path: FromPath[str]) -> Response[bytes]:
        """Any Airtable Web API v0 call; reads cached, writes invalidate their base's reads."""
        method = request.method.upper()
        body = await request.body() if method != "GET" else None
        if body:
            refuse_unsafe_json(body)  # passed on as it came: the kernel's door all the same
        query = request.scope.get("query_string", b"").decode("latin-1")
        cached = await airtable.mirror(method, path, query, body)
        if method == "GET" or path.rstrip("/").endswith("/listRecords"):
            return cached_response(request, cached)
        return json_response(cached.body, cached.status)


def cached_response(request: AnyRequest, cached: Cached) -> Response[bytes]:
    headers = {"ETag": cached.etag, "X-Cache": cached.state, "Cache-Control": "private, no-cache"}
    if cached.state != "MISS":
        headers["Age"] = str(cached.age)
    if _matches(request.headers.get("if-none-match"), cached.etag):
        return Response(b"", status_code=304, headers=headers)
    return Response(cached.body, status_code=cached.status, media_type=MediaType.JSON, headers=headers)


def json_response(body: bytes, status: int = HTTP_200_OK) -> Response[bytes]:
    return Response(body, status_code=status, media_type=MediaType.JSON)


def batch_response(result: Batch, success: int = HTTP_200_OK) -> Response[Batch]:
    """``success``, or 207 when some records failed."""
    failed = any(item.status >= 400 for item in result.results)
    return Response(result, status_code=HTTP_207_MULTI_STATUS if failed else success)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [item.strip().removeprefix("W/") for item in if_none_match.split(",")]
    return "*" in candidates or etag in candidates
