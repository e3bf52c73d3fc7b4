"""API gateway (port 8080): routing, JWT validation, rate limiting, proxying. Built in its own issue."""

import shared  # noqa: F401 - first: the kernel keeps unused library extras out (shared/__init__.py)
