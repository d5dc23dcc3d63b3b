"""Text tower: MiniLM weights loaded right (vs sentence-transformers), freezing, ONNX export parity, train==serve ids."""
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from trainer.model.text_tower import TextTower, export_onnx, minilm_dir, tokenize  # noqa: E402

SENTENCES = ["no focal liver lesion", "Hypodense liver lesion in segment 7 measuring 2 cm.",
             "The spleen is enlarged.", "Moderate right hydronephrosis without a visible calculus."]


@pytest.fixture(scope="module")
def tower():
    return TextTower(embed_dim=128).eval()


def _sentence_transformers():
    """Import sentence-transformers offline. Some envs carry a torchvision built for another torch, which breaks
    transformers' import chain; torchvision is not needed for a text model, so hide it from the import probe."""
    orig = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name == "torchvision" or name.startswith("torchvision."):
            return None
        return orig(name, *a, **k)

    importlib.util.find_spec = find_spec
    try:
        from sentence_transformers import SentenceTransformer
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"sentence-transformers not importable here: {type(exc).__name__}: {exc}")
    finally:
        importlib.util.find_spec = orig
    return SentenceTransformer


def test_pooled_output_matches_sentence_transformers(tower):
    ST = _sentence_transformers()
    ref_model = ST(str(minilm_dir()), device="cpu")
    ref = ref_model.encode(SENTENCES, normalize_embeddings=False, convert_to_numpy=True)
    ids, mask = tower.tokenize(SENTENCES)
    with torch.no_grad():
        ours = tower.pooled(ids, mask).numpy()
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos


def test_semantics_survive_loading(tower):
    ids, mask = tower.tokenize(["enlarged spleen", "splenomegaly", "normal bone density"])
    with torch.no_grad():
        p = torch.nn.functional.normalize(tower.pooled(ids, mask), dim=-1)
    assert float(p[0] @ p[1]) > float(p[0] @ p[2])


def test_padding_does_not_change_embedding(tower):
    ids1, m1 = tower.tokenize(["the liver is enlarged"])
    ids2, m2 = tower.tokenize(["the liver is enlarged", "a much longer sentence that forces padding of the first"])
    with torch.no_grad():
        a, b = tower(ids1, m1)[0], tower(ids2, m2)[0]
    assert ids2.shape[1] > ids1.shape[1]
    assert torch.allclose(a, b, atol=1e-5)


def test_output_is_unit_norm_and_shape(tower):
    ids, mask = tower.tokenize(SENTENCES)
    with torch.no_grad():
        e = tower(ids, mask)
    assert e.shape == (4, 128)
    assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_freezing_and_gradients():
    tw = TextTower(embed_dim=32, freeze_layers=4).train()
    total, trainable = tw.n_params()
    assert trainable < total / 5
    assert not tw.bert.embeddings.training and not tw.bert.encoder.layer[3].training
    assert tw.bert.encoder.layer[4].training
    ids, mask = tw.tokenize(SENTENCES[:2])
    tw(ids, mask).sum().backward()
    assert tw.bert.encoder.layer[0].attention.self.query.weight.grad is None
    assert tw.bert.encoder.layer[5].attention.self.query.weight.grad is not None
    assert tw.proj.weight.grad is not None
    frozen_all = TextTower(embed_dim=32, freeze_layers=-1)
    assert frozen_all.n_params()[1] == 384 * 32 + 32


def test_checkpoint_round_trip(tower):
    entry = tower.checkpoint_entry()
    back = TextTower.from_checkpoint(entry).eval()
    ids, mask = tower.tokenize(SENTENCES)
    with torch.no_grad():
        assert torch.allclose(tower(ids, mask), back(ids, mask))


def test_tokenize_is_the_appliance_tokenizer(tower):
    from appliance import text

    ids, mask = tokenize(SENTENCES, 64)
    a_ids, a_mask = text.tokenize(text.load_tokenizer(minilm_dir() / "tokenizer.json", 64), SENTENCES)
    assert np.array_equal(ids.numpy(), a_ids) and np.array_equal(mask.numpy(), a_mask)
    long_ids, _ = tokenize(["word " * 300], 64)
    assert long_ids.shape == (1, 64)


def test_onnx_export_dynamic_batch_and_sequence(tower, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(tower, tmp_path / "text.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for texts in (SENTENCES, SENTENCES[:1], ["a b c d e f g h i j k l m n o p q r s t u v w x y z"] * 3):
        ids, mask = tower.tokenize(texts)
        out = sess.run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            ref = tower(ids, mask).numpy()
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 1e-4


def test_contrastive_trainer_interface():
    """The names trainer.model.contrastive uses: base/project/freeze_base/config()["class"]."""
    tw = TextTower(embed_dim=16)
    tw.freeze_base(0)
    assert tw.n_params()[1] == 384 * 16 + 16
    tw.freeze_base(2)
    assert tw.freeze_layers == 4 and tw.bert.encoder.layer[5].attention.self.key.weight.requires_grad
    tw.freeze_base(-1)
    assert tw.n_params()[0] == tw.n_params()[1]
    cfg = tw.config()
    assert cfg["class"] == "trainer.model.text_tower:TextTower"
    back = TextTower.from_config(cfg)
    back.load_state_dict(tw.state_dict())
    ids, mask = tw.tokenize(["ascites"])
    tw.eval(), back.eval()
    with torch.no_grad():
        assert torch.allclose(tw.project(tw.base(ids, mask)), back(ids, mask), atol=1e-6)


def test_minilm_dir_override_is_used_and_a_wrong_one_is_refused(tmp_path, monkeypatch):
    """TOTALFM_MINILM_DIR (a copy on a host without the package): used when it holds the model; a folder without
    model.safetensors is refused with a message naming the variable, never silently replaced by the package."""
    import shutil
    src = minilm_dir()
    copy = tmp_path / "minilm"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        shutil.copy2(src / name, copy / name)
    monkeypatch.setenv("TOTALFM_MINILM_DIR", str(copy))
    assert minilm_dir() == copy
    monkeypatch.setenv("TOTALFM_MINILM_DIR", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="TOTALFM_MINILM_DIR"):
        minilm_dir()
