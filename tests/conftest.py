"""Shared fixtures: the real-data folder (skipped when absent) and tiny helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("RECSYS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project root; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real public data sets are not part of the repo)")
    return SHARED_DATA
