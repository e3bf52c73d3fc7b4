"""Analytics service (port 8005): events, metrics, usage and cost. Built in its own issue."""

import shared  # noqa: F401 - first: the kernel keeps unused library extras out (shared/__init__.py)
