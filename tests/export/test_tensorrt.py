"""TensorRT is optional and absent here: clear errors, bundle untouched; engines are keyed and hashed in the manifest."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from export.untrained import build_untrained_bundle

    return build_untrained_bundle(tmp_path_factory.mktemp("t") / "b")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT installed: the missing-TensorRT path cannot be shown")
def test_missing_tensorrt_is_clear_and_changes_nothing(bundle, capsys):
    from appliance.trt_runner import TensorRTUnavailable, TRTRunner
    from export.tensorrt_build import main

    before = (bundle / "manifest.json").read_bytes()
    assert main([str(bundle)]) == 3
    assert "pip install tensorrt-cu12" in capsys.readouterr().out
    assert (bundle / "manifest.json").read_bytes() == before
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        TRTRunner(bundle / "tensorrt" / "x.plan")


def test_engine_entries_are_keyed_and_hashed(bundle, tmp_path):
    from appliance.bundle import BundleError, engine_key, load_bundle
    from export.bundle_build import update_manifest

    b2 = tmp_path / "b"
    shutil.copytree(bundle, b2)
    key = engine_key("organ_encoder", "NVIDIA H200", "10.9.0.34")
    assert key == "organ_encoder@nvidia-h200@trt10.9.0.34"
    (b2 / "tensorrt").mkdir()
    (b2 / "tensorrt" / f"{key}.plan").write_bytes(b"not a real plan")
    update_manifest(b2, lambda m: m["tensorrt"].update({key: {
        "file": f"tensorrt/{key}.plan", "model": "organ_encoder", "gpu": "NVIDIA H200",
        "tensorrt_version": "10.9.0.34", "precision": "fp16", "profiles": {}}}))
    b = load_bundle(b2)
    assert b.engine_for("organ_encoder", "NVIDIA H200", "10.9.0.34").path.name == f"{key}.plan"
    assert b.engine_for("organ_encoder", "NVIDIA A100", "10.9.0.34") is None
    (b2 / "tensorrt" / f"{key}.plan").write_bytes(b"changed")
    with pytest.raises(BundleError, match="tensorrt/organ_encoder@nvidia-h200"):
        load_bundle(b2)
