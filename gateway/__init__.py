"""API gateway (port 8080): routing, JWT validation, rate limiting, proxying. Built in its own issue."""
