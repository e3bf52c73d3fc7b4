"""The analytics service's logic, by concern (no Litestar imports; time from an injected clock):
``events`` (ingestion), ``metrics``, ``reports`` (usage, costs, dashboard, per organisation) and
``audit``; ``common`` holds what they share. The background workers are in ``analytics_service.workers``."""
