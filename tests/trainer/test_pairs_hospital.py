"""A hospital's own studies (DICOM + report, no truth.json) in build-pairs: split by patient, never by study, with the
PatientID kept out of the index; their report labels are the evaluation truth; the held-out shares cannot change on
a resume."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest

from appliance.errors import TotalFMError
from trainer.pairs import PairDataset, build_pairs
from trainer.pairs.build import patient_pseudonym, pseudonym_split
from trainer.synth.output import write_study
from trainer.synth.study import generate_study

PATIENTS = {"study_a1": "MRN-0042", "study_a2": "MRN-0042", "study_b": "MRN-7777", "study_none": ""}


def _set_patient(dicom_dir: Path, pid: str) -> None:
    for f in dicom_dir.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientID = pid
        ds.save_as(f)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    """Four studies as a PACS export would give them: dicom/ + report.txt (+ the label map the 'labels' segmenter
    reads, standing in for TotalSegmentator); no truth.json, no NIfTI image."""
    root = tmp_path_factory.mktemp("hospital")
    for i, (name, pid) in enumerate(PATIENTS.items()):
        d = root / name
        write_study(generate_study("analytic", 7, i, findings=[["hepatic_steatosis"], [], ["splenomegaly"], []][i]), d)
        (d / "truth.json").unlink()
        (d / "ct.nii.gz").unlink()
        _set_patient(d / "dicom", pid)
    return root


def test_hospital_studies_are_split_by_patient_and_the_id_stays_out_of_the_index(hospital, tmp_path):
    out = tmp_path / "pairs"
    s = build_pairs(hospital, out, workers=1, progress=False, holdout=(0.3, 0.3))
    assert s["ok"] == 4
    with PairDataset(out) as ds:
        st = {r["study_key"]: r for r in ds.studies()}
        a1, a2, b, none = (st[k] for k in PATIENTS)
        assert a1["patient"] == a2["patient"] != b["patient"] and a1["patient"].startswith("p-")
        assert a1["split"] == a2["split"]  # one patient, one side
        for r in (a1, a2, b):
            assert r["split"] in ("train", "val", "test") and r["kind"] == "real"
            assert r["split"] == pseudonym_split(r["patient"], 0.3, 0.3)
        assert none["patient"] is None and none["split"] == "unassigned"
        assert any("no DICOM PatientID" in r["message"] for r in ds.log("study_none"))
        labels = ds.organ_labels("study_a1")  # the report is the truth for these studies
        assert labels["liver"]["source"] == "report" and labels["liver"]["findings"] == ["hepatic_steatosis"]
    raw = b"".join(p.read_bytes() for p in out.glob("index.sqlite*"))
    assert b"MRN-0042" not in raw and b"MRN-7777" not in raw

    # the shares are fixed at creation: a resume with others is refused before anything is processed
    shutil.copytree(hospital / "study_b", hospital / "study_b2")
    try:
        with pytest.raises(TotalFMError, match="could move a patient across splits"):
            build_pairs(hospital, out, workers=1, progress=False, holdout=(0.1, 0.1))
        assert build_pairs(hospital, out, workers=1, progress=False)["duplicate"] == 1  # same shares: goes on
    finally:
        shutil.rmtree(hospital / "study_b2")


def test_pseudonyms_are_keyed_and_the_split_shares_hold():
    k1, k2 = "00" * 32, "11" * 32
    assert patient_pseudonym("MRN-1", k1) == patient_pseudonym("MRN-1", k1) != patient_pseudonym("MRN-1", k2)
    splits = [pseudonym_split(patient_pseudonym(f"MRN-{i}", k1), 0.1, 0.2) for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02 and abs(share["train"] - 0.7) < 0.02
    with sqlite3.connect(":memory:") as con:  # shares that leave no patient for training are refused
        from trainer.pairs.build import _holdout
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        with pytest.raises(TotalFMError, match="leave some patients for training"):
            _holdout(con, (0.5, 0.5))
        assert np.isclose(_holdout(con, None)[1], 0.1)
