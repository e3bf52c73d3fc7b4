"""Dependency providers of the Airtable gateway."""

from typing import Any

from litestar import Request
from litestar.datastructures import State

from airtable_gateway.services import AirtableService
from shared.security import Identity


async def provide_airtable(request: Request[Identity, Any, Any], state: State) -> AirtableService:
    """The caller's view of Airtable: their own token when they set one, else the platform's."""
    caller = await state.user_tokens.caller(request.user.user_id)
    return AirtableService(state.upstream, caller, state.settings.base_allow_list)
