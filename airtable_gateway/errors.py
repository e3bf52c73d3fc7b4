"""The Airtable gateway's errors and their status codes.

Airtable's own errors keep their status (a 5xx becomes 502) and carry Airtable's
``error: {type, message}`` inside the problem document, so Airtable clients that read
``error.type`` still find it.
"""

from typing import Any

import msgspec
from litestar import Request, Response

from airtable_gateway.cache import StaleAllowed
from shared.errors import (
    PROBLEM_MEDIA_TYPE,
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    ProblemError,
    ServiceUnavailable,
    problem_for_exception,
)
from shared.http import ensure_request_id
from shared.logs import request_id_var


class AirtableErrorBody(msgspec.Struct):
    type: str
    message: str | None = None


class AirtableProblem(Problem, omit_defaults=True):
    error: AirtableErrorBody | None = None


class AirtableError(ProblemError):
    """An error answered by Airtable, passed on with its status and ``error.type``."""

    def __init__(
        self, status: int, error_type: str, message: str | None, headers: dict[str, str] | None = None
    ) -> None:
        code = "airtable-" + error_type.lower().replace("_", "-")
        super().__init__(message or f"Airtable answered {status} {error_type}.", code=code, headers=headers)
        self.status_code = status if status < 500 else 502
        self.airtable_error = AirtableErrorBody(type=error_type, message=message)


class AirtableServerError(AirtableError, StaleAllowed):
    """Airtable failed (5xx) even after the retries allowed for the request."""


class AirtableUnavailable(ProblemError, StaleAllowed):
    status_code = 502
    code = "airtable-unavailable"
    detail = "Airtable could not be reached."


class AirtableTimeout(ProblemError, StaleAllowed):
    status_code = 504
    code = "airtable-timeout"
    detail = "Airtable did not answer in time."


class QueueRefusal(ServiceUnavailable, StaleAllowed):
    """A request Airtable's rate limits leave no turn for: try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after=retry_after)


class QueueTimeout(QueueRefusal):
    """The request's turn under Airtable's rate limits would come after its deadline."""

    code = "airtable-rate-limited"
    detail = "Airtable's rate limit for this base is in use; try again later."


class AirtablePaused(QueueTimeout):
    """The base is paused after an Airtable 429: a read the cache cannot answer is refused at once,
    for the whole pause, rather than queued behind it."""

    detail = "Airtable asked for a pause on this base; try again after Retry-After."


class FairShareExceeded(QueueRefusal):
    """The caller already holds their share of the base's queue: their surplus is refused so that
    others never wait behind it."""

    code = "airtable-fair-share"
    detail = "You have as many requests waiting for this base as one user may; try again later."


class DatabaseUnavailable(ServiceUnavailable):
    code = "database-unavailable"
    retry_after = 2


class StoredTokenUnavailable(DatabaseUnavailable, StaleAllowed):
    """The caller's own Airtable token is in the database, which cannot be read now: cached
    reads still answer, anything that must reach Airtable cannot."""

    detail = "Your Airtable token is stored in a database that is unavailable; try again shortly."


class BaseNotAllowed(Forbidden):
    code = "base-not-allowed"
    detail = "This base is not on the platform's allow-list."


class BaseNotGranted(Forbidden):
    """The platform's token reaches a base only for organisations granted it (``base_grants``)."""

    code = "base-not-granted"
    detail = (
        "Your active organisation has no grant for this base on the platform's Airtable token;"
        " a platform administrator can grant it (or use your own Airtable token: PUT /token)."
    )


class BaseReadOnly(Forbidden):
    code = "base-read-only"
    detail = "Your active organisation may read this base, not change it (a read grant)."


class ReadOnlyRole(Forbidden):
    code = "read-only-role"
    detail = "Viewers of an organisation may read its Airtable bases, not change them."


class GrantsUnavailable(DatabaseUnavailable):
    """The grants are in a database that cannot be read now, and this process knows no answer:
    deny (never a cached answer without a grant) and say when to retry."""

    detail = "The base grants are stored in a database that is unavailable; try again shortly."


class GrantNotFound(NotFound):
    code = "grant-not-found"
    detail = "This organisation has no grant for this base."


class GrantsNotVisible(Forbidden):
    code = "grants-not-visible"
    detail = "Only platform administrators, and an organisation's owners and admins, see its grants."


class AirtableNotConfigured(ServiceUnavailable):
    code = "airtable-token-missing"
    detail = "No Airtable token: the platform has none (AIRTABLE_TOKEN) and you set none (PUT /token)."


class StoredTokenUnreadable(Conflict):
    """The caller stored a token of their own that no longer decrypts (the encryption key
    changed): never silently replaced by the platform's, which would act with other rights."""

    code = "airtable-token-unreadable"
    detail = (
        "Your stored Airtable token can no longer be read (the platform's encryption key changed):"
        " store it again (PUT /api/v1/airtable/token) or delete it (DELETE /api/v1/airtable/token)."
    )


class UserTokensDisabled(ServiceUnavailable):
    code = "user-tokens-disabled"
    detail = "Personal Airtable tokens need AIRTABLE_TOKEN_ENCRYPTION_KEY, which is not set."


def airtable_error_handler(request: Request[Any, Any, Any], exc: AirtableError) -> Response[AirtableProblem]:
    request_id = request_id_var.get() or ensure_request_id(request.scope)
    problem, headers = problem_for_exception(exc, request_id, request.scope.get("path"))
    body = AirtableProblem(**msgspec.structs.asdict(problem), error=exc.airtable_error)
    return Response(body, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {AirtableError: airtable_error_handler}
