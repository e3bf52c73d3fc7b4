"""Airtable gateway (port 8003): a cached, rate-limit-safe proxy to the Airtable Web API, and a
local Airtable emulator (``airtable_gateway.emulator``)."""

import sys

# httpx's package imports its command-line client when click, rich and pygments are installed, and
# Litestar installs them: 80 modules and 6 MB in a service that only needs ``httpx.AsyncClient``.
# Marked as absent before anything here imports httpx, ``httpx.main`` falls back to its stub.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
