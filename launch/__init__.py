"""Launchers: the demo, reproduction, benchmarks and sweeps (run from the repository root)."""
