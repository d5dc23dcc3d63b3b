"""`totalfm analyze` on the shared DICOM series and on a synthetic NIfTI study: prints organs, findings with score vs
threshold and the draft; stores rows (a second run is version 2 of the same study)."""

import json

import pytest

from appliance.cli import main
from tests.appliance.pipeline_support import dicom_series, untrained_bundle  # noqa: F401


def test_analyze_dicom_prints_and_stores(untrained_bundle, dicom_series, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    args = ["analyze", str(dicom_series), "--bundle", str(untrained_bundle), "--db", db, "--llm", "off",
            "--threads", "1", "--results", str(tmp_path / "res")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Organs:" in out and "Findings (score vs threshold):" in out and " / 0.500" in out
    assert out.count("AI DRAFT for radiologist review - not a diagnosis") >= 2
    assert "analysis version 1" in out and "Timings (s): load" in out
    assert main(args + ["--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["analysis_version"] == 2 and len(js["organs"]) == 16 and js["backend"] == "onnxruntime-cpu"
    assert js["report"]["model_ids"]["draft_source"] == "template"
    from appliance.store import open_store
    s = open_store(db)
    assert s.latest_analysis(js["study_uid"])[1] == 2
    s.close()


def test_analyze_nifti(untrained_bundle, tmp_path, capsys):
    pytest.importorskip("torch")
    from appliance.nifti_io import write_nifti
    from trainer.synth.study import generate_study

    st = generate_study("analytic", seed=2001, index=0, findings=["gallstones"])
    write_nifti(st.image, tmp_path / "ct.nii.gz")
    assert main(["analyze", str(tmp_path / "ct.nii.gz"), "--bundle", str(untrained_bundle), "--db",
                 f"sqlite:///{tmp_path / 'a.db'}", "--llm", "off", "--json", "--results", str(tmp_path / "r")]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["series_uid"] is None or js["series_uid"].startswith("2.25.")
    assert js["artifacts"]["labels"].endswith("labels.nii.gz")


def test_analyze_bad_input_is_a_clear_error(untrained_bundle, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a CT")
    rc = main(["analyze", str(tmp_path), "--bundle", str(untrained_bundle), "--db", f"sqlite:///{tmp_path / 'a.db'}",
               "--llm", "off"])
    assert rc != 0 and "no DICOM files found" in capsys.readouterr().err
