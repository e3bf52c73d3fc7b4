"""Prometheus metrics of the Airtable gateway (served at /metrics with the service's own)."""

from prometheus_client import Counter, Histogram

CACHE_RESULTS = Counter(
    "pyairtable_airtable_cache_total",
    "Cached reads by result: hit, miss, stale, coalesced (a miss that shared another's upstream call)",
    ["result"],
)
UPSTREAM_REQUESTS = Counter(
    "pyairtable_airtable_upstream_requests_total",
    "Requests sent to Airtable by method and status (0: no response)",
    ["method", "status"],
)
UPSTREAM_THROTTLED = Counter("pyairtable_airtable_upstream_429_total", "Airtable answers 429 (each pauses its base)")
QUEUE_WAIT = Histogram(
    "pyairtable_airtable_queue_wait_seconds",
    "Time a request waited for its upstream slot",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30),
)
QUEUE_TIMEOUTS = Counter(
    "pyairtable_airtable_queue_timeouts_total", "Requests refused because their slot came after the deadline"
)
FAIR_SHARE_REFUSALS = Counter(
    "pyairtable_airtable_fair_share_refusals_total",
    "Requests refused because their user already held their share of the base's queue",
)
PAUSE_REFUSALS = Counter(
    "pyairtable_airtable_pause_refusals_total",
    "Reads refused at once (503) because their base is paused after an Airtable 429",
)
