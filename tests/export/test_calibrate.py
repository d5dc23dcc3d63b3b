"""`totalfm export calibrate`: a bundle's finding thresholds re-picked on a pair dataset's validation split, through
the bundle's own ONNX graphs; the models stay byte for byte, the bundle gets a new id and records what changed."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from appliance.errors import TotalFMError
from trainer.evaluate.zeroshot import NEVER_POSITIVE
from trainer.pairs import build_pairs
from trainer.synth.output import write_study
from trainer.synth.study import generate_study

REPO = Path(__file__).resolve().parents[2]
FINDINGS = [["hepatic_steatosis", "renal_cyst"], ["splenomegaly"], [], ["hepatic_steatosis"], ["renal_cyst", "ascites"],
            ["splenomegaly", "hepatic_steatosis"]]


def _pairs(root: Path, seeds: list[int]) -> Path:
    for i, seed in enumerate(seeds):  # analytic phantoms: seeds 1000-1999 are validation, >= 2000 test
        write_study(generate_study("analytic", seed, i, findings=FINDINGS[i % len(FINDINGS)]),
                    root / "studies" / f"study_{i:02d}", dicom=False)
    build_pairs(root / "studies", root / "pairs", workers=1, progress=False)
    return root / "pairs"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    return {"both": _pairs(root / "both", [1000, 1001, 1002, 2000, 2001, 2002]),
            "val_only": _pairs(root / "val_only", [1003])}


def _hashes(bundle: Path) -> dict:
    return {p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def test_calibrate_repicks_thresholds_keeps_the_models_and_gives_a_new_id(data, tmp_path, capsys):
    from export.calibrate import calibrate_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "appliance" / "default_bundle", bundle)
    before, models = load_bundle(bundle), _hashes(bundle)
    manifest_bytes = (bundle / "manifest.json").read_bytes()

    dry = calibrate_bundle(str(bundle), str(data["both"]), threads=1, bootstrap=0, dry_run=True, log=lambda s: None)
    assert dry["manifest"] is None and (bundle / "manifest.json").read_bytes() == manifest_bytes
    assert dry["changed"], "six phantoms pick other thresholds than the shipped 96 validation studies"

    r = calibrate_bundle(str(bundle), str(data["both"]), threads=1, bootstrap=0, log=lambda s: None)
    after = load_bundle(bundle)  # the appliance's own loader accepts it
    assert r["thresholds"] == dry["thresholds"]  # the same data, the same thresholds
    assert {f.name: f.threshold for f in after.findings} == r["thresholds"]
    assert after.bundle_id.startswith(before.bundle_id + "-cal-")
    assert _hashes(bundle) == models  # no graph, prompt table or tokenizer touched
    cal = after.provenance["calibration"]
    assert (cal["n_val"], cal["n_test"], cal["previous_bundle_id"]) == (3, 3, before.bundle_id)
    assert cal["changed"] == {k: [a, b] for k, (a, b) in r["changed"].items()}
    for name, src in cal["threshold_source"].items():  # never-called findings carry the threshold no score reaches
        assert (r["thresholds"][name] == NEVER_POSITIVE) == (src in ("uninformative_on_val", "imprecise_on_val",
                                                                     "no_val_positive", "no_callable_finding")), name
    # the <organ>_abnormal findings move to this software's rule (the organ's evidence), with their prompt threshold
    organ_rule = {f.name: f for f in after.findings if f.score == "organ"}
    assert set(organ_rule) == {f.name for f in before.findings if f.name.endswith("_abnormal")}
    assert cal["changed_score_rules"] == {n: [b.score, "organ"] for n in organ_rule
                                          for b in before.findings if b.name == n and b.score != "organ"}
    assert all(f.prompt_threshold is not None and f.threshold in (0.5, NEVER_POSITIVE) for f in organ_rule.values())
    # every prompt threshold that moved is recorded with its old and new value (old None: it had no organ rule)
    old_prompt = {f.name: f.prompt_threshold for f in before.findings}
    assert cal["changed_prompt_thresholds"] == {n: [old_prompt[n], f.prompt_threshold] for n, f in organ_rule.items()
                                                if f.prompt_threshold != old_prompt[n]} == \
        {k: list(v) for k, v in r["changed_prompt"].items()}
    assert cal["changed_prompt_thresholds"]
    assert after.provenance["metrics"]["encoder"]["data"] == f"pairs:{data['both']}"
    assert not list(tmp_path.glob(".bundle-*")) and not list(tmp_path.glob(".bundle.old-*"))  # no leftovers
    from export.verify import main as verify
    capsys.readouterr()
    assert verify([str(bundle)]) == 0
    shown = json.loads(capsys.readouterr().out)["thresholds_calibrated"]
    assert shown == {"data": f"pairs:{data['both']}", "n_val": 3, "n_test": 3, "previous_bundle_id": before.bundle_id}

    again = calibrate_bundle(str(bundle), str(data["both"]), threads=1, bootstrap=0, log=lambda s: None)
    assert again["changed"] == {} and again["changed_rules"] == {} and again["manifest"] is None
    assert load_bundle(bundle).bundle_id == after.bundle_id
    kept = calibrate_bundle(str(bundle), str(data["both"]), threads=1, bootstrap=0, dry_run=True,
                            keep_score_rules=True, log=lambda s: None)
    assert kept["changed_rules"] == {}  # the stored rules are kept on request


def test_calibrate_refuses_a_dataset_without_test_studies_and_leaves_the_bundle(data, tmp_path):
    from export.calibrate import calibrate_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "appliance" / "default_bundle", bundle)
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    with pytest.raises(TotalFMError, match="1 validation and 0 test studies"):
        calibrate_bundle(str(bundle), str(data["val_only"]), threads=1, bootstrap=0, log=lambda s: None)
    assert (bundle / "manifest.json").read_bytes() == manifest_bytes


def test_replace_thresholds_refuses_an_organ_rule_without_its_prompt_threshold_and_leaves_the_bundle(tmp_path):
    """A finding moved to rule "organ" needs the threshold of its own prompts; without it (or for a finding the bundle
    does not have) nothing is written."""
    from export.bundle_build import replace_thresholds

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "appliance" / "default_bundle", bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    for r in m["findings"]:  # an older bundle: its generic findings on the prompt pair
        if r["name"] == "liver_abnormal":
            r["score"] = "pair"
            r.pop("prompt_threshold", None)
    (bundle / "manifest.json").write_text(json.dumps(m))
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="liver_abnormal: rule 'organ' needs its prompt threshold"):
        replace_thresholds(bundle, {}, calibration={}, metrics={}, score_rules={"liver_abnormal": "organ"})
    with pytest.raises(ValueError, match="findings the bundle does not have: no_such_finding"):
        replace_thresholds(bundle, {}, calibration={}, metrics={}, prompt_thresholds={"no_such_finding": 0.5})
    assert (bundle / "manifest.json").read_bytes() == manifest_bytes
    assert not list(tmp_path.glob(".bundle-*"))
