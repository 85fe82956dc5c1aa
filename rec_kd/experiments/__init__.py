"""Runs as records: a workdir read back, results.json, copies kept in docs/results, target groups."""
