"""The user service's domain errors and their status codes."""

from shared.errors import NotFound, Unprocessable


class ProfileNotFound(NotFound):
    """Also the answer for a profile that exists but is not the caller's to see (no existence leak)."""

    code = "user-not-found"

    def __init__(self) -> None:
        super().__init__("No such user.")


class InvalidProfile(Unprocessable):
    code = "validation-error"
