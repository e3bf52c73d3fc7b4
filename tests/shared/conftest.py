"""The kernel is exercised through the auth service, its first user: share its fixtures."""

from tests.auth_service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    auth_app,
    auth_database,
    auth_settings,
    clean_auth_database,
    client,
)
