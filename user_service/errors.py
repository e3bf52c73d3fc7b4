"""The user service's domain errors and their status codes."""

from shared.errors import Forbidden, NotFound, Unprocessable


class ProfileNotFound(NotFound):
    """Also the answer for a profile that exists but is not the caller's to see (no existence leak)."""

    code = "user-not-found"

    def __init__(self) -> None:
        super().__init__("No such user.")


class InvalidProfile(Unprocessable):
    code = "validation-error"


class OrganizationNotFound(NotFound):
    """Also the answer for an organisation that is not the caller's active one (no existence leak)."""

    code = "organization-not-found"

    def __init__(self) -> None:
        super().__init__("No such organisation among yours: switch to it first.")


class OrganizationManagersOnly(Forbidden):
    code = "organization-managers-only"

    def __init__(self) -> None:
        super().__init__("Only the organisation's owners and admins may see its members.")
