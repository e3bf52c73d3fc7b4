"""The gateway's own errors, all in the platform's problem+json shape."""

from typing import ClassVar

from shared.errors import BadRequest, ProblemError, TooManyRequests


class BadPath(BadRequest):
    code = "ambiguous-path"
    detail = "The request path is not in canonical form."


class RepeatedHeader(BadRequest):
    code = "repeated-header"

    def __init__(self, name: str) -> None:
        super().__init__(f"The {name} header may appear once.")


class MethodNotAllowed(ProblemError):
    status_code = 405
    code = "method-not-allowed"

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"{method} is not served here.", headers={"Allow": allowed})


class PayloadTooLarge(ProblemError):
    status_code = 413
    code = "payload-too-large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than {limit} bytes.")


class BodyTimeout(ProblemError):
    status_code = 408
    code = "request-timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The request body stopped arriving (nothing for {seconds:g} s).", headers={"Connection": "close"}
        )


class UpstreamProblem(ProblemError):
    """A failure of the upstream service ``name``, which the ``template`` of the detail names."""

    template: ClassVar[str]

    def __init__(self, name: str, retry_after: int | None = None) -> None:
        super().__init__(self.template.format(name=name), retry_after=retry_after)


class UpstreamUnavailable(UpstreamProblem):
    status_code = 502
    code = "upstream-unavailable"
    template = "The {name} service could not be reached."


class UpstreamTimeout(UpstreamProblem):
    status_code = 504
    code = "upstream-timeout"
    template = "The {name} service did not answer in time."


class CircuitOpen(UpstreamProblem):
    """The service's breaker is open: ``retry_after`` is when it lets a call through again."""

    status_code = 503
    code = "upstream-circuit-open"
    template = "The {name} service is failing; requests are paused briefly."


class QuotaExceeded(TooManyRequests):
    code = "quota-exceeded"

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("Too many requests; slow down.", headers=headers)


class CORSRefused(ProblemError):
    status_code = 403
    code = "cors-refused"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The cross-origin request is not allowed ({reason}).")


class InvalidIdempotencyKey(BadRequest):
    code = "invalid-idempotency-key"
    detail = "Idempotency-Key must be 1 to 255 visible ASCII characters."


class IdempotencyKeyInUse(ProblemError):
    status_code = 409
    code = "idempotency-key-in-use"
    detail = "A request with this Idempotency-Key is still being answered."
    retry_after = 1


class IdempotencyKeyReused(ProblemError):
    status_code = 422
    code = "idempotency-key-reused"
    detail = "This Idempotency-Key was used with a different request."
