"""Dependency providers of the Airtable gateway."""

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncSession

from airtable_gateway.services import (
    AirtableService,
    BaseAccess,
    GrantManagement,
    TableRecords,
    UserTokens,
    fair_share_unit,
)
from shared.http import client_ip
from shared.security import Identity


async def provide_airtable(request: Request[Identity, Any, Any], state: State) -> AirtableService:
    """The caller's view of Airtable: their own token when they set one (Airtable's permissions
    apply), else the platform's, within their active organisation's grants."""
    identity = request.user
    caller = await state.user_tokens.caller(identity.user_id, fair_share_unit(identity))
    access = BaseAccess(None if caller.own_token else state.grants, identity.tenant_id, identity.org_role)
    return AirtableService(state.upstream, caller, state.settings.base_allow_list, access)


def provide_table_records(
    airtable: NamedDependency[AirtableService], base_id: FromPath[str], table: FromPath[str]
) -> TableRecords:
    """The records of the table in the route's path, as the caller may reach them."""
    return TableRecords(airtable, base_id, table)


def provide_user_tokens(state: State) -> UserTokens:
    user_tokens: UserTokens = state.user_tokens
    return user_tokens


async def provide_grant_management(
    request: Request[Identity, Any, Any], state: State, db_session: NamedDependency[AsyncSession]
) -> GrantManagement:
    return GrantManagement(
        db_session, state.grants, request.user, client_ip(request.scope, state.settings.trusted_proxy_list)
    )
