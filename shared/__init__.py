"""The kernel every PyAirtable service installs: settings, HTTP defaults, database, security, events."""
