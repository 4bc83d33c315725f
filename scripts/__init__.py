"""One-off and maintenance scripts; run them as modules from the repository root: `python -m scripts.NAME`."""
