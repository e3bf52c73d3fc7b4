"""The gateway's own errors, all in the platform's problem+json shape."""

from shared.errors import ProblemError, TooManyRequests


class BadPath(ProblemError):
    status_code = 400
    code = "ambiguous-path"

    def __init__(self) -> None:
        super().__init__("The request path is not in canonical form.")


class RepeatedHeader(ProblemError):
    status_code = 400
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


class UpstreamUnavailable(ProblemError):
    status_code = 502
    code = "upstream-unavailable"

    def __init__(self, name: str) -> None:
        super().__init__(f"The {name} service could not be reached.")


class UpstreamTimeout(ProblemError):
    status_code = 504
    code = "upstream-timeout"

    def __init__(self, name: str) -> None:
        super().__init__(f"The {name} service did not answer in time.")


class CircuitOpen(ProblemError):
    status_code = 503
    code = "upstream-circuit-open"

    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(
            f"The {name} service is failing; requests are paused briefly.", headers={"Retry-After": str(retry_after)}
        )


class QuotaExceeded(TooManyRequests):
    code = "quota-exceeded"

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("Too many requests; slow down.", headers=headers)


class CORSRefused(ProblemError):
    status_code = 403
    code = "cors-refused"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The cross-origin request is not allowed ({reason}).")


class InvalidIdempotencyKey(ProblemError):
    status_code = 400
    code = "invalid-idempotency-key"

    def __init__(self) -> None:
        super().__init__("Idempotency-Key must be 1 to 255 visible ASCII characters.")


class IdempotencyKeyInUse(ProblemError):
    status_code = 409
    code = "idempotency-key-in-use"

    def __init__(self) -> None:
        super().__init__("A request with this Idempotency-Key is still being answered.", headers={"Retry-After": "1"})


class IdempotencyKeyReused(ProblemError):
    status_code = 422
    code = "idempotency-key-reused"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used with a different request.")
