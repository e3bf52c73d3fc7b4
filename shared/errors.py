"""One error shape for every 4xx/5xx: RFC 9457 problem+json with the request ID."""

import logging
import math
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    ValidationException,
)
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_422_UNPROCESSABLE_ENTITY, HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import DataError, IntegrityError

from shared.http import ensure_request_id
from shared.logs import request_id_var, stack_without_messages

PROBLEM_MEDIA_TYPE = "application/problem+json"
logger = logging.getLogger("shared.errors")

_CODES_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "too-many-requests",
    500: "internal-error",
    502: "bad-gateway",
    503: "service-unavailable",
    504: "gateway-timeout",
}


class Problem(msgspec.Struct, omit_defaults=True):
    """The body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(HTTPException):
    """A domain error with a stable machine-readable ``code``.

    A subclass declares its ``status_code`` and ``code``, and its ``detail`` where it always says
    the same thing (Litestar's exceptions take a class-level ``detail`` as their default).
    """

    status_code = 400
    code = "bad-request"
    retry_after: int | None = None
    """Seconds until the request may succeed, sent as ``Retry-After``: fixed by a subclass or
    given by the raiser (rounded up to whole seconds, at least 1)."""

    def __init__(
        self,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if retry_after is not None:
            self.retry_after = max(1, math.ceil(retry_after))
        if self.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(self.retry_after)}
        super().__init__(detail=detail, headers=headers, status_code=status_code or self.status_code)
        if code:
            self.code = code


class BadRequest(ProblemError):
    status_code = 400
    code = "bad-request"


class Unauthorized(ProblemError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ProblemError):
    status_code = 403
    code = "forbidden"


class NotFound(ProblemError):
    status_code = 404
    code = "not-found"


class Conflict(ProblemError):
    status_code = 409
    code = "conflict"


class Unprocessable(ProblemError):
    status_code = 422
    code = "validation-error"


class TooManyRequests(ProblemError):
    status_code = 429
    code = "too-many-requests"


class ServiceUnavailable(ProblemError):
    status_code = 503
    code = "service-unavailable"


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> Response[Problem]:
    code = code or _CODES_BY_STATUS.get(status, "error")
    problem = Problem(
        type=f"/problems/{code}",
        title=_title(status),
        status=status,
        detail=detail,
        code=code,
        request_id=request_id_var.get() or ensure_request_id(request.scope),
        instance=request.scope.get("path"),
        errors=errors,
    )
    return Response(problem, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_for_exception(
    exc: HTTPException, request_id: str | None, instance: str | None
) -> tuple[Problem, dict[str, str]]:
    """The problem document and headers for an HTTP exception (also used outside Litestar handlers)."""
    status = exc.status_code
    headers = dict(exc.headers or {})
    errors = None
    code = getattr(exc, "code", None) if isinstance(exc, ProblemError) else None
    detail = exc.detail
    if isinstance(exc, ValidationException):
        # Request bodies and parameters that fail their schema: one 422 for all of them.
        status, code = HTTP_422_UNPROCESSABLE_ENTITY, "validation-error"
        errors = [_field_error(item) for item in exc.extra] if isinstance(exc.extra, list) else None
        detail = _validation_detail(exc.detail, errors)
    elif isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
    if status >= 500 and not isinstance(exc, ProblemError):
        detail = _title(status)
    code = code or _CODES_BY_STATUS.get(status, "error")
    problem = Problem(
        type=f"/problems/{code}",
        title=_title(status),
        status=status,
        detail=detail or _title(status),
        code=code,
        request_id=request_id,
        instance=instance,
        errors=errors,
    )
    return problem, headers


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    request_id = request_id_var.get() or ensure_request_id(request.scope)
    problem, headers = problem_for_exception(exc, request_id, request.scope.get("path"))
    return Response(problem, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_error(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return {k: v for k, v in item.items() if k in ("message", "key", "source")}
    return {"message": str(item)}


def _validation_detail(detail: str, errors: list[dict[str, Any]] | None) -> str:
    if errors:
        first = errors[0]
        where = f" ({first['key']})" if first.get("key") else ""
        return f"{first.get('message', 'invalid value')}{where}"
    return detail or "The request is not valid."


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A 500: logged with the request ID (the log line carries it), the route and where it failed,
    and nothing of the request's data: exception messages (which may quote a value, an SQL
    statement's parameters, a token) are left out, only their types and stack frames kept."""
    logger.error(
        "unhandled error",
        extra={"route": _route_of(request), "error": type(exc).__name__, "stack": stack_without_messages(exc)},
    )
    return problem_response(request, HTTP_500_INTERNAL_SERVER_ERROR, "An unexpected error occurred.")


def _route_of(request: Request[Any, Any, Any]) -> str | None:
    """The route's template (``/api/v1/users/{user_id:uuid}``), not the path a client filled in."""
    template: str | None = request.scope.get("path_template")
    return template


def unstorable_value_handler(request: Request[Any, Any, Any], exc: DataError) -> Response[Problem]:
    """A value the database refuses (too long, out of range, text it cannot hold) came from the
    client: a 422, never a 500. The driver's message, which may quote the value, is not logged."""
    logger.warning("the database refused a value", extra={"route": _route_of(request), **_sqlstate(exc)})
    return problem_response(
        request, HTTP_422_UNPROCESSABLE_ENTITY, "A value is not one the service can store.", code="unstorable-value"
    )


def constraint_conflict_handler(request: Request[Any, Any, Any], exc: IntegrityError) -> Response[Problem]:
    """A constraint the request broke (a duplicate that a concurrent request created first, a
    reference to a row just deleted) is a 409 the client can act on, not a 500."""
    logger.warning("a database constraint refused a change", extra={"route": _route_of(request), **_sqlstate(exc)})
    return problem_response(request, HTTP_409_CONFLICT, "The change conflicts with the current state.")


def _sqlstate(exc: DataError | IntegrityError) -> dict[str, Any]:
    """The error's SQLSTATE and constraint name (codes, never values) where the driver gives them."""
    diag = getattr(exc.orig, "diag", None)
    return {
        "error": type(exc.orig).__name__,
        "sqlstate": getattr(exc.orig, "sqlstate", None),
        "constraint": getattr(diag, "constraint_name", None),
    }


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    HTTPException: http_exception_handler,
    DataError: unstorable_value_handler,
    IntegrityError: constraint_conflict_handler,
    Exception: internal_error_handler,
}
