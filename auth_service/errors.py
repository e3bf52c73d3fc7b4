"""The auth service's domain errors and their status codes."""

from shared.errors import Conflict, NotFound, TooManyRequests, Unauthorized, Unprocessable


class EmailTaken(Conflict):
    code = "email-taken"

    def __init__(self) -> None:
        super().__init__("An account with this email already exists.")


class InvalidCredentials(Unauthorized):
    code = "invalid-credentials"

    def __init__(self) -> None:
        super().__init__("Invalid email or password.")


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


class AccountNotFound(NotFound):
    code = "account-not-found"

    def __init__(self) -> None:
        super().__init__("No such account.")
