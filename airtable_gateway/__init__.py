"""Airtable gateway (port 8003): a cached, rate-limit-safe proxy to the Airtable Web API, and a
local Airtable emulator (``airtable_gateway.emulator``)."""
