"""Dependency providers of the auth service."""

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.services import AuthService, Client
from shared.controllers import CALLER
from shared.http import client_ip


def provide_auth_service(
    db_session: NamedDependency[AsyncSession], state: State, client: NamedDependency[Client]
) -> AuthService:
    """The service for one request: the client's address goes into its audit entries."""
    return auth_service(db_session, state, client)


def auth_service(db: AsyncSession, state: State, client: Client | None = None) -> AuthService:
    """The service in a transaction of ``db``; without a client (an event being applied) audit
    entries have no address."""
    return AuthService(
        db=db,
        settings=state.settings,
        passwords=state.passwords,
        issuer=state.issuer,
        throttle=state.throttle,
        revocations=state.revocations,
        store=state.store,
        clock=state.clock,
        totp_cipher=state.totp_cipher,
        client=client,
    )


def provide_client(request: Request[Any, Any, Any], state: State) -> Client:
    return Client(
        ip=client_ip(request.scope, state.settings.trusted_proxy_list),
        user_agent=request.headers.get("user-agent"),
    )


# What a controller of the auth service's routes takes: the service of the request, and the
# signed-in caller where a route needs one.
AUTH_DEPENDENCIES = {"auth": Provide(provide_auth_service, sync_to_thread=False), **CALLER}

# A handler's ``auth: Auth`` (the parameter's name is the dependency's): the service of the request.
Auth = NamedDependency[AuthService]
