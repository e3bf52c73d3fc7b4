import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from auth_service.deps import AUTH_DEPENDENCIES, Auth
from auth_service.errors import (
    AccountLocked,
    EmailTaken,
    EmailUnverified,
    InvalidChallenge,
    InvalidCode,
    InvalidCredentials,
    InvalidGrant,
    InvalidInvitation,
    InvalidLinkToken,
    InvitationEmailMismatch,
    SignupClosed,
    TooManyAttempts,
    TwoFactorEnabled,
    TwoFactorEnrolmentRequired,
    TwoFactorNotEnabled,
    TwoFactorUnavailable,
    WeakPassword,
)
from auth_service.schemas import (
    AcceptedResponse,
    AccountCreate,
    AccountUpdate,
    EmailChangeRequest,
    EmailVerifyRequest,
    EnrolledTokenResponse,
    ForgotPasswordRequest,
    JWKSResponse,
    LoginRequest,
    LogoutRequest,
    MfaEnrolRequest,
    MfaLoginRequest,
    MfaRequiredResponse,
    PasswordChangeRequest,
    PasswordResetRequest,
    RecoveryCodes,
    RefreshRequest,
    RegisterRequest,
    ResendVerificationRequest,
    SessionList,
    TokenResponse,
    TwoFactorConfirmRequest,
    TwoFactorEnrolment,
    TwoFactorEnrolRequest,
    TwoFactorProofRequest,
    TwoFactorStatus,
    UserRead,
    VerifyResponse,
    user_read,
)
from auth_service.services import Client, signed_in_account
from shared.controllers import BEARER, Caller
from shared.errors import PROBLEM_MEDIA_TYPE, NotFound, Unauthorized, problem_for_exception
from shared.logs import request_id_var
from shared.security import Identity, bearer_token, require_admin

PUBLIC = {"exclude_from_auth": True}
BEARER_OR_NONE: list[dict[str, list[str]]] = [{"BearerAuth": []}, {}]
CHECK_INBOX = AcceptedResponse(detail="If an account has this address, a message is on its way to it.")
REGISTERED_CHECK_INBOX = AcceptedResponse(detail="Check your inbox: a message is on its way to this address.")
Lifetime = Annotated[
    Literal["default", "legacy"],
    QueryParameter(description="legacy: access tokens live JWT_EXPIRES_IN, as the older platform's did"),
]


def enrolment_required(request: Request[Any, Any, Any], exc: TwoFactorEnrolmentRequired) -> Response[dict[str, Any]]:
    """The problem document of a refused sign-in, with the challenge that allows the enrolment."""
    problem, headers = problem_for_exception(exc, request_id_var.get(), request.scope.get("path"))
    body = {
        **{k: v for k, v in msgspec.structs.asdict(problem).items() if v is not None},
        "challenge": exc.challenge,
        "expires_in": exc.expires_in,
    }
    return Response(body, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


class AuthController(Controller):
    """Accounts, sign-in, tokens and sessions."""

    path = "/api/v1/auth"
    tags = ["auth"]
    # ``client`` (where a request came from) is the app's: every handler's audit entries need it.
    dependencies = AUTH_DEPENDENCIES

    @post(
        "/register",
        operation_id="register",
        status_code=HTTP_201_CREATED,
        opt=PUBLIC,
        raises=[EmailTaken, WeakPassword, TooManyAttempts, SignupClosed, InvalidInvitation, InvitationEmailMismatch],
    )
    async def register(
        self,
        data: JSONBody[RegisterRequest],
        auth: Auth,
        client: NamedDependency[Client],
        lifetime: Lifetime = "default",
    ) -> Response[TokenResponse | AcceptedResponse]:
        """Create an account and sign it in; a verification link is mailed to the address.

        With ``REQUIRE_VERIFIED_EMAIL`` the answer is 202 and the same whether or not the address
        already has an account (its owner is told by mail); sign in once the address is verified.

        The account founds its own organisation (its owner), or with ``invitation`` (the token of a
        mailed invitation to this address) joins the inviting one with the invited role. With
        ``SIGNUP_MODE=invite`` (or ``domains`` and another domain) registering without an
        invitation is 403 ``signup-closed``."""
        tokens = await auth.register(
            data.email, data.password, data.first_name, data.last_name, client, lifetime == "legacy", data.invitation
        )
        if tokens is None:
            return Response(REGISTERED_CHECK_INBOX, status_code=HTTP_202_ACCEPTED)
        return Response(tokens, status_code=HTTP_201_CREATED)

    @post(
        "/login",
        operation_id="login",
        status_code=HTTP_200_OK,
        opt=PUBLIC,
        raises=[InvalidCredentials, TooManyAttempts, AccountLocked, EmailUnverified, TwoFactorEnrolmentRequired],
        exception_handlers={TwoFactorEnrolmentRequired: enrolment_required},
    )
    async def login(
        self, data: JSONBody[LoginRequest], auth: Auth, client: NamedDependency[Client], lifetime: Lifetime = "default"
    ) -> TokenResponse | MfaRequiredResponse:
        """Sign in with email and password (403 ``email-unverified`` while ``REQUIRE_VERIFIED_EMAIL``
        waits for the address to be confirmed). With two-factor on, the answer is
        ``{mfa_required: true, challenge, expires_in}`` and no tokens: see ``POST /login/mfa``.
        When the organisation the sign-in starts in requires two-factor and the account has none,
        the answer is 403 ``two-factor-enrolment-required`` with a ``challenge`` (and
        ``expires_in``): enrol with ``POST /login/mfa/enroll``, then ``POST /login/mfa``."""
        return await auth.login(data.email, data.password, client, lifetime == "legacy")

    @post(
        "/login/mfa",
        operation_id="login_mfa",
        status_code=HTTP_200_OK,
        opt=PUBLIC,
        raises=[InvalidChallenge, InvalidCode, TooManyAttempts, TwoFactorUnavailable, TwoFactorNotEnabled],
    )
    async def login_mfa(
        self, data: JSONBody[MfaLoginRequest], auth: Auth, client: NamedDependency[Client]
    ) -> TokenResponse | EnrolledTokenResponse:
        """The second step of a sign-in with two-factor on: the challenge from ``POST /login`` and
        a code from the authenticator (or a recovery code). Each code works once; wrong codes lock
        the account's second factor out as wrong passwords lock its password. With the challenge
        of a required enrolment, the first code of the new authenticator turns two-factor on and
        the answer adds ten ``recovery_codes``, shown once."""
        return await auth.login_mfa(data.challenge, data.code, client)

    @post(
        "/login/mfa/enroll",
        operation_id="login_mfa_enroll",
        status_code=HTTP_201_CREATED,
        opt=PUBLIC,
        raises=[InvalidChallenge, TooManyAttempts, TwoFactorEnabled, TwoFactorUnavailable],
    )
    async def login_mfa_enroll(
        self, data: JSONBody[MfaEnrolRequest], auth: Auth, client: NamedDependency[Client]
    ) -> TwoFactorEnrolment:
        """Enrol an authenticator during a sign-in its organisation refused without one (the
        challenge of the 403 ``two-factor-enrolment-required``): its secret, URI and QR code."""
        return await auth.enrol_at_login(data.challenge, client)

    @post("/refresh", operation_id="refresh", status_code=HTTP_200_OK, opt=PUBLIC, raises=[InvalidGrant])
    async def refresh(self, data: JSONBody[RefreshRequest], auth: Auth) -> TokenResponse:
        """Exchange a refresh token for a new pair; the old refresh token stops working."""
        return await auth.refresh(data.refresh_token)

    @post(
        "/logout",
        operation_id="logout",
        status_code=HTTP_204_NO_CONTENT,
        opt=PUBLIC,
        security=BEARER_OR_NONE,
        raises=[Unauthorized],
    )
    async def logout(
        self,
        request: Request[Any, Any, State],
        auth: Auth,
        data: JSONBody[LogoutRequest | None] = None,
        logout_scope: Annotated[
            Literal["local", "global"], QueryParameter(name="scope", description="local: this session; global: all")
        ] = "local",
    ) -> None:
        """Sign out this session (``scope=local``) or every session of the user (``global``).

        Without a bearer token, ``{"refresh_token": ...}`` alone signs out that token's session
        (RFC 7009: 204 whether or not the token was known)."""
        refresh = data.refresh_token if data else None
        authorization = request.headers.get("authorization")
        if authorization is None and refresh:
            await auth.revoke_refresh_token(refresh)
            return
        identity = await request.app.state.verifier.verify(bearer_token(authorization))
        await auth.logout(identity, refresh, logout_scope)

    @get("/me", operation_id="me", security=BEARER)
    async def me(self, caller: Caller, state: State) -> UserRead:
        """The signed-in account."""
        return await signed_in_account(state.direct, caller)

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
    async def change_password(self, data: JSONBody[PasswordChangeRequest], caller: Caller, auth: Auth) -> None:
        """Change the password; every other session is signed out."""
        await auth.change_password(caller, data.current_password, data.new_password)

    @put(
        "/email",
        operation_id="change_email",
        status_code=HTTP_202_ACCEPTED,
        security=BEARER,
        raises=[EmailTaken, AccountLocked],
    )
    async def change_email(self, data: JSONBody[EmailChangeRequest], caller: Caller, auth: Auth) -> UserRead:
        """Ask to change the account's address: it changes when the link mailed to the new address
        is opened (``POST /email/verify``); the account is answered as it still is."""
        return user_read(await auth.change_email(caller, data.current_password, data.new_email))

    @post(
        "/password/forgot",
        operation_id="forgot_password",
        status_code=HTTP_202_ACCEPTED,
        opt=PUBLIC,
        raises=[TooManyAttempts],
    )
    async def forgot_password(
        self, data: JSONBody[ForgotPasswordRequest], auth: Auth, client: NamedDependency[Client]
    ) -> AcceptedResponse:
        """Mail a password-reset link (valid 30 minutes, once) if an account has the address;
        the answer is the same either way."""
        await auth.forgot_password(data.email, client)
        return CHECK_INBOX

    @post(
        "/password/reset",
        operation_id="reset_password",
        status_code=HTTP_204_NO_CONTENT,
        opt=PUBLIC,
        raises=[InvalidLinkToken, WeakPassword],
    )
    async def reset_password(self, data: JSONBody[PasswordResetRequest], auth: Auth) -> None:
        """Set a new password with the mailed token; every session and access token of the account ends."""
        await auth.reset_password(data.token, data.new_password)

    @post(
        "/email/verify",
        operation_id="verify_email",
        status_code=HTTP_200_OK,
        opt=PUBLIC,
        raises=[InvalidLinkToken, EmailTaken],
    )
    async def verify_email(self, data: JSONBody[EmailVerifyRequest], auth: Auth) -> UserRead:
        """Confirm an address with the mailed token (a new address then replaces the old one)."""
        return user_read(await auth.verify_email(data.token))

    @post(
        "/email/verify/resend",
        operation_id="resend_verification",
        status_code=HTTP_202_ACCEPTED,
        opt=PUBLIC,
        raises=[TooManyAttempts],
    )
    async def resend_verification(
        self, data: JSONBody[ResendVerificationRequest], auth: Auth, client: NamedDependency[Client]
    ) -> AcceptedResponse:
        """Mail a new verification link if an unverified account has the address; the answer is
        the same either way."""
        await auth.resend_verification(data.email, client)
        return CHECK_INBOX

    @get("/sessions", operation_id="list_sessions", security=BEARER)
    async def sessions(self, caller: Caller, auth: Auth) -> SessionList:
        """The account's active sessions."""
        return SessionList(sessions=await auth.list_sessions(caller))

    @delete("/sessions/{session_id:uuid}", operation_id="revoke_session", security=BEARER)
    async def revoke_session(self, session_id: FromPath[uuid.UUID], caller: Caller, auth: Auth) -> None:
        """Sign out one of the account's sessions."""
        await auth.revoke_session(caller, session_id)

    @get("/.well-known/jwks.json", operation_id="jwks", opt=PUBLIC, sync_to_thread=False, raises=[NotFound])
    def jwks(self, state: State) -> JWKSResponse:
        """The public keys that verify access tokens (asymmetric algorithms only)."""
        keys = state.issuer.jwks["keys"]
        if not keys:
            raise NotFound("No JWKS: tokens are signed with a shared secret (HS256).")
        return JWKSResponse(keys=keys)


class AdministratorController(Controller):
    """What the platform administrators' account routes share: a bearer token with the admin role."""

    tags = ["auth", "admin"]
    security = BEARER
    guards = [require_admin]
    dependencies = AUTH_DEPENDENCIES


class AccountAdminController(AdministratorController):
    """Administrators manage accounts: roles and activation live with the credentials."""

    path = "/api/v1/auth/users"

    @patch("/{user_id:uuid}", operation_id="update_account")
    async def update_account(
        self, user_id: FromPath[uuid.UUID], data: JSONBody[AccountUpdate], caller: Caller, auth: Auth
    ) -> UserRead:
        """Set an account's roles or deactivate it (admins only); the account's sessions end."""
        roles = [str(role) for role in data.roles] if data.roles is not None else None
        return user_read(await auth.update_account(caller, user_id, roles, data.is_active))

    @delete("/{user_id:uuid}/2fa", operation_id="reset_two_factor")
    async def reset_two_factor(self, user_id: FromPath[uuid.UUID], caller: Caller, auth: Auth) -> None:
        """Turn an account's two-factor off (admins only: a user who lost the authenticator and the
        recovery codes); it signs in with the password alone until it enrols again."""
        await auth.reset_two_factor(caller, user_id)


class AccountCreationController(AdministratorController):
    """Platform administrators create accounts, whatever ``SIGNUP_MODE`` allows the public."""

    path = "/api/v1/auth/admin/users"

    @post("/", operation_id="create_account", status_code=HTTP_201_CREATED, raises=[EmailTaken, WeakPassword])
    async def create_account(self, data: JSONBody[AccountCreate], caller: Caller, auth: Auth) -> UserRead:
        """Create an account (admins only): it founds its own organisation, and a verification
        link is mailed to its address."""
        user = await auth.create_account(caller, data.email, data.password, data.first_name, data.last_name)
        return user_read(user)


class TwoFactorController(Controller):
    """The signed-in user's second factor: a TOTP authenticator and recovery codes."""

    path = "/api/v1/auth/2fa"
    tags = ["auth"]
    security = BEARER
    dependencies = AUTH_DEPENDENCIES

    @get("/", operation_id="two_factor_status")
    async def status(self, caller: Caller, auth: Auth) -> TwoFactorStatus:
        """Whether two-factor is on (or an enrolment waits for its code), and the recovery codes left."""
        return await auth.two_factor_status(caller)

    @post(
        "/enroll",
        operation_id="enroll_two_factor",
        status_code=HTTP_201_CREATED,
        raises=[InvalidCredentials, AccountLocked, TwoFactorEnabled, TwoFactorUnavailable],
    )
    async def enroll(self, data: JSONBody[TwoFactorEnrolRequest], caller: Caller, auth: Auth) -> TwoFactorEnrolment:
        """Start enrolling an authenticator (the password re-entered): its secret, ``otpauth://`` URI
        and QR code, shown once; two-factor is on once ``POST /2fa/confirm`` gets a code of it."""
        return await auth.enrol_two_factor(caller, data.password)

    @post(
        "/confirm",
        operation_id="confirm_two_factor",
        status_code=HTTP_200_OK,
        raises=[InvalidCode, TooManyAttempts, TwoFactorNotEnabled, TwoFactorUnavailable],
    )
    async def confirm(self, data: JSONBody[TwoFactorConfirmRequest], caller: Caller, auth: Auth) -> RecoveryCodes:
        """Turn two-factor on with a first code from the enrolled authenticator; the answer holds
        ten recovery codes, shown once."""
        return RecoveryCodes(recovery_codes=await auth.confirm_two_factor(caller, data.code))

    @post(
        "/recovery-codes",
        operation_id="renew_recovery_codes",
        status_code=HTTP_200_OK,
        raises=[InvalidCredentials, AccountLocked, InvalidCode, TooManyAttempts, TwoFactorNotEnabled],
    )
    async def renew_recovery_codes(
        self, data: JSONBody[TwoFactorProofRequest], caller: Caller, auth: Auth
    ) -> RecoveryCodes:
        """Ten new recovery codes, shown once, with the password and a code; the earlier ones stop working."""
        return RecoveryCodes(recovery_codes=await auth.renew_recovery_codes(caller, data.password, data.code))

    @post(
        "/disable",
        operation_id="disable_two_factor",
        status_code=HTTP_204_NO_CONTENT,
        raises=[InvalidCredentials, AccountLocked, InvalidCode, TooManyAttempts, TwoFactorNotEnabled],
    )
    async def disable(self, data: JSONBody[TwoFactorProofRequest], caller: Caller, auth: Auth) -> None:
        """Turn two-factor off with the password and a code (or a recovery code)."""
        await auth.disable_two_factor(caller, data.password, data.code)
