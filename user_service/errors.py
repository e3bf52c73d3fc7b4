"""The user service's domain errors and their status codes."""

from shared.errors import NotFound, Unprocessable
from shared.security import OrganizationManagersOnly as ManagersOnly
from shared.security import OrganizationNotFound as OrganizationNotFound


class ProfileNotFound(NotFound):
    """Also the answer for a profile that exists but is not the caller's to see (no existence leak)."""

    code = "user-not-found"
    detail = "No such user."


class InvalidProfile(Unprocessable):
    code = "validation-error"


class OrganizationManagersOnly(ManagersOnly):
    detail = "Only the organisation's owners and admins may see its members."
