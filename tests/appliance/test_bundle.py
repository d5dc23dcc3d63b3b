"""appliance.bundle: a bundle loads as written; tampering, missing files and another ontology are refused with a
message naming the file/field and the fix. Uses the tiny untrained bundle (real ONNX files, real hashes)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from appliance import ontology
from appliance.bundle import BundleError, default_bundle_path, load_bundle


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from export.untrained import build_untrained_bundle

    return build_untrained_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture
def bundle_copy(built, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(built, dst)
    return dst


def _edit_manifest(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_loads_with_contract(built):
    b = load_bundle(built)
    assert b.bundle_id == "untrained-seed0"
    assert b.organs == list(ontology.ORGAN_NAMES)
    assert {"segmentation", "organ_encoder", "text_encoder"} <= set(b.model_names())
    seg = b.model("segmentation")
    assert seg.path.is_file() and seg.variants["fp32"] == seg.path
    assert [i["name"] for i in seg.inputs] == ["image"] and seg.outputs[0]["name"] == "logits"
    assert seg.preprocessing["label_space"] == "organ" and len(seg.preprocessing["class_ids"]) == 17
    enc = b.model("organ_encoder")
    assert [i["name"] for i in enc.inputs] == ["crop", "organ_index"]
    assert enc.preprocessing["input_shape"] == [32, 64, 64]
    txt = b.model("text_encoder")
    assert (b.root / txt.extra["tokenizer"]).is_file() and txt.extra["max_length"] == 32
    pe = b.prompt_embeddings
    assert pe.dtype == np.float32 and np.allclose(np.linalg.norm(pe, axis=1), 1, atol=1e-5)
    assert len(b.findings) == len(ontology.FINDINGS)
    f = {x.name: x for x in b.findings}["gallstones"]
    assert f.organ == "gallbladder" and 0 < f.threshold < 1
    assert max(f.pos_index + f.neg_index) < pe.shape[0]
    assert b.logit_scale > 0


def test_prompt_rows_are_the_prompts(built):
    """pos/neg indices point at the right prompt strings (recorded in provenance)."""
    b = load_bundle(built)
    prompts = b.provenance["prompts"]
    for f in b.findings:
        assert [prompts[i] for i in f.pos_index] == f.positive_prompts
        assert [prompts[i] for i in f.neg_index] == f.negative_prompts


def test_unknown_model_is_bundle_error(built):
    with pytest.raises(BundleError, match="no model 'nope'"):
        load_bundle(built).model("nope")


def test_tampered_byte_refused(bundle_copy):
    p = bundle_copy / "models" / "organ_encoder.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"models/organ_encoder\.onnx.*sha256.*restore it"):
        load_bundle(bundle_copy)
    load_bundle(bundle_copy, verify=False)  # an explicit opt-out still opens it


def test_tampered_prompt_embeddings_refused(bundle_copy):
    p = bundle_copy / "prompts" / "prompt_embeddings.npy"
    arr = np.load(p)
    arr[0, 0] += 1e-3
    np.save(p, arr)
    with pytest.raises(BundleError, match="prompt_embeddings.npy"):
        load_bundle(bundle_copy)


def test_missing_file_refused(bundle_copy):
    (bundle_copy / "text" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"text/tokenizer\.json.*missing"):
        load_bundle(bundle_copy)


def test_wrong_ontology_version_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["ontology"].update(version="0.9.0"))
    with pytest.raises(BundleError, match=r"ontology 0\.9\.0.*re-export"):
        load_bundle(bundle_copy)


def test_wrong_ontology_fingerprint_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["ontology"].update(fingerprint="0" * 64))
    with pytest.raises(BundleError, match="fingerprint 000000000000"):
        load_bundle(bundle_copy)


def test_wrong_format_version_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(bundle_copy)


def test_unhashed_reference_refused(bundle_copy):
    def fn(m):
        del m["files"]["models/text_encoder.onnx"]
    _edit_manifest(bundle_copy, fn)
    with pytest.raises(BundleError, match=r"models\.text_encoder\.file.*no sha256"):
        load_bundle(bundle_copy)


def test_path_escape_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(prompt_embeddings="../x.npy"))
    with pytest.raises(BundleError, match="relative path inside the bundle"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "absent")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_bundle(tmp_path)


def test_manifest_path_accepted(built):
    assert load_bundle(built / "manifest.json").root == load_bundle(built).root


def test_default_bundle_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TOTALFM_BUNDLE", str(tmp_path))
    assert default_bundle_path() == tmp_path
    monkeypatch.delenv("TOTALFM_BUNDLE")
    assert default_bundle_path().name == "default_bundle" and default_bundle_path().parent.name == "appliance"


def test_score_rules_load_with_a_default_and_unknown_ones_are_refused(bundle_copy):
    """Each finding's score rule travels with its threshold; a bundle from before session 9 has none (= "pair"), and
    a rule this software does not know stops the load instead of scoring with the wrong formula."""
    def fn(m):
        m["findings"][0]["score"] = "positive"
        m["findings"][1].pop("score", None)
    _edit_manifest(bundle_copy, fn)
    f = load_bundle(bundle_copy).findings
    assert f[0].score == "positive" and f[1].score == "pair"
    _edit_manifest(bundle_copy, lambda m: m["findings"][0].update(score="cosine"))
    with pytest.raises(BundleError, match="score rule 'cosine'.*install the software version"):
        load_bundle(bundle_copy)
    # the organ's evidence needs the finding's own prompt threshold
    _edit_manifest(bundle_copy, lambda m: m["findings"][0].update(score="organ", prompt_threshold=0.4))
    assert load_bundle(bundle_copy).findings[0].prompt_threshold == 0.4
    _edit_manifest(bundle_copy, lambda m: m["findings"][0].pop("prompt_threshold"))
    with pytest.raises(BundleError, match="score rule 'organ' without a numeric prompt_threshold"):
        load_bundle(bundle_copy)
