"""Benchmarks: ratios measured side by side in one run, never timing assertions in tests/."""
