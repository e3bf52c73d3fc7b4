"""Airtable's error shape: ``{"error": {"type": "...", "message": "..."}}`` with the status Airtable uses."""

from typing import Any

AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED"
MODEL_NOT_FOUND_MESSAGE = (
    "Invalid permissions, or the requested model was not found. Check that both your user and your token have "
    "the required permissions, and that the model names and/or ids are correct."
)
PARAMETER_VALIDATION_MESSAGE = "Invalid request: parameter validation failed. Check your request data."


class AirtableError(Exception):
    """An error answered as Airtable answers it."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.error_type, "message": self.message}}


def not_found() -> AirtableError:
    return AirtableError(404, "NOT_FOUND", "Could not find what you are looking for")


def model_not_found() -> AirtableError:
    return AirtableError(403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", MODEL_NOT_FOUND_MESSAGE)


def record_not_found(record_id: str) -> AirtableError:
    return AirtableError(404, "MODEL_ID_NOT_FOUND", f"Could not find a record with ID {record_id!r}")


def invalid_request(detail: str = "") -> AirtableError:
    message = f"{PARAMETER_VALIDATION_MESSAGE} {detail}".strip()
    return AirtableError(422, "INVALID_REQUEST_UNKNOWN", message)


def invalid_records(message: str) -> AirtableError:
    return AirtableError(422, "INVALID_RECORDS", message)


def unknown_field(name: str) -> AirtableError:
    return AirtableError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')


def invalid_value(field_name: str, detail: str = "cannot accept the provided value") -> AirtableError:
    return AirtableError(422, "INVALID_VALUE_FOR_COLUMN", f'Field "{field_name}" {detail}')


def invalid_formula(detail: str) -> AirtableError:
    return AirtableError(422, "INVALID_FILTER_BY_FORMULA", f"The formula for filtering records is invalid: {detail}")


def too_many_requests() -> AirtableError:
    return AirtableError(429, "TOO_MANY_REQUESTS", "Rate limit exceeded. Please try again later")


def authentication_required() -> AirtableError:
    return AirtableError(401, AUTHENTICATION_REQUIRED, "Authentication required")
