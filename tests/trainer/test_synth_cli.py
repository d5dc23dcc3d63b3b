"""`totalfm synth` end to end: files on disk, NIfTI and DICOM read back to the same volume and geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.cli import main as totalfm
from appliance.errors import TotalFMError
from appliance.nifti_io import read_nifti
from trainer.synth.cli import main as synth_main
from trainer.synth.output import write_study
from trainer.synth.study import generate_study


def test_cli_writes_studies_that_read_back(tmp_path):
    rc = totalfm(["synth", "--n", "2", "--kind", "analytic", "--out", str(tmp_path), "--seed", "7",
                  "--size", "64,64,48", "--preview", "--no-dicom", "--phrasing", "heldout"])
    assert rc == 0
    for i in range(2):
        d = tmp_path / f"study_{i:05d}"
        truth = json.loads((d / "truth.json").read_text())
        for key in ("findings", "organ_volumes_ml", "phase", "sex", "seed", "generator_version", "sentences"):
            assert key in truth
        assert truth["seed"] == 7 and truth["index"] == i and truth["phrasing"] == "heldout"
        ref = generate_study("analytic", 7, i, shape=(48, 64, 64), phrasing="heldout")
        img, lab = read_nifti(d / "ct.nii.gz"), read_nifti(d / "labels.nii.gz")
        assert np.array_equal(img.array, ref.image.array) and np.array_equal(lab.array, ref.labels.array)
        assert np.allclose(img.affine(), ref.image.affine(), atol=1e-3)
        assert (d / "report.txt").read_text() == ref.report.text
        from PIL import Image
        with Image.open(d / "preview.png") as im:
            assert im.size[0] > 500 and im.size[1] > 500


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path), "--size", "64,64"])
    for bad in ("6,3", "0,2", "3"):
        with pytest.raises(SystemExit):
            synth_main(["--out", str(tmp_path), "--findings-per-study", bad])
    with pytest.raises(TotalFMError, match="--n"):
        synth_main(["--out", str(tmp_path), "--n", "0"])
    assert totalfm(["synth", "--kind", "real-backed", "--out", str(tmp_path), "--data-dir", str(tmp_path)]) == 1


def test_dicom_series_reads_back_to_the_same_volume(tmp_path):
    from appliance.dicom_io import read_series

    s = generate_study("analytic", 2, 0, shape=(24, 64, 64))
    paths = write_study(s, tmp_path, dicom=True)
    vol = read_series(tmp_path / "dicom")
    assert "skipped" not in paths["dicom"]
    assert vol.shape == s.image.shape
    assert np.allclose(vol.affine(), s.image.affine(), atol=1e-3)
    assert np.array_equal(np.asarray(vol.array).astype(np.int16), s.image.array)


def test_cli_real_backed_with_size(tmp_path, shared_data):
    rc = totalfm(["synth", "--n", "1", "--kind", "real-backed", "--out", str(tmp_path), "--seed", "2",
                  "--size", "80,72,60", "--data-dir", str(shared_data), "--no-dicom"])
    assert rc == 0
    img = read_nifti(tmp_path / "study_00000" / "ct.nii.gz")
    lab = read_nifti(tmp_path / "study_00000" / "labels.nii.gz")
    assert img.shape == (60, 72, 80) and lab.shape == img.shape
    truth = json.loads((tmp_path / "study_00000" / "truth.json").read_text())
    assert truth["kind"] == "real-backed" and truth["source"]


def test_bad_sizes_and_names_give_our_errors():
    from appliance.errors import OntologyError
    with pytest.raises(TotalFMError, match="between 16 and 1024"):
        generate_study("analytic", 0, 0, shape=(4, 64, 64))
    with pytest.raises(TotalFMError, match="spacing"):
        generate_study("analytic", 0, 0, spacing=(0.0, 1.0, 1.0))
    with pytest.raises(OntologyError, match="no insertion method"):
        generate_study("analytic", 0, 0, findings=["appendicitis"])
    with pytest.raises(TotalFMError, match="kind"):
        generate_study("mri", 0, 0)


def test_cli_enriched_plan_writes_that_many_findings(tmp_path):
    assert synth_main(["--out", str(tmp_path), "--n", "3", "--size", "64,64,48", "--no-dicom", "--normal-fraction",
                       "0", "--findings-per-study", "4,4"]) == 0
    for d in sorted(tmp_path.glob("study_*")):
        truth = json.loads((d / "truth.json").read_text())
        # 4 planned; a finding whose organ is outside this small field of view is recorded as not inserted
        assert len(truth["findings"]) + len(truth["not_inserted"]) == 4
        assert len(truth["findings"]) >= 2
