"""Request and response bodies of the auth service."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from auth_service.config import MAX_PASSWORD_LENGTH

Email = Annotated[str, Meta(min_length=3, max_length=320, description="An email address")]
Password = Annotated[str, Meta(max_length=MAX_PASSWORD_LENGTH, description="At most 128 characters")]
Name = Annotated[str, Meta(max_length=100)]
OpaqueToken = Annotated[str, Meta(min_length=1, max_length=512)]


class RegisterRequest(Struct, forbid_unknown_fields=False):
    email: Email
    password: Password
    first_name: Name | None = None
    last_name: Name | None = None
    # The token of a mailed invitation: the account joins that organisation (instead of founding its own).
    invitation: OpaqueToken | None = None


class LoginRequest(Struct):
    email: Email
    password: Password


class RefreshRequest(Struct):
    refresh_token: OpaqueToken


class LogoutRequest(Struct):
    refresh_token: OpaqueToken | None = None


class ForgotPasswordRequest(Struct):
    email: Email


class PasswordResetRequest(Struct):
    token: OpaqueToken
    new_password: Password


class EmailVerifyRequest(Struct):
    token: OpaqueToken


class ResendVerificationRequest(Struct):
    email: Email


class AcceptedResponse(Struct):
    """The same answer whatever the address: it says nothing about whether an account has it."""

    detail: str


class PasswordChangeRequest(Struct):
    current_password: Password
    new_password: Password


class EmailChangeRequest(Struct):
    current_password: Password
    new_email: Email


Role = Literal["user", "admin"]


class AccountUpdate(Struct, forbid_unknown_fields=True):
    """An administrator's change to an account: its roles, whether it may sign in."""

    roles: Annotated[list[Role], Meta(min_length=1, max_length=2)] | None = None
    is_active: bool | None = None


class AccountCreate(Struct, forbid_unknown_fields=True):
    """An account a platform administrator creates."""

    email: Email
    password: Password
    first_name: Name | None = None
    last_name: Name | None = None


class UserRead(Struct):
    id: uuid.UUID
    email: str
    first_name: str | None
    last_name: str | None
    roles: list[str]
    tenant_id: uuid.UUID | None  # the organisation last made active (sign-ins start there)
    is_active: bool
    email_verified: bool
    created_at: datetime
    last_login_at: datetime | None


class TokenResponse(Struct):
    user: UserRead
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a token type, not a secret


class VerifyResponse(Struct):
    valid: bool
    claims: dict[str, Any]


class SessionRead(Struct):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool


class SessionList(Struct):
    sessions: list[SessionRead]


class JWKSResponse(Struct):
    keys: list[dict[str, Any]]


def user_read(user: Any) -> UserRead:
    return msgspec.convert(user, UserRead, from_attributes=True)


SecondFactorCode = Annotated[
    str, Meta(min_length=1, max_length=64, description="The authenticator's 6-digit code, or a recovery code")
]


class EnrolledTokenResponse(TokenResponse, kw_only=True):
    """A sign-in that enrolled the second factor its organisation requires: the pair and the
    authenticator's ten recovery codes, shown once."""

    recovery_codes: list[str]


class MfaEnrolRequest(Struct):
    challenge: OpaqueToken


class MfaRequiredResponse(Struct):
    """The password was right and the account has two-factor on: no tokens yet; send a code with
    the challenge to ``POST /login/mfa`` within ``expires_in`` seconds."""

    challenge: str
    expires_in: int
    mfa_required: bool = True


class MfaLoginRequest(Struct):
    challenge: OpaqueToken
    code: SecondFactorCode


class TwoFactorEnrolRequest(Struct):
    password: Password


class TwoFactorEnrolment(Struct):
    """Shown once: the secret for manual entry, the otpauth:// URI and a QR code (PNG data URI) of it."""

    secret: str
    otpauth_uri: str
    qr_code: str


class TwoFactorConfirmRequest(Struct):
    code: SecondFactorCode


class RecoveryCodes(Struct):
    """Shown once: each code signs in once in place of an authenticator code."""

    recovery_codes: list[str]


class TwoFactorProofRequest(Struct):
    """The password and a code (or a recovery code): what turning two-factor off or renewing the
    recovery codes asks for."""

    password: Password
    code: SecondFactorCode


class TwoFactorStatus(Struct):
    enabled: bool
    pending: bool
    recovery_codes_left: int
