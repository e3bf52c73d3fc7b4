import uuid
from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from auth_service.deps import provide_auth_service, provide_client
from auth_service.errors import (
    AccountLocked,
    EmailTaken,
    InvalidCredentials,
    InvalidGrant,
    TooManyAttempts,
    WeakPassword,
)
from auth_service.schemas import (
    AccountUpdate,
    EmailChangeRequest,
    JWKSResponse,
    LoginRequest,
    LogoutRequest,
    PasswordChangeRequest,
    RefreshRequest,
    RegisterRequest,
    SessionList,
    TokenResponse,
    UserRead,
    VerifyResponse,
    user_read,
)
from auth_service.services import AuthService, Client
from shared.errors import NotFound
from shared.security import Identity, require_admin

PUBLIC = {"exclude_from_auth": True}
BEARER: list[dict[str, list[str]]] = [{"BearerAuth": []}]


class AuthController(Controller):
    """Accounts, sign-in, tokens and sessions."""

    path = "/api/v1/auth"
    tags = ["auth"]
    dependencies = {
        "auth": Provide(provide_auth_service, sync_to_thread=False),
        "client": Provide(provide_client, sync_to_thread=False),
    }

    @post(
        "/register",
        operation_id="register",
        status_code=HTTP_201_CREATED,
        opt=PUBLIC,
        raises=[EmailTaken, WeakPassword, TooManyAttempts],
    )
    async def register(
        self, data: JSONBody[RegisterRequest], auth: NamedDependency[AuthService], client: NamedDependency[Client]
    ) -> TokenResponse:
        """Create an account and sign it in."""
        return await auth.register(data.email, data.password, data.first_name, data.last_name, client)

    @post(
        "/login",
        operation_id="login",
        status_code=HTTP_200_OK,
        opt=PUBLIC,
        raises=[InvalidCredentials, TooManyAttempts, AccountLocked],
    )
    async def login(
        self, data: JSONBody[LoginRequest], auth: NamedDependency[AuthService], client: NamedDependency[Client]
    ) -> TokenResponse:
        """Sign in with email and password."""
        return await auth.login(data.email, data.password, client)

    @post("/refresh", operation_id="refresh", status_code=HTTP_200_OK, opt=PUBLIC, raises=[InvalidGrant])
    async def refresh(self, data: JSONBody[RefreshRequest], auth: NamedDependency[AuthService]) -> TokenResponse:
        """Exchange a refresh token for a new pair; the old refresh token stops working."""
        return await auth.refresh(data.refresh_token)

    @post("/logout", operation_id="logout", status_code=HTTP_204_NO_CONTENT, security=BEARER)
    async def logout(
        self,
        request: Request[Identity, str, State],
        auth: NamedDependency[AuthService],
        data: JSONBody[LogoutRequest | None] = None,
        logout_scope: Annotated[
            Literal["local", "global"], QueryParameter(name="scope", description="local: this session; global: all")
        ] = "local",
    ) -> None:
        """Sign out this session (``scope=local``) or every session of the user (``global``)."""
        await auth.logout(request.user, data.refresh_token if data else None, logout_scope)

    @get("/me", operation_id="me", security=BEARER)
    async def me(self, request: Request[Identity, str, State], auth: NamedDependency[AuthService]) -> UserRead:
        """The signed-in account."""
        return user_read(await auth.me(request.user))

    @get("/verify", operation_id="verify", security=BEARER)
    async def verify(self, request: Request[Identity, str, State]) -> VerifyResponse:
        """Whether the bearer token is valid, with its claims."""
        claims: dict[str, Any] = await request.app.state.verifier.decode(request.auth)
        return VerifyResponse(valid=True, claims=claims)

    @post(
        "/password",
        operation_id="change_password",
        status_code=HTTP_204_NO_CONTENT,
        security=BEARER,
        raises=[WeakPassword, AccountLocked],
    )
    async def change_password(
        self,
        data: JSONBody[PasswordChangeRequest],
        request: Request[Identity, str, State],
        auth: NamedDependency[AuthService],
    ) -> None:
        """Change the password; every other session is signed out."""
        await auth.change_password(request.user, data.current_password, data.new_password)

    @put("/email", operation_id="change_email", security=BEARER, raises=[EmailTaken, AccountLocked])
    async def change_email(
        self,
        data: JSONBody[EmailChangeRequest],
        request: Request[Identity, str, State],
        auth: NamedDependency[AuthService],
    ) -> UserRead:
        """Change the account's email address (``user.email_changed`` tells the other services)."""
        return user_read(await auth.change_email(request.user, data.current_password, data.new_email))

    @get("/sessions", operation_id="list_sessions", security=BEARER)
    async def sessions(self, request: Request[Identity, str, State], auth: NamedDependency[AuthService]) -> SessionList:
        """The account's active sessions."""
        return SessionList(sessions=await auth.list_sessions(request.user))

    @delete("/sessions/{session_id:uuid}", operation_id="revoke_session", security=BEARER)
    async def revoke_session(
        self,
        session_id: FromPath[uuid.UUID],
        request: Request[Identity, str, State],
        auth: NamedDependency[AuthService],
    ) -> None:
        """Sign out one of the account's sessions."""
        await auth.revoke_session(request.user, session_id)

    @get("/.well-known/jwks.json", operation_id="jwks", opt=PUBLIC, sync_to_thread=False, raises=[NotFound])
    def jwks(self, state: State) -> JWKSResponse:
        """The public keys that verify access tokens (asymmetric algorithms only)."""
        keys = state.issuer.jwks["keys"]
        if not keys:
            raise NotFound("No JWKS: tokens are signed with a shared secret (HS256).")
        return JWKSResponse(keys=keys)


class AccountAdminController(Controller):
    """Administrators manage accounts: roles and activation live with the credentials."""

    path = "/api/v1/auth/users"
    tags = ["auth", "admin"]
    guards = [require_admin]
    dependencies = {"auth": Provide(provide_auth_service, sync_to_thread=False)}

    @patch("/{user_id:uuid}", operation_id="update_account", security=BEARER)
    async def update_account(
        self,
        user_id: FromPath[uuid.UUID],
        data: JSONBody[AccountUpdate],
        request: Request[Identity, str, State],
        auth: NamedDependency[AuthService],
    ) -> UserRead:
        """Set an account's roles or deactivate it (admins only); the account's sessions end."""
        roles = [str(role) for role in data.roles] if data.roles is not None else None
        return user_read(await auth.update_account(request.user, user_id, roles, data.is_active))
