"""The auth service's domain errors and their status codes."""

from shared.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)


class EmailTaken(Conflict):
    code = "email-taken"
    detail = "An account with this email already exists."


INVALID_CREDENTIALS = "Invalid email or password."


class InvalidCredentials(Unauthorized):
    code = "invalid-credentials"
    detail = INVALID_CREDENTIALS


class InvalidGrant(Unauthorized):
    code = "invalid_grant"
    detail = "The refresh token is invalid, expired or revoked."


class WeakPassword(Unprocessable):
    code = "weak-password"


class InvalidEmail(Unprocessable):
    code = "invalid-email"
    detail = "The email address is not valid."


class SessionNotFound(NotFound):
    code = "session-not-found"
    detail = "No such session."


class TooManyAttempts(TooManyRequests):
    code = "too-many-attempts"
    detail = "Too many attempts; try again later."

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after=retry_after)


class AccountLocked(TooManyRequests):
    """A locked account, or one whose password is being verified for another request.

    The wrong-password answer but for the status and ``Retry-After`` (RELIABILITY B5): it says
    nothing about the password it did not check, nor whether the account exists.
    """

    code = InvalidCredentials.code
    detail = INVALID_CREDENTIALS
    retry_after: int  # always given

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after=retry_after)


class AccountNotFound(NotFound):
    code = "account-not-found"
    detail = "No such account."


class InvalidLinkToken(BadRequest):
    """A reset or verification token that is unknown, expired, used, or made void since."""

    code = "invalid-token"
    detail = "The link is invalid, has expired or has been used; ask for a new one."


class EmailUnverified(Forbidden):
    code = "email-unverified"
    detail = "Confirm your email address first: open the link we sent, or ask for a new one."


class InvalidCode(Unauthorized):
    """A second-factor code that is wrong, expired, already used, or not the account's."""

    code = "invalid-code"
    detail = "The code is not valid."


class InvalidChallenge(Unauthorized):
    code = "invalid-challenge"
    detail = "The sign-in challenge is invalid, has expired or has been used; sign in again."


class TwoFactorEnabled(Conflict):
    code = "two-factor-enabled"
    detail = "Two-factor sign-in is already on; turn it off first to enrol another authenticator."


class TwoFactorNotEnabled(Conflict):
    code = "two-factor-not-enabled"
    detail = "Two-factor sign-in is not on for this account."


class TwoFactorUnavailable(ServiceUnavailable):
    """Production without TOTP_ENCRYPTION_KEY: no secret can be stored or read."""

    code = "two-factor-unavailable"
    detail = "Two-factor sign-in is not configured on this server."
    retry_after = 3600


class OrganizationNotFound(NotFound):
    """Also the answer for an organisation the caller does not belong to: it is never revealed."""

    code = "organization-not-found"
    detail = "No such organisation."


class MemberNotFound(NotFound):
    code = "member-not-found"
    detail = "No such member of this organisation."


class InvitationNotFound(NotFound):
    code = "invitation-not-found"
    detail = "No such pending invitation."


class OrgRoleRequired(Forbidden):
    code = "org-role-required"
    detail = "Your role in this organisation does not allow this."


class LastOwner(Conflict):
    code = "last-owner"
    detail = "An organisation keeps at least one owner: make another member owner first."


class AlreadyMember(Conflict):
    code = "already-member"
    detail = "This address belongs to a member of the organisation already."


class InvalidInvitation(BadRequest):
    """An invitation token that is unknown, expired, revoked or used: one answer for all."""

    code = "invalid-invitation"
    detail = "The invitation is invalid, has expired, was revoked or has been used."


class InvitationEmailMismatch(Forbidden):
    code = "invitation-email-mismatch"
    detail = "The invitation was sent to another address (or yours is not verified yet)."


class SignupClosed(Forbidden):
    code = "signup-closed"
    detail = "Registration needs an invitation on this server."


class TwoFactorRequired(Forbidden):
    code = "two-factor-required"
    detail = "This organisation requires two-factor sign-in: turn it on first."


class TwoFactorEnrolmentRequired(Forbidden):
    """A right password, but the organisation requires two-factor sign-in and the user has none:
    the answer carries a challenge for ``POST /login/mfa/enroll`` then ``POST /login/mfa``."""

    code = "two-factor-enrolment-required"
    detail = "Your organisation requires two-factor sign-in: enrol an authenticator with this challenge."
    commit_before_answer = True  # the challenge it carries must be stored

    def __init__(self, challenge: str = "", expires_in: int = 0) -> None:
        super().__init__()
        self.challenge = challenge
        self.expires_in = expires_in
