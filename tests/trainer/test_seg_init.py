"""Starting a segmentation stage from a shipped bundle (trainer/segmentation/init_weights.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from appliance import ontology
from appliance.bundle import write_manifest
from appliance.errors import TotalFMError
from trainer.segmentation import train as seg_train
from trainer.segmentation.init_weights import load_init, parity_tolerance
from trainer.segmentation.unet import build

BUNDLE = Path(__file__).resolve().parents[2] / "appliance" / "default_bundle"


def test_the_bundle_segmenter_is_rebuilt_as_a_trainable_unet():
    start = load_init(BUNDLE)
    assert start.config["channels"] == [8, 16, 32, 64]
    assert start.held_out_patient == "B"  # the embedded segmenter was trained on patient A
    assert "bundle" in start.source
    model = build(start.config)
    model.load_state_dict(start.state_dict)
    model.eval()
    x = np.random.default_rng(7).normal(0, 1, (2, 1, 32, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(BUNDLE / "models" / "segmentation.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"image": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= parity_tolerance(want)  # rounding only (about 1e-3 on logits of about 250)
    assert parity_tolerance(want) < 0.01  # and rounding is far below a logit
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.999
    # the weights are trainable tensors, not views of the ONNX buffers
    assert all(p.requires_grad for p in model.parameters())


def test_training_refuses_the_held_out_patient_before_building_any_data(tmp_path, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("the data should not be built for a refused start")

    monkeypatch.setattr("trainer.segmentation.seg_data.training_cases", no_data)
    recipe = seg_train.load_recipe("trainer/recipes/seg_demo.toml")
    out = tmp_path / "seg.pt"
    with pytest.raises(TotalFMError, match="held out"):
        seg_train.train(recipe, out, train_patient="B", init=BUNDLE, log=lambda m: None)
    assert not out.exists()


def test_a_graph_that_does_not_compute_its_weights_is_refused(tmp_path):
    """A bundle whose graph was changed (here: the LeakyReLU slope) keeps the weight names, but the U-Net rebuilt
    from them would not be the model that shipped; training from it is refused."""
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    path = copy / "models" / "segmentation.onnx"
    m = onnx.load(str(path))
    changed = 0
    for node in m.graph.node:
        if node.op_type == "LeakyRelu":
            for a in node.attribute:
                if a.name == "alpha":
                    a.f = 0.3
                    changed += 1
    assert changed
    onnx.save(m, str(path))
    write_manifest(copy, json.loads((copy / "manifest.json").read_text()))
    with pytest.raises(TotalFMError, match="does not reproduce"):
        load_init(copy)


def test_seg_eval_never_writes_into_a_bundle(capsys):
    from trainer.segmentation.evaluate import main

    with pytest.raises(SystemExit):
        main([str(BUNDLE), "--write-metrics"])
    assert "never into a bundle" in capsys.readouterr().err


def test_missing_init_path_is_a_clear_error(tmp_path):
    with pytest.raises(TotalFMError, match="no such file"):
        load_init(tmp_path / "nope.pt")


def test_seg_eval_of_a_bundle_scores_what_the_appliance_runs(monkeypatch):
    """seg-eval BUNDLE runs the rebuilt U-Net in torch with the bundle's preprocessing and clean-up; its labels must
    be the appliance's (ONNX Runtime, appliance.pipeline.segment_stage) on the same scan."""
    from appliance.bundle import load_bundle
    from appliance.backends import open_model
    from appliance.crops import organ_index_map
    from appliance.pipeline import segment_stage
    from appliance.segment import dice_per_label
    from trainer.segmentation import evaluate
    from trainer.synth.study import generate_study

    st = generate_study(kind="analytic", seed=2000, index=0, shape=(24, 32, 32), spacing=(6.0, 6.0, 6.0), findings=[])
    ref = organ_index_map(st.labels)
    img = st.image.with_array(st.image.array.astype(np.float32))

    def one_case(train_patient, n_phantoms, data_dir=None):
        assert train_patient == "A"  # read from the bundle: its segmenter was tested on patient B
        yield "tiny", "phantom", img, ref

    monkeypatch.setattr(evaluate, "held_out_sets", one_case)
    res = evaluate.evaluate_checkpoint(BUNDLE, n_phantoms=1)
    spec = load_bundle(BUNDLE).model("segmentation")
    assert res["postprocess"] == spec.preprocessing["postprocess"]
    labels = segment_stage(img, open_model(spec.path, "cpu", threads=2), spec.preprocessing).array
    names = [o.name for o in ontology.ORGANS]
    want = {names[k - 1]: v for k, v in dice_per_label(labels, ref, range(1, 17)).items() if np.isfinite(v)}
    got = {name: v["dice"] for name, v in res["cases"][0]["organs"].items()}
    assert want and got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 2e-3 for k in want)
