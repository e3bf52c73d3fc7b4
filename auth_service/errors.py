"""The auth service's domain errors and their status codes."""

from shared.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ProblemError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)


class EmailTaken(Conflict):
    code = "email-taken"

    def __init__(self) -> None:
        super().__init__("An account with this email already exists.")


INVALID_CREDENTIALS = "Invalid email or password."


class InvalidCredentials(Unauthorized):
    code = "invalid-credentials"

    def __init__(self) -> None:
        super().__init__(INVALID_CREDENTIALS)


class InvalidGrant(Unauthorized):
    code = "invalid_grant"

    def __init__(self) -> None:
        super().__init__("The refresh token is invalid, expired or revoked.")


class WeakPassword(Unprocessable):
    code = "weak-password"


class InvalidEmail(Unprocessable):
    code = "invalid-email"

    def __init__(self) -> None:
        super().__init__("The email address is not valid.")


class SessionNotFound(NotFound):
    code = "session-not-found"

    def __init__(self) -> None:
        super().__init__("No such session.")


class TooManyAttempts(TooManyRequests):
    code = "too-many-attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many attempts; try again later.", headers={"Retry-After": str(max(1, retry_after))})


class AccountLocked(TooManyRequests):
    """A locked account, or one whose password is being verified for another request.

    The wrong-password answer but for the status and ``Retry-After`` (RELIABILITY B5): it says
    nothing about the password it did not check, nor whether the account exists.
    """

    code = InvalidCredentials.code

    def __init__(self, retry_after: int) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(INVALID_CREDENTIALS, headers={"Retry-After": str(self.retry_after)})


class AccountNotFound(NotFound):
    code = "account-not-found"

    def __init__(self) -> None:
        super().__init__("No such account.")


class InvalidLinkToken(ProblemError):
    """A reset or verification token that is unknown, expired, used, or made void since."""

    status_code = 400
    code = "invalid-token"

    def __init__(self) -> None:
        super().__init__("The link is invalid, has expired or has been used; ask for a new one.")


class EmailUnverified(Forbidden):
    code = "email-unverified"

    def __init__(self) -> None:
        super().__init__("Confirm your email address first: open the link we sent, or ask for a new one.")


class InvalidCode(Unauthorized):
    """A second-factor code that is wrong, expired, already used, or not the account's."""

    code = "invalid-code"

    def __init__(self) -> None:
        super().__init__("The code is not valid.")


class InvalidChallenge(Unauthorized):
    code = "invalid-challenge"

    def __init__(self) -> None:
        super().__init__("The sign-in challenge is invalid, has expired or has been used; sign in again.")


class TwoFactorEnabled(Conflict):
    code = "two-factor-enabled"

    def __init__(self) -> None:
        super().__init__("Two-factor sign-in is already on; turn it off first to enrol another authenticator.")


class TwoFactorNotEnabled(Conflict):
    code = "two-factor-not-enabled"

    def __init__(self, detail: str = "Two-factor sign-in is not on for this account.") -> None:
        super().__init__(detail)


class TwoFactorUnavailable(ServiceUnavailable):
    """Production without TOTP_ENCRYPTION_KEY: no secret can be stored or read."""

    code = "two-factor-unavailable"

    def __init__(self) -> None:
        super().__init__("Two-factor sign-in is not configured on this server.", headers={"Retry-After": "3600"})


class OrganizationNotFound(NotFound):
    """Also the answer for an organisation the caller does not belong to: it is never revealed."""

    code = "organization-not-found"

    def __init__(self) -> None:
        super().__init__("No such organisation.")


class MemberNotFound(NotFound):
    code = "member-not-found"

    def __init__(self) -> None:
        super().__init__("No such member of this organisation.")


class InvitationNotFound(NotFound):
    code = "invitation-not-found"

    def __init__(self) -> None:
        super().__init__("No such pending invitation.")


class OrgRoleRequired(Forbidden):
    code = "org-role-required"

    def __init__(self, detail: str = "Your role in this organisation does not allow this.") -> None:
        super().__init__(detail)


class LastOwner(Conflict):
    code = "last-owner"

    def __init__(self) -> None:
        super().__init__("An organisation keeps at least one owner: make another member owner first.")


class AlreadyMember(Conflict):
    code = "already-member"

    def __init__(self) -> None:
        super().__init__("This address belongs to a member of the organisation already.")


class InvalidInvitation(ProblemError):
    """An invitation token that is unknown, expired, revoked or used: one answer for all."""

    status_code = 400
    code = "invalid-invitation"

    def __init__(self) -> None:
        super().__init__("The invitation is invalid, has expired, was revoked or has been used.")


class InvitationEmailMismatch(Forbidden):
    code = "invitation-email-mismatch"

    def __init__(self) -> None:
        super().__init__("The invitation was sent to another address (or yours is not verified yet).")


class SignupClosed(Forbidden):
    code = "signup-closed"

    def __init__(self) -> None:
        super().__init__("Registration needs an invitation on this server.")


class TwoFactorRequired(Forbidden):
    code = "two-factor-required"

    def __init__(self) -> None:
        super().__init__("This organisation requires two-factor sign-in: turn it on first.")


class TwoFactorEnrolmentRequired(Forbidden):
    """A right password, but the organisation requires two-factor sign-in and the user has none:
    the answer carries a challenge for ``POST /login/mfa/enroll`` then ``POST /login/mfa``."""

    code = "two-factor-enrolment-required"
    commit_before_answer = True  # the challenge it carries must be stored

    def __init__(self, challenge: str = "", expires_in: int = 0) -> None:
        super().__init__("Your organisation requires two-factor sign-in: enrol an authenticator with this challenge.")
        self.challenge = challenge
        self.expires_in = expires_in
