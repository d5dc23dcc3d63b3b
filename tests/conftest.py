"""Shared test fixtures. The shared real CT data is found via TOTALFM_SHARED_DATA or ../shared/data; inside CI
(CI=true) its absence is a failure, never a skip (shared/data/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("TOTALFM_SHARED_DATA")
    p = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return p if (p / "real-ct").is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    p = shared_data_dir()
    if p is None:
        msg = "shared real CT data not found (set TOTALFM_SHARED_DATA or place it at ../shared/data)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def real_ct(shared_data) -> Path:
    return shared_data / "real-ct"
