"""One-off studies and diagnostics: each answers a question docs/findings.md records, with the command that reproduces it."""
