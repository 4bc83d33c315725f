"""Benchmarks that print tables; run them as modules from the repository root: `python -m benchmarks.NAME`."""
