"""Analytics service (port 8005): events, metrics, usage and cost. Built in its own issue."""
