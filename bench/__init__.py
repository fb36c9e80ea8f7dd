"""Benchmarks, load generation and test doubles for the router, grouped by role (README: Layout)."""

from pathlib import Path

# The repository root: where subprocesses start (`python -m router`, `python -m bench...`).
ROOT = Path(__file__).resolve().parent.parent
