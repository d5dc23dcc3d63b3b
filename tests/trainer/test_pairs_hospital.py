"""A hospital's own studies (DICOM + report, no truth.json) in build-pairs: split by patient, never by study, with the
PatientID kept out of the index; their report labels are the evaluation truth; the held-out shares cannot change on
a resume."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

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
    key = (out / "patient.key").read_text().strip()  # the dataset's own key: beside the index, not in it
    assert key.encode() not in raw and (out / "patient.key").stat().st_mode & 0o077 == 0

    # the shares are fixed at creation: a resume with others is refused before anything is processed
    shutil.copytree(hospital / "study_b", hospital / "study_b2")
    try:
        with pytest.raises(TotalFMError, match="could move a patient across splits"):
            build_pairs(hospital, out, workers=1, progress=False, holdout=(0.1, 0.1))
        assert build_pairs(hospital, out, workers=1, progress=False)["duplicate"] == 1  # same shares: goes on
    finally:
        shutil.rmtree(hospital / "study_b2")


def test_a_damaged_truth_json_leaves_the_study_unassigned_even_with_a_patient_id(hospital, tmp_path):
    """A synthetic study whose truth.json cannot be read is not mistaken for a hospital study: its PatientID must not
    place it (the log says 'split unassigned', and that must be what happens)."""
    shutil.copytree(hospital / "study_b", tmp_path / "studies" / "study_badtruth")
    (tmp_path / "studies" / "study_badtruth" / "truth.json").write_text("{not json")
    assert build_pairs(tmp_path / "studies", tmp_path / "pairs", workers=1, progress=False)["ok"] == 1
    with PairDataset(tmp_path / "pairs") as ds:
        (row,) = ds.studies()
        assert (row["split"], row["patient"]) == ("unassigned", None)
        assert any("truth.json unreadable" in r["message"] for r in ds.log("study_badtruth"))


def test_pseudonyms_are_keyed_and_the_split_shares_hold():
    k1, k2 = "00" * 32, "11" * 32
    assert patient_pseudonym("MRN-1", k1) == patient_pseudonym("MRN-1", k1) != patient_pseudonym("MRN-1", k2)
    splits = [pseudonym_split(patient_pseudonym(f"MRN-{i}", k1), 0.1, 0.2) for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02 and abs(share["train"] - 0.7) < 0.02

def test_holdout_shares_must_leave_training_patients_and_a_lost_key_is_refused(tmp_path):
    from trainer.pairs.build import _holdout
    with sqlite3.connect(":memory:") as con:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        with pytest.raises(TotalFMError, match="leave some patients for training"):
            _holdout(con, (0.5, 0.5), tmp_path / "k")
        key, val, test = _holdout(con, None, tmp_path / "k")
        assert (val, test) == (0.1, 0.1) and _holdout(con, None, tmp_path / "k") == (key, val, test)
        (tmp_path / "k").unlink()  # the dataset's key is gone: a new one would re-split its patients
        with pytest.raises(TotalFMError, match="another patient key"):
            _holdout(con, None, tmp_path / "k")
    (tmp_path / "bad").write_text("not hex")
    with pytest.raises(TotalFMError, match="not a patient key"):
        _holdout(sqlite3.connect(":memory:"), None, tmp_path / "bad")


def test_a_synthetic_only_dataset_gets_no_patient_key_until_a_hospital_study_comes(hospital, tmp_path):
    """The key is a secret to keep; a dataset of phantoms (every study has truth.json) has no patient to pseudonymise.
    Once a hospital study is added, the resume creates and records the key like a first run."""
    studies = tmp_path / "studies"
    write_study(generate_study("analytic", 7, 9, findings=[]), studies / "phantom", dicom=False)
    out = tmp_path / "pairs"
    assert build_pairs(studies, out, workers=1, progress=False)["ok"] == 1
    assert not (out / "patient.key").exists()
    shutil.copytree(hospital / "study_b", studies / "study_b")
    assert build_pairs(studies, out, workers=1, progress=False)["ok"] == 1
    assert (out / "patient.key").exists()
    with PairDataset(out) as ds:
        assert {r["study_key"]: r["kind"] for r in ds.studies()} == {"phantom": "analytic", "study_b": "real"}
    (out / "patient.key").unlink()  # from now on the dataset is bound to that key, even with nothing left to do
    with pytest.raises(TotalFMError, match="another patient key"):
        build_pairs(studies, out, workers=1, progress=False)


KEY = "5e" * 32  # a site key written by the test, so it can pick PatientIDs whose split it knows


def _pids_by_split(n_each: int, val: float, test: float) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    i = 0
    while min(len(v) for v in out.values()) < n_each:
        pid = f"MRN-{i:05d}"
        s = pseudonym_split(patient_pseudonym(pid, KEY), val, test)
        if len(out[s]) < n_each:
            out[s].append(pid)
        i += 1
    return out


def test_the_site_key_keeps_splits_across_rebuilds_and_the_retraining_path_runs(tmp_path):
    """build-pairs on a PACS-style export with the site's key -> `train contrastive` on its train patients ->
    `train eval` on its val/test patients, whose truth is their reports."""
    (tmp_path / "site.key").write_text(KEY + "\n")
    pids = _pids_by_split(2, 0.25, 0.25)
    export = tmp_path / "export"
    findings = [["hepatic_steatosis"], ["splenomegaly"], ["renal_cyst"], []]
    for split, ids in pids.items():
        for j, pid in enumerate(ids):
            d = export / f"{split}_{j}"
            write_study(generate_study("analytic", 11, len(list(export.glob("*"))) if export.exists() else 0,
                                       findings=findings[(j + len(split)) % 4]), d)
            (d / "truth.json").unlink()
            (d / "ct.nii.gz").unlink()
            _set_patient(d / "dicom", pid)
    a = build_pairs(export, tmp_path / "a", workers=1, progress=False, holdout=(0.25, 0.25),
                    patient_key=tmp_path / "site.key")
    b = build_pairs(export, tmp_path / "b", workers=1, progress=False, holdout=(0.25, 0.25),
                    patient_key=tmp_path / "site.key")
    c = build_pairs(export, tmp_path / "c", workers=1, progress=False, holdout=(0.25, 0.25))
    assert a["ok"] == b["ok"] == c["ok"] == 6
    rows = {}
    for name in "abc":
        with PairDataset(tmp_path / name) as ds:
            rows[name] = {r["study_key"]: (r["patient"], r["split"]) for r in ds.studies()}
    assert rows["a"] == rows["b"]  # same site key: same pseudonyms, same sides
    assert {k: s for k, (_, s) in rows["a"].items()} == {k: k.split("_")[0] for k in rows["a"]}
    assert {p for p, _ in rows["c"].values()}.isdisjoint({p for p, _ in rows["a"].values()})  # own key otherwise
    other = tmp_path / "other.key"
    other.write_text("ab" * 32)
    with pytest.raises(TotalFMError, match="another patient key"):
        build_pairs(export, tmp_path / "a", workers=1, progress=False, patient_key=other)

    from trainer.evaluate.cli import main as eval_main
    from trainer.model.contrastive import main as train_main
    (tmp_path / "r.toml").write_text(
        'name = "t"\n[model]\nsize = "tiny"\ninput_shape = [8, 32, 32]\ntubelet = [4, 8, 8]\ndim = 32\ndepth = 1\n'
        'heads = 2\nembed_dim = 32\nstem = "conv"\npool = "mean_max"\nmeasurements = true\nfusion = "sum"\n'
        '[contrastive]\nbatch_size = 8\nlr = 1e-3\nmeasurement_warmup_steps = 2\n')
    assert train_main(["--recipe", str(tmp_path / "r.toml"), "--pairs", str(tmp_path / "a"), "--out",
                       str(tmp_path / "run"), "--steps", "2", "--threads", "1", "--init", "scratch"]) == 0
    summary = json.loads((tmp_path / "run" / "contrastive_summary.json").read_text())
    from trainer.pairs.dataset import USABLE
    with PairDataset(tmp_path / "a") as ds:
        n_train_crops = len(ds.crops(split="train", status=USABLE))
    assert summary["crops"] == n_train_crops > 0  # the train patients' crops, and only those
    assert eval_main(["--checkpoint", str(tmp_path / "run" / "final.pt"), "--pairs", str(tmp_path / "a"), "--out",
                      str(tmp_path / "eval"), "--bootstrap", "0", "--threads", "1", "--no-plots"]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["n_studies"] == {"val": 2, "test": 2}
