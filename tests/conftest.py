"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The real benchmark folder: $REC_KD_DATA_DIR, else the shared/data folder beside the repo."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = os.environ.get("REC_KD_DATA_DIR", str(default))
    if not os.path.isdir(path):
        pytest.fail(f"benchmark data not found at {path}; set REC_KD_DATA_DIR")
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of the real trainer (CI runs them too)")
