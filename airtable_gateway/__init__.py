"""Airtable gateway (port 8003): cached, rate-limit-aware Airtable proxy and emulator. Built in its own issue."""
