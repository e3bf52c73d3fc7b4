"""Dependency providers of the Airtable gateway."""

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from airtable_gateway.services import AirtableService, BaseAccess, GrantManagement, fair_share_unit
from shared.http import client_ip
from shared.security import Identity


async def provide_airtable(request: Request[Identity, Any, Any], state: State) -> AirtableService:
    """The caller's view of Airtable: their own token when they set one (Airtable's permissions
    apply), else the platform's, within their active organisation's grants."""
    identity = request.user
    caller = await state.user_tokens.caller(identity.user_id, fair_share_unit(identity))
    access = BaseAccess(None if caller.own_token else state.grants, identity.tenant_id, identity.org_role)
    return AirtableService(state.upstream, caller, state.settings.base_allow_list, access)


async def provide_grant_management(
    request: Request[Identity, Any, Any], state: State, db_session: NamedDependency[AsyncSession]
) -> GrantManagement:
    return GrantManagement(
        db_session, state.grants, request.user, client_ip(request.scope, state.settings.trusted_proxy_list)
    )
