"""Shared fixtures for the pipeline/worker/analyze/query tests: the untrained plumbing bundle (random networks with
the real bundle contracts, built once per session by the exporter's own code) and the shared real DICOM series."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    p = Path(os.environ.get("TOTALFM_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not p.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing at {p}")
        pytest.skip(f"shared data missing at {p}")
    return p


@pytest.fixture(scope="session")
def untrained_bundle(tmp_path_factory):
    pytest.importorskip("torch")  # the exporter needs torch; the appliance under test does not
    from export.untrained import build_untrained_bundle

    return build_untrained_bundle(tmp_path_factory.mktemp("bundle") / "untrained")


@pytest.fixture(scope="session")
def pipeline(untrained_bundle):
    from appliance.pipeline import Pipeline

    return Pipeline(untrained_bundle, backend="cpu", threads=1, llm="off")


@pytest.fixture(scope="session")
def dicom_series():
    return shared_data() / "real-ct" / "ts_dicom_series" / "dicom"
