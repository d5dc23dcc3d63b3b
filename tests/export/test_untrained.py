"""The untrained bundle: real ONNX files with the spec's I/O contracts, dynamic batch, small and quick."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def test_untrained_bundle_contract_and_size(tmp_path):
    import onnxruntime as ort

    from appliance.bundle import load_bundle
    from export.untrained import build_untrained_bundle

    t0 = time.perf_counter()
    root = build_untrained_bundle(tmp_path / "u")
    assert time.perf_counter() - t0 < 30
    assert sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) < 5e6
    b = load_bundle(root)
    for batch in (1, 3):  # dynamic batch
        enc = ort.InferenceSession(str(b.model("organ_encoder").path))
        e = enc.run(None, {"crop": np.random.rand(batch, 1, 32, 64, 64).astype(np.float32),
                           "organ_index": np.arange(batch, dtype=np.int64)})[0]
        assert e.shape == (batch, 32) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
        seg = ort.InferenceSession(str(b.model("segmentation").path))
        lg = seg.run(None, {"image": np.zeros((batch, 1, 32, 64, 64), np.float32)})[0]
        assert lg.shape == (batch, 17, 32, 64, 64)
    par = b.provenance["parity"]
    assert par["organ_encoder"]["ok"] and par["segmentation"]["value"] >= 0.999
    # prompt embeddings are what the shipped text graph + tokenizer produce (same space as free-text queries)
    from export.bundle_build import load_tokenizer, text_embeddings

    txt = b.model("text_encoder")
    tok = load_tokenizer(b.root / txt.extra["tokenizer"], txt.extra["max_length"])
    f = b.findings[0]
    again = text_embeddings(ort.InferenceSession(str(txt.path)), tok, f.positive_prompts)
    assert np.allclose(again, b.prompt_embeddings[f.pos_index], atol=1e-5)


def test_refuses_non_empty_out(tmp_path):
    from export.untrained import build_untrained_bundle

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("1")
    with pytest.raises(FileExistsError):
        build_untrained_bundle(tmp_path / "x")
    assert (tmp_path / "x" / "keep").exists()
