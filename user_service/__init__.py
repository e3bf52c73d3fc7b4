"""User service (port 8002): profiles, preferences and user admin at /api/v1/users."""
