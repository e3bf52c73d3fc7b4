"""Contract fuzzing in-process (RELIABILITY A2), shared by each service's ``test_schema_fuzz.py``.

schemathesis loads a service's own OpenAPI document from the app and sends every operation 25
generated requests that fit the document and 25 that do not, through the ASGI interface (no
socket). It starts the app's lifespan once, in an event loop of its own; ``stop_apps`` ends it.

(schemathesis's pytest plugin, ``schemathesis.pytest.from_fixture``, fails on pytest 9.2, so the
operations are driven here with the strategies it builds for each.)
"""

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from litestar import Litestar
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi
from schemathesis.python.asgi import ASGIClient

SCHEMA_PATH = "/schema/openapi.json"
# No 5xx; every status, content type and body is one the document declares for the operation.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Small and repeatable: the same examples on every run.
FUZZ_SETTINGS = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def client(app: Litestar, headers: dict[str, str] | None = None) -> ASGIClient:
    """A requests session into the app (its lifespan started), sending ``headers`` with every call."""
    session = asgi.get_client(app).__enter__()
    session.headers.update(headers or {})
    return session


def fuzz(app: Litestar, session: ASGIClient, last: tuple[str, ...] = ()) -> list[str]:
    """Every failure found, each naming the operation (e.g. ``POST /api/v1/auth/login (negative)``).

    The operations named in ``last`` (e.g. a sign-out that ends the session's token) run last."""
    schema: Any = schemathesis.openapi.from_asgi(SCHEMA_PATH, app)
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.label in last)
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ_SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def exchange(case: schemathesis.Case) -> None:
                case.call_and_validate(session=session, checks=CHECKS)

            try:
                exchange()
            except Unsatisfiable:
                # Nothing to get wrong: the operation takes no input. A conforming request can always
                # be made, so in positive mode an unsatisfiable strategy is a failure (an operation
                # that would otherwise go unfuzzed silently).
                if mode is GenerationMode.POSITIVE:
                    failures.append(f"{operation.label} (positive): no conforming request could be generated")
            except (Exception, BaseExceptionGroup) as error:  # reported; the other operations still run
                failures.append(f"{operation.label} ({mode.value}): {error}")
    return failures


def stop_apps() -> None:
    """End every app lifespan schemathesis started (before the test's database and Redis keys go)."""
    asgi.shutdown_lifespans()
