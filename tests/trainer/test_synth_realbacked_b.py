"""Patient B (the real DICOM series + its TotalSegmentator labels) as a real-backed phantom source."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.synth import realbacked as rb

try:
    DATA = str(rb.resolve_data_dir(None))
except Exception:  # the shared data folder is not on this machine
    DATA = None
pytestmark = pytest.mark.skipif(DATA is None, reason="shared real CT data not available")
SMALL = (32, 48, 48)


def test_patient_map_and_dicom_source_on_label_grid():
    assert rb.source_patient("ts_abdomen_pelvis") == rb.source_patient("ts_upper_abdomen") == "A"
    assert rb.source_patient("ts_dicom_series") == "B" and rb.source_patient(None) is None
    assert rb.sources_of_patient("B") == ["ts_dicom_series"]
    assert set(rb.sources_of_patient("A")) == {"ts_abdomen_pelvis", "ts_upper_abdomen"}
    ct, seg, phase = rb.load_source(DATA, "ts_dicom_series")
    assert ct.shape == seg.shape == (20, 512, 512) and phase == "portal_venous"
    # the labels sit on the anatomy (a flipped axis would put the liver label on air/fat)
    liver = rb.TS["liver"]
    assert 40 < float(ct.array[seg == liver].mean()) < 200
    assert float(ct.array[seg == 0].mean()) < -300
    with pytest.raises(Exception, match="unknown source patient"):
        rb.sources_of_patient("C")


def test_generate_by_patient_and_default_unchanged():
    from trainer.synth.study import generate_study
    b = generate_study("real-backed", 4, 0, shape=SMALL, source="B", findings=[])
    assert b.truth["source"] == "ts_dicom_series"
    assert b.image.shape == b.labels.shape == SMALL and (b.labels.array == rb.TS["liver"]).any()
    a = generate_study("real-backed", 4, 0, shape=SMALL, source="A", findings=[])
    assert rb.source_patient(a.truth["source"]) == "A"
    # default (no source) is unchanged: a random draw over every available source, deterministic per seed
    d1 = generate_study("real-backed", 4, 1, shape=SMALL, findings=[])
    d2 = generate_study("real-backed", 4, 1, shape=SMALL, findings=[])
    assert d1.truth["source"] in rb.available_sources()
    assert np.array_equal(d1.image.array, d2.image.array) and np.array_equal(d1.labels.array, d2.labels.array)


def test_cli_source_and_truth_source_patient(tmp_path):
    from appliance.errors import TotalFMError
    from trainer.synth.cli import main
    assert main(["--n", "1", "--kind", "real-backed", "--source", "B", "--out", str(tmp_path / "b"), "--size",
                 "48,48,32", "--no-dicom", "--seed", "2"]) == 0
    truth = json.loads((tmp_path / "b" / "study_00000" / "truth.json").read_text())
    assert truth["source"] == "ts_dicom_series" and truth["source_patient"] == "B"
    assert main(["--n", "1", "--kind", "analytic", "--out", str(tmp_path / "a"), "--size", "48,48,32",
                 "--no-dicom"]) == 0
    assert json.loads((tmp_path / "a" / "study_00000" / "truth.json").read_text())["source_patient"] is None
    with pytest.raises(TotalFMError, match="only applies"):
        main(["--n", "1", "--kind", "analytic", "--source", "A", "--out", str(tmp_path / "x")])
