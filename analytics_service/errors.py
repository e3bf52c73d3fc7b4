"""The analytics service's domain errors and their status codes."""

from shared.errors import Forbidden, ProblemError, Unprocessable
from shared.security import OrganizationManagersOnly as OrganizationManagersOnly
from shared.security import OrganizationNotFound as OrganizationNotFound


class BatchTooLarge(ProblemError):
    status_code = 413
    code = "batch-too-large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"A batch holds at most {limit} items.")


class NotYourData(Forbidden):
    code = "not-your-data"

    def __init__(self, what: str = "usage") -> None:
        super().__init__(f"Only administrators may see or write another user's {what}.")


class AdminOnly(Forbidden):
    code = "admin-only"
    detail = "The admin role is required."


class InvalidQuery(Unprocessable):
    code = "invalid-query"


class EventRejected(Unprocessable):
    code = "event-rejected"


class InvalidCursor(ProblemError):
    code = "invalid-cursor"
    detail = "The cursor is not one this route gave."
