"""User service (port 8002): profiles and user admin. Built in its own issue."""
