"""`totalfm export seg`: a retrained segmenter into an existing bundle (export/seg_swap.py,
export.bundle_build.replace_segmentation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.bundle import load_bundle, sha256_file
from appliance.errors import TotalFMError
from export.bundle_build import update_manifest
from export.seg_swap import main
from trainer.segmentation.unet import build, save_checkpoint

BUNDLE = Path(__file__).resolve().parents[2] / "appliance" / "default_bundle"


@pytest.fixture
def bundle_copy(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root)
    (root / "tensorrt").mkdir()
    for name in ("segmentation", "organ_encoder"):  # stand-in engines: only the segmenter's must go
        (root / "tensorrt" / f"{name}.plan").write_bytes(b"not a real engine")

    def add_engines(m):
        m["tensorrt"] = {f"{n}@H200@trt10": {"file": f"tensorrt/{n}.plan", "model": n, "gpu": "H200",
                                              "tensorrt_version": "10"} for n in ("segmentation", "organ_encoder")}

    update_manifest(root, add_engines)
    return root


def _checkpoint(path, metrics):
    torch.manual_seed(3)
    model = build({"channels": [4, 8, 8, 8]})  # another architecture than the shipped one: the contract is I/O
    pre = dict(load_bundle(BUNDLE).model("segmentation").preprocessing)
    return save_checkpoint(path, model, pre, metrics), model


def test_a_retrained_segmenter_replaces_the_bundles_and_nothing_else(bundle_copy, tmp_path):
    before = load_bundle(bundle_copy)
    kept = {rel: sha256_file(bundle_copy / rel) for rel in ("models/organ_encoder.onnx",
                                                              "prompts/prompt_embeddings.npy")}
    ckpt, model = _checkpoint(tmp_path / "seg.pt", {"dice": {"real patient B": {"liver": {"mean_dice": 0.9}}}})
    assert main(["--seg", str(ckpt), "--into", str(bundle_copy)]) == 0

    after = load_bundle(bundle_copy)  # hashes verified by the appliance's loader
    assert after.bundle_id.startswith(before.bundle_id + "-seg-")
    prov = after.provenance
    assert prov["segmentation_replaced"]["previous_bundle_id"] == before.bundle_id
    assert prov["metrics"]["segmentation"]["dice"]["real patient B"]["liver"]["mean_dice"] == 0.9
    assert prov["parity"]["segmentation"]["ok"] and prov["segmentation_checkpoint"] == str(ckpt)
    assert {rel: sha256_file(bundle_copy / rel) for rel in kept} == kept
    assert after.findings == before.findings and after.logit_scale == before.logit_scale
    # the old segmenter's engine is gone with its file; the encoder's stays
    assert [e.model for e in after.engines()] == ["organ_encoder"]
    assert not (bundle_copy / "tensorrt" / "segmentation.plan").exists()
    # the graph in the bundle is the new model
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(0, 1, (1, 1, 32, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(after.model("segmentation").path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {"image": x})[0] - want).max() < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "seg.pt"]  # no work or retired copies left


def test_a_checkpoint_without_held_out_dice_is_refused_and_the_bundle_untouched(bundle_copy, tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "seg.pt", {})
    manifest = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(TotalFMError, match="seg-eval"):
        main(["--seg", str(ckpt), "--into", str(bundle_copy)])
    assert (bundle_copy / "manifest.json").read_bytes() == manifest
    assert json.loads(manifest)["bundle_id"] == load_bundle(bundle_copy).bundle_id


def test_a_failed_export_leaves_the_old_bundle_whole(bundle_copy, tmp_path, monkeypatch):
    ckpt, _ = _checkpoint(tmp_path / "seg.pt", {"dice": {}})
    files = {p.relative_to(bundle_copy): p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()}

    def fail(results):
        raise TotalFMError("parity not met (forced)")

    monkeypatch.setattr("export.bundle_build._parity.require", fail)
    with pytest.raises(TotalFMError, match="forced"):
        main(["--seg", str(ckpt), "--into", str(bundle_copy)])
    assert {p.relative_to(bundle_copy): p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "seg.pt"]
