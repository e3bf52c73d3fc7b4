"""A local Airtable Web API v0 emulator for development and tests (``python -m airtable_gateway emulator``)."""
