"""Airtable gateway (port 8003): a cached, rate-limit-safe proxy to the Airtable Web API, and a
local Airtable emulator (``airtable_gateway.emulator``)."""

import shared  # noqa: F401 - first: the kernel keeps unused library extras out (shared/__init__.py)
