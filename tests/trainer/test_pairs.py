"""build-pairs end to end on small synthetic studies: pairs, splits, bad inputs, duplicates, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.nifti_io import read_nifti, write_nifti
from appliance.ontology import ORGAN_NAMES, organ
from trainer.pairs import PairDataset, build_pairs
from trainer.pairs.build import patient_and_split
from trainer.synth.output import write_study
from trainer.synth.study import generate_study

REPO = Path(__file__).resolve().parents[2]
N_GOOD = 6


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    findings = [["hepatic_steatosis"], [], ["splenomegaly", "renal_cyst"], None, ["hepatic_steatosis", "ascites"], None]
    for i in range(N_GOOD):  # 96x96x64 analytic phantoms (train seed 3, one val and one test seed)
        seed = {4: 1500, 5: 2500}.get(i, 3)
        st = generate_study("analytic", seed, i, findings=findings[i])
        write_study(st, root / f"study_{i:02d}", dicom=False)
    bad = {
        "bad_no_findings": "TECHNIQUE: CT of the abdomen.\n\nIMPRESSION: No acute abnormality. The liver is normal.\n",
        "bad_german": "BEFUND: Die Leber ist normal gross. Keine fokale Laesion. Milz unauffaellig. Nieren beidseits "
                      "ohne Befund.\n",
    }
    for name, text in bad.items():
        shutil.copytree(root / "study_01", root / name)
        (root / name / "report.txt").write_text(text)
    shutil.copytree(root / "study_01", root / "bad_empty_labels")
    lab = read_nifti(root / "bad_empty_labels" / "labels.nii.gz")
    write_nifti(lab.with_array(np.zeros(lab.shape, np.uint8)), root / "bad_empty_labels" / "labels.nii.gz")
    shutil.copytree(root / "study_01", root / "bad_no_organs")  # only a class that is none of our organs (trachea)
    arr = np.zeros(lab.shape, np.uint8)
    arr[10:20, 40:50, 40:50] = 16
    write_nifti(lab.with_array(arr), root / "bad_no_organs" / "labels.nii.gz")
    shutil.copytree(root / "study_01", root / "bad_unreadable")
    (root / "bad_unreadable" / "ct.nii.gz").write_bytes(b"this is not a NIfTI file")
    shutil.copytree(root / "study_00", root / "study_00_copy")  # exact duplicate image
    return root


def _rows(ds_path: Path) -> dict:
    """Index content without run ids, timings or absolute paths (what must be equal across runs)."""
    con = sqlite3.connect(ds_path / "index.sqlite")
    out = {
        "studies": sorted(con.execute("SELECT study_key, patient, kind, seed, split, status, reason, image_hash,"
                                      " duplicate_of, n_crops, n_sentences, n_pairs, truth, npz FROM studies")),
        "crops": sorted(con.execute("SELECT study_key, organ, status, volume_ml, voxel_count, shape, stored"
                                    " FROM crops")),
        "sentences": sorted(con.execute("SELECT study_key, idx, text, organ, polarity, finding, synthetic"
                                        " FROM sentences")),
        "pairs": sorted(con.execute("SELECT c.study_key, c.organ, t.idx, p.kind FROM pairs p JOIN crops c"
                                    " USING(crop_id) JOIN sentences t USING(sentence_id)")),
        "labels": sorted(con.execute("SELECT * FROM labels")),
    }
    con.close()
    return out


@pytest.fixture(scope="module")
def built(studies, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ds") / "pairs"
    summary = build_pairs(studies, out, workers=1, progress=False)
    return out, summary


def test_statuses_reasons_and_duplicates(built):
    out, summary = built
    assert summary["processed"] == N_GOOD + 6 and summary["ok"] == N_GOOD
    assert summary["unusable"] == 5 and summary["duplicate"] == 1
    with PairDataset(out) as ds:
        st = {r["study_key"]: r for r in ds.studies()}
        assert st["study_00_copy"]["status"] == "duplicate" and st["study_00_copy"]["duplicate_of"] == "study_00"
        reasons = {k: st[k]["reason"] for k in st if k.startswith("bad_")}
        assert "FINDINGS" in reasons["bad_no_findings"]
        assert "English" in reasons["bad_german"] or "english" in reasons["bad_german"].lower()
        assert reasons["bad_empty_labels"] == "empty label map"
        assert reasons["bad_no_organs"] == "segmentation found no ontology organs"
        assert reasons["bad_unreadable"].startswith("unreadable image")
        assert all(st[k]["status"] == "unusable" for k in reasons)
        # every unusable study is logged with its reason; no crops, sentences or npz for them
        logged = {r["study_key"] for r in ds.log() if r["level"] == "warning"}
        assert set(reasons) | {"study_00_copy"} <= logged
        assert not ds.con.execute("SELECT COUNT(*) FROM crops WHERE study_key LIKE 'bad_%'").fetchone()[0]
        assert sorted(p.name for p in (out / "crops").iterdir()) == [f"study_{i:02d}.npz" for i in range(N_GOOD)]


def test_splits_come_from_truth(built):
    out, _ = built
    with PairDataset(out) as ds:
        split = {r["study_key"]: r["split"] for r in ds.studies(status="ok")}
    assert split == {"study_00": "train", "study_01": "train", "study_02": "train", "study_03": "train",
                     "study_04": "val", "study_05": "test"}
    assert patient_and_split({"kind": "real-backed", "source": "ts_dicom_series"}) == ("B", "test")
    assert patient_and_split({"kind": "real-backed", "source": "ts_upper_abdomen"}) == ("A", "train")
    # the training patient's scan with validation seeds: thresholds may be picked on it; a test seed never tests it
    assert patient_and_split({"kind": "real-backed", "source": "ts_upper_abdomen", "seed": 1003}) == ("A", "val")
    assert patient_and_split({"kind": "real-backed", "source": "ts_upper_abdomen", "seed": 2003}) == ("A", "train")
    assert patient_and_split({"kind": "real-backed", "source": "ts_dicom_series", "seed": 1003}) == ("B", "test")
    assert patient_and_split({"kind": "real-backed", "source": "x", "source_patient": "B"}) == ("B", "test")
    assert patient_and_split({"kind": "analytic", "seed": 999}) == ("synthetic", "train")
    assert patient_and_split(None) == (None, "unassigned")


def test_crops_pairs_and_query(built):
    out, _ = built
    with PairDataset(out) as ds:
        hits = ds.query(organ="liver", finding="hepatic_steatosis", polarity="positive")
        assert {r["study_key"] for r in hits} == {"study_00", "study_04"}
        assert all("steatosis" in r["text"].lower() or "fatty" in r["text"].lower() for r in hits)
        liver = ds.crops(organ="liver", status=None)
        assert len(liver) == N_GOOD
        img, mask = ds.load_crop(liver[0]["crop_id"])
        assert img.dtype == np.float32 and mask.dtype == np.uint8
        assert img.shape == tuple(organ("liver").crop.shape) == mask.shape
        assert 0.0 <= img.min() and img.max() <= 1.0 and mask.any()
        # every stored crop has at least one pair; organs with positive sentences pair only with those
        for study in ds.studies(status="ok"):
            key = study["study_key"]
            labels = ds.organ_labels(key)
            assert set(labels) == set(ORGAN_NAMES)
            stored = {r["organ"]: r["crop_id"] for r in ds.con.execute(
                "SELECT organ, crop_id FROM crops WHERE study_key=? AND stored=1", (key,))}
            pairs = ds.con.execute("SELECT c.organ, p.kind, t.polarity FROM pairs p JOIN crops c USING(crop_id)"
                                   " JOIN sentences t USING(sentence_id) WHERE c.study_key=?", (key,)).fetchall()
            paired = {}
            for o, kind, pol in pairs:
                paired.setdefault(o, set()).add(kind)
                assert (kind, pol) in (("positive", "positive"), ("normal", "normal"))
            assert set(paired) == set(stored)
            assert all(len(k) == 1 for k in paired.values())
        truth = ds.organ_labels("study_02")
        assert truth["spleen"]["abnormal"] and truth["spleen"]["findings"] == ["splenomegaly"]
        assert truth["kidneys"]["findings"] == ["renal_cyst"] and not truth["liver"]["abnormal"]
        # a normal study pairs every organ with normal statements; synthetic ones only where the report has none
        kinds = {r["kind"] for r in ds.pairs() if r["study_key"] == "study_01"}
        assert kinds == {"normal"}
        syn = ds.sentences(study_key="study_01")
        assert all(s["polarity"] == "normal" for s in syn if s["synthetic"])


def test_pairs_query_cli(built, capsys):
    from trainer.pairs.cli import query_main
    out, _ = built
    assert query_main([str(out), "--organ", "liver", "--finding", "hepatic_steatosis", "--polarity", "positive",
                       "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["study_key"] for r in rows} == {"study_00", "study_04"}


def test_resume_after_sigkill_equals_uninterrupted_run(studies, built, tmp_path):
    ref, _ = built
    out = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from trainer.pairs import build_pairs; "
            f"build_pairs({str(studies)!r}, {str(out)!r}, workers=1, progress=False)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    db = out / "index.sqlite"
    deadline = time.time() + 60
    n = 0
    while time.time() < deadline and proc.poll() is None:  # kill once a few studies are committed, mid-run
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=1)
                n = con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                n = 0
            if n >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    done_before = con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
    con.close()
    assert 3 <= done_before < N_GOOD + 6
    summary = build_pairs(studies, out, workers=2, progress=False)  # restart, now with a process pool
    assert summary["already_done"] == done_before
    assert summary["processed"] == N_GOOD + 6 - done_before
    assert _rows(out) == _rows(ref)  # no duplicate, nothing lost, same content
    for f in sorted((ref / "crops").iterdir()):
        with np.load(f) as a, np.load(out / "crops" / f.name) as b:
            assert sorted(a.files) == sorted(b.files)
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not list((out / "crops").glob(".*.tmp"))
    again = build_pairs(studies, out, workers=1, progress=False)  # a third run has nothing to do
    assert again["processed"] == 0 and _rows(out) == _rows(ref)


def test_crop_bank_is_the_same_loaded_by_one_process_or_several(built):
    """The training bank (encoder inputs, measurements, texts, labels) does not depend on how many processes decode
    and measure the crops, and keeps the dataset's crop order."""
    from trainer.model.data import from_pairs
    out, _ = built
    splits = ("train", "val", "test")
    one = from_pairs(out, (16, 32, 32), splits=splits, with_labels=True, measurements=True, workers=1)
    two = from_pairs(out, (16, 32, 32), splits=splits, with_labels=True, measurements=True, workers=2)
    assert len(one) == len(two) > 16 and {"train", "val", "test"} <= set(one.split)
    for name in ("organ", "study", "split", "texts", "key", "labels"):
        assert getattr(one, name) == getattr(two, name), name
    assert all(a.dtype == np.float16 and np.array_equal(a, b) for a, b in zip(one.x, two.x))
    assert all(np.array_equal(a, b) for a, b in zip(one.m, two.m))
    from trainer.pairs.dataset import USABLE
    with PairDataset(out) as ds:  # bank order = the dataset's crop order, split by split
        expected = [(r["study_key"], r["organ"]) for s in splits for r in ds.crops(split=s, status=USABLE)]
    from appliance.ontology import ORGANS
    assert [(s, ORGANS[o].name) for s, o in zip(two.study, two.organ)] == expected


def test_a_damaged_crop_file_stops_the_bank_with_the_study_named(built, tmp_path):
    """A crop file damaged after build-pairs: loading a bank (in worker processes too) stops with an error naming the
    file and the study, and reading it changes nothing on disk."""
    from appliance.errors import TotalFMError
    from trainer.model.data import from_pairs
    src, _ = built
    out = tmp_path / "pairs"
    shutil.copytree(src, out)
    victim = sorted((out / "crops").glob("*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated
    before = {p.name: p.read_bytes() for p in (out / "crops").glob("*.npz")}
    for workers in (1, 2):
        with pytest.raises(TotalFMError, match=f"study {victim.stem} cannot be read"):
            from_pairs(out, (16, 32, 32), splits=("train", "val", "test"), measurements=True, workers=workers)
    assert {p.name: p.read_bytes() for p in (out / "crops").glob("*.npz")} == before
