"""User service (port 8002): profiles, preferences and user admin at /api/v1/users."""

import shared  # noqa: F401 - first: the kernel keeps unused library extras out (shared/__init__.py)
