"""The README's main job, end to end, as a user runs it: `totalfm demo` on the embedded default bundle (node and
worker as separate processes, the study over DICOM, SR and SEG back to a stand-in PACS)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, shared_data):
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--dir", str(tmp_path / "demo"),
                          "--data-dir", str(shared_data), "--timeout", "540"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "== organs found" in text and "== draft report" in text
    assert "(real-backed phantom)" in text  # the shared data was given: the study is real-backed, and says so
    assert "AI DRAFT for radiologist review" in text
    assert text.count("received ") >= 2  # SR and SEG reached the stand-in PACS
    inbox = sorted(p.name.split("_")[0] for p in (tmp_path / "demo" / "pacs_inbox").iterdir())
    assert inbox == ["SEG", "SR"]


def test_the_demo_says_which_folder_lacked_real_ct_when_it_falls_back(tmp_path, shared_data):
    from appliance.commands.demo import phantom_kind

    assert phantom_kind(shared_data) == ("real-backed", "")
    kind, why = phantom_kind(tmp_path / "no-data")
    assert kind == "analytic"
    assert str((tmp_path / "no-data" / "real-ct").resolve()) in why


def test_the_demo_tells_painted_findings_from_the_real_patients_own(capsys):
    from types import SimpleNamespace as NS

    from appliance.commands.demo import _print_result
    f = lambda name, organ: NS(finding=name, organ=organ, positive=True, score=0.9, threshold=0.5)  # noqa: E731
    result = NS(organs=[], report=None, findings=[f("atherosclerosis", "aorta"), f("liver_lesion", "liver"),
                                                  f("ascites", "liver")])
    truth = {"findings": [{"finding": "liver_lesion", "organ": "liver", "inserted": True},
                          {"finding": "atherosclerosis", "organ": "aorta", "inserted": False,
                           "origin": "source_patient"}, {"finding": "kidney_stone", "organ": "kidneys"}]}
    _print_result(result, truth)
    out = capsys.readouterr().out
    assert "atherosclerosis" in out and "[the real patient's own]" in out
    assert out.count("[inserted]") == 1 and "ascites" in out and "[NOT in the truth (false positive)]" in out
    assert "(atherosclerosis: the real patient's own, not painted in)" in out
    assert "missed by the model: ['kidney_stone']" in out
