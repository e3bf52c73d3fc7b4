"""The analytics service's domain errors and their status codes."""

from shared.errors import Forbidden, NotFound, ProblemError, Unprocessable


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

    def __init__(self) -> None:
        super().__init__("The admin role is required.")


class InvalidQuery(Unprocessable):
    code = "invalid-query"


class EventRejected(Unprocessable):
    code = "event-rejected"


class OrganizationManagersOnly(Forbidden):
    code = "organization-managers-only"

    def __init__(self) -> None:
        super().__init__("Only the organisation's owners and admins may see this.")


class OrganizationNotFound(NotFound):
    """Also the answer for an organisation that is not the caller's active one (no existence leak)."""

    code = "organization-not-found"

    def __init__(self) -> None:
        super().__init__("No such organisation among yours: switch to it first.")


class InvalidCursor(ProblemError):
    code = "invalid-cursor"

    def __init__(self) -> None:
        super().__init__("The cursor is not one this route gave.")
