import uuid
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, patch, post, put, route
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import HttpMethod, MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_207_MULTI_STATUS
from sqlalchemy.ext.asyncio import AsyncSession

from airtable_gateway.cache import Cached
from airtable_gateway.deps import provide_airtable, provide_grant_management
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
    RecordsCreate,
    RecordsUpdate,
    Table,
    TableList,
    TokenStatus,
    TokenUpdate,
    UpdateBody,
    UpsertRequest,
)
from airtable_gateway.services import AirtableService, GrantManagement, ListQuery, UserTokens
from shared.errors import Unprocessable
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
    dependencies = {"airtable": Provide(provide_airtable)}

    @get("/bases", operation_id="list_bases", responses=_spec(BaseList, "The bases the token can see"))
    async def list_bases(
        self,
        request: AnyRequest,
        airtable: NamedDependency[AirtableService],
        offset: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[bytes]:
        """The bases the Airtable token can see (``offset`` for the next page); with the platform's
        token only those your active organisation is granted."""
        return cached_response(request, await airtable.bases(offset))

    @get("/bases/{base_id:str}", operation_id="get_base", raises=READ_REFUSALS, responses=_spec(Base, "The base"))
    async def get_base(
        self, request: AnyRequest, airtable: NamedDependency[AirtableService], base_id: FromPath[str]
    ) -> Response[bytes]:
        """One base: id, name and the token's permission level."""
        return cached_response(request, await airtable.base(base_id))

    @get(
        "/bases/{base_id:str}/tables",
        operation_id="list_tables",
        raises=READ_REFUSALS,
        responses=_spec(TableList, "The tables"),
    )
    async def list_tables(
        self, request: AnyRequest, airtable: NamedDependency[AirtableService], base_id: FromPath[str]
    ) -> Response[bytes]:
        """The base's tables with their fields and views."""
        return cached_response(request, await airtable.tables(base_id))

    @get(
        "/bases/{base_id:str}/tables/{table:str}",
        operation_id="get_table",
        raises=READ_REFUSALS,
        responses=_spec(Table, "The table"),
    )
    async def get_table(
        self,
        request: AnyRequest,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
    ) -> Response[bytes]:
        """One table, by id or by name."""
        return cached_response(request, await airtable.table(base_id, table))

    @get(
        "/bases/{base_id:str}/tables/{table:str}/records",
        operation_id="list_records",
        raises=READ_REFUSALS,
        responses=_spec(RecordList, "A page of records (all of them with all=true, up to the cap)"),
    )
    async def list_records(
        self,
        request: AnyRequest,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
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
        return cached_response(request, await airtable.list_records(base_id, table, query))

    @post(
        "/bases/{base_id:str}/tables/{table:str}/records",
        operation_id="create_records",
        raises=WRITE_REFUSALS,
        responses=PARTIAL,
        status_code=HTTP_201_CREATED,
    )
    async def create_records(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        data: JSONBody[CreateBody],
    ) -> Response[BatchResponse]:
        """Create any number of records (sent to Airtable 10 at a time); a result per record."""
        if isinstance(data, RecordsCreate):
            records = [item.fields for item in data.records] + ([data.fields] if data.fields is not None else [])
            typecast = data.typecast
        else:
            records, typecast = data, False
        _check_count(len(records))
        return batch_response(await airtable.create_records(base_id, table, records, typecast), HTTP_201_CREATED)

    @patch(
        "/bases/{base_id:str}/tables/{table:str}/records",
        operation_id="update_records",
        raises=WRITE_REFUSALS,
        responses=PARTIAL,
    )
    async def update_records(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        data: JSONBody[UpdateBody],
    ) -> Response[BatchResponse]:
        """Update the given fields of any number of records (10 per Airtable call)."""
        records, typecast = _updates(data)
        return batch_response(await airtable.update_records(base_id, table, records, typecast, replace=False))

    @put(
        "/bases/{base_id:str}/tables/{table:str}/records",
        operation_id="replace_records",
        raises=WRITE_REFUSALS,
        responses=PARTIAL,
    )
    async def replace_records(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        data: JSONBody[UpdateBody],
    ) -> Response[BatchResponse]:
        """Replace any number of records (fields not given are cleared)."""
        records, typecast = _updates(data)
        return batch_response(await airtable.update_records(base_id, table, records, typecast, replace=True))

    @delete(
        "/bases/{base_id:str}/tables/{table:str}/records",
        operation_id="delete_records",
        raises=WRITE_REFUSALS,
        responses=PARTIAL_DELETE,
        status_code=HTTP_200_OK,
    )
    async def delete_records(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        record_ids: Annotated[
            list[str],
            QueryParameter(min_items=1, max_items=MAX_RECORDS_PER_CALL, description="ids, repeated or comma-separated"),
        ],
    ) -> Response[DeletedList]:
        """Delete any number of records (10 per Airtable call)."""
        ids = [part.strip() for item in record_ids for part in item.split(",") if part.strip()]
        if not ids or len(ids) > MAX_RECORDS_PER_CALL:
            raise Unprocessable(f"Give between 1 and {MAX_RECORDS_PER_CALL} record ids.")
        result = await airtable.delete_records(base_id, table, ids)
        failed = any(item.status >= 400 for item in result.results)
        return Response(result, status_code=HTTP_207_MULTI_STATUS if failed else HTTP_200_OK)

    @post(
        "/bases/{base_id:str}/tables/{table:str}/records/upsert",
        operation_id="upsert_records",
        raises=WRITE_REFUSALS,
        responses=PARTIAL,
        status_code=HTTP_200_OK,
    )
    async def upsert_records(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        data: JSONBody[UpsertRequest],
    ) -> Response[BatchResponse]:
        """Update the records that match on ``fields_to_merge_on``, create the others."""
        records = [item.fields for item in data.records]
        result = await airtable.upsert_records(base_id, table, records, data.fields_to_merge_on, data.typecast)
        return batch_response(result)

    @get(
        "/bases/{base_id:str}/tables/{table:str}/records/{record_id:str}",
        operation_id="get_record",
        raises=READ_REFUSALS,
        responses=_spec(Record, "The record"),
    )
    async def get_record(
        self,
        request: AnyRequest,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        record_id: FromPath[str],
    ) -> Response[bytes]:
        """One record."""
        return cached_response(request, await airtable.get_record(base_id, table, record_id))

    @patch(
        "/bases/{base_id:str}/tables/{table:str}/records/{record_id:str}",
        operation_id="update_record",
        raises=WRITE_REFUSALS,
    )
    async def update_record(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        record_id: FromPath[str],
        data: JSONBody[RecordChange],
    ) -> Response[bytes]:
        """Update the given fields of one record."""
        body = await airtable.update_record(base_id, table, record_id, data.fields, data.typecast, replace=False)
        return json_response(body)

    @put(
        "/bases/{base_id:str}/tables/{table:str}/records/{record_id:str}",
        operation_id="replace_record",
        raises=WRITE_REFUSALS,
    )
    async def replace_record(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        record_id: FromPath[str],
        data: JSONBody[RecordChange],
    ) -> Response[bytes]:
        """Replace one record (fields not given are cleared)."""
        body = await airtable.update_record(base_id, table, record_id, data.fields, data.typecast, replace=True)
        return json_response(body)

    @delete(
        "/bases/{base_id:str}/tables/{table:str}/records/{record_id:str}",
        operation_id="delete_record",
        raises=WRITE_REFUSALS,
        status_code=HTTP_200_OK,
    )
    async def delete_record(
        self,
        airtable: NamedDependency[AirtableService],
        base_id: FromPath[str],
        table: FromPath[str],
        record_id: FromPath[str],
    ) -> Response[bytes]:
        """Delete one record: ``{id, deleted: true}``."""
        return json_response(await airtable.delete_record(base_id, table, record_id))


class TokenController(Controller):
    """Your own Airtable token, stored encrypted; your requests use it instead of the platform's."""

    path = "/api/v1/airtable/token"
    tags = ["airtable"]
    security = BEARER

    @get("/", operation_id="get_airtable_token")
    async def status(self, request: AnyRequest, db_session: NamedDependency[AsyncSession], state: State) -> TokenStatus:
        """Whether you have set a token (its last characters, never the token)."""
        tokens: UserTokens = state.user_tokens
        return await tokens.status(db_session, request.user.user_id)

    @put("/", operation_id="set_airtable_token")
    async def set_token(
        self, request: AnyRequest, data: JSONBody[TokenUpdate], db_session: NamedDependency[AsyncSession], state: State
    ) -> TokenStatus:
        """Store your Airtable personal access token (encrypted)."""
        tokens: UserTokens = state.user_tokens
        return await tokens.save(db_session, request.user.user_id, data.token)

    @delete("/", operation_id="delete_airtable_token", status_code=HTTP_204_NO_CONTENT)
    async def delete_token(self, request: AnyRequest, db_session: NamedDependency[AsyncSession], state: State) -> None:
        """Forget your token; your requests use the platform's again."""
        await state.user_tokens.delete(db_session, request.user.user_id)


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
    async def mirror(
        self, request: AnyRequest, airtable: NamedDependency[AirtableService], path: FromPath[str]
    ) -> Response[bytes]:
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


def batch_response(result: BatchResponse, success: int = HTTP_200_OK) -> Response[BatchResponse]:
    failed = any(item.status >= 400 for item in result.results)
    return Response(result, status_code=HTTP_207_MULTI_STATUS if failed else success)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [item.strip().removeprefix("W/") for item in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def _updates(data: RecordsUpdate | list[dict[str, Any]]) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    if isinstance(data, RecordsUpdate):
        _check_count(len(data.records))
        return [(item.id, item.fields) for item in data.records], data.typecast
    updates = []
    for item in data:
        record_id = item.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise Unprocessable("Every record needs an id.")
        updates.append((record_id, {name: value for name, value in item.items() if name != "id"}))
    _check_count(len(updates))
    return updates, False


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_RECORDS_PER_CALL:
        raise Unprocessable(f"Give between 1 and {MAX_RECORDS_PER_CALL} records.")
