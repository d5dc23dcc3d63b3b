"""Export of trainer-format checkpoints (organ ViT encoder, U-Net) to a bundle with parity on REAL crops/patches.

Checkpoints are written with the trainers' own save functions (random init, small configs): this tests the export
path, not model quality. The text tower is the untrained one until the contrastive trainer's tower lands.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    from trainer.model.checkpoint import base_meta, save
    from trainer.model.vit3d import OrganEncoder, config_for
    from trainer.segmentation import unet

    from export.bundle_cli import export_from_checkpoints
    from export.untrained import _modules, write_word_tokenizer

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    cfg = config_for("tiny", dim=64, depth=2, heads=2, embed_dim=32)
    enc = OrganEncoder(cfg).eval()
    meta = base_meta(cfg, stage="contrastive")
    meta.update(encoder=enc.state_dict(), logit_scale=10.0, thresholds={"gallstones": 0.3})
    save(d / "enc.pt", meta)
    seg = unet.build({"channels": [4, 8, 16]}).eval()
    pre = {"spacing_mm": [3.0, 3.0, 3.0], "patch_size": [32, 64, 64], "clip_hu": [-1000.0, 1000.0],
           "mean": 0.0, "std": 500.0, "label_space": "organ", "class_ids": list(range(17)), "step": 0.5}
    unet.save_checkpoint(d / "seg.pt", seg, pre)
    _, _, TinyText = _modules()
    vocab = write_word_tokenizer(d / "tok.json")
    text = (TinyText(vocab, 32).eval(), d / "tok.json", 32)
    out = export_from_checkpoints(d / "seg.pt", d / "enc.pt", d / "bundle", text=text, log=lambda s: None)
    return out, enc, seg, pre


def test_bundle_from_checkpoints_parity_on_real_data(exported):
    from appliance.bundle import load_bundle

    out, enc, seg, pre = exported
    b = load_bundle(out)
    par = b.provenance["parity"]
    assert par["organ_encoder"]["value"] >= 0.9999 and par["organ_encoder"]["n"] >= 20  # real crops
    assert par["segmentation"]["value"] >= 0.999
    assert {f.name: f.threshold for f in b.findings}["gallstones"] == 0.3
    assert b.logit_scale == 10.0
    assert b.model("organ_encoder").preprocessing["input_shape"] == [16, 64, 64]


def test_appliance_runs_exported_encoder_like_torch(exported):
    """Same embeddings from the bundle's ONNX graph via ORT as from torch, on real crops made by the runtime path."""
    import onnxruntime as ort

    from appliance.bundle import load_bundle
    from export.real_inputs import organ_crops

    out, enc, _, _ = exported
    b = load_bundle(out)
    x, oi, _ = organ_crops((16, 64, 64))
    s = ort.InferenceSession(str(b.model("organ_encoder").path), providers=["CPUExecutionProvider"])
    o = s.run(["embedding"], {"crop": x[:5], "organ_index": oi[:5]})[0]
    with torch.no_grad():
        t = enc(torch.from_numpy(x[:5]), torch.from_numpy(oi[:5])).numpy()
    assert np.min(np.sum(o * t, axis=1)) >= 0.9999


def test_parity_failure_refuses_export(tmp_path):
    """A graph that differs from torch at run time (here: a module whose ONNX trace freezes a python-side random
    value) must fail the parity gate and write nothing."""
    from export.bundle_build import build_bundle
    from export.parity import ParityError
    from export.untrained import _modules, write_word_tokenizer

    _, TinyEnc, TinyText = _modules()

    class Drifting(TinyEnc):
        def forward(self, crop, organ_index):
            z = super().forward(crop, organ_index)
            return torch.nn.functional.normalize(z + torch.randn_like(z), dim=1)

    vocab = write_word_tokenizer(tmp_path / "tok.json")
    with pytest.raises(ParityError, match="organ_encoder: min_cosine"):
        build_bundle(tmp_path / "b", segmentation=None, organ_encoder=(Drifting(16, 32).eval(), {"input_shape": [8, 16, 16]}),
                     text_encoder=(TinyText(vocab, 32).eval(), tmp_path / "tok.json", 16), logit_scale=10.0)
    assert not (tmp_path / "b").exists()
