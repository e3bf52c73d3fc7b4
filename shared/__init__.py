"""The kernel every PyAirtable service installs: settings, HTTP defaults, database, security, events.

Importing it marks two modules absent for the whole process: extras that libraries load only
because they are installed, and that no process of the platform runs. Every package of the
platform imports ``shared`` first (its ``__init__``), so the marks come before those libraries.
"""

import sys

_NEVER_RUN = (
    # httpx's package imports its command-line client when click, rich and pygments are
    # installed, and Litestar installs them: 80 modules and 6 MB where only ``httpx.AsyncClient``
    # is used. ``httpx.main`` falls back to its stub.
    "httpx._main",
    # redis-py imports OpenTelemetry's metrics SDK whenever it is installed, for observability
    # hooks of its own that the platform never turns on (its metrics are Prometheus'): 41 modules
    # and 2 MB. redis-py goes on without them; traces need only the SDK's tracing part.
    "opentelemetry.sdk.metrics",
)
for _module in _NEVER_RUN:
    sys.modules.setdefault(_module, None)  # type: ignore[arg-type]
