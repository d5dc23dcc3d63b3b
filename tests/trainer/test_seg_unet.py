"""The distilled U-Net: shapes, checkpoint round trip (ontology checked), and that it learns a toy task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from appliance import ontology
from appliance.segment import segment_volume
from appliance.volume import Volume
from trainer.segmentation.infer_torch import torch_predict
from trainer.segmentation.train import dice_ce_loss
from trainer.segmentation.unet import N_CLASSES, build, build_from_checkpoint, save_checkpoint

torch.set_num_threads(1)


def test_forward_shape_and_classes():
    m = build({"channels": [4, 8, 8, 8]})
    y = m(torch.zeros(2, 1, 8, 16, 24))
    assert y.shape == (2, N_CLASSES, 8, 16, 24)
    assert N_CLASSES == len(ontology.ORGANS) + 1


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = build({"channels": [4, 8, 8, 8]})
    pp = {"spacing_mm": [3.0] * 3, "patch_size": [8, 16, 16], "clip_hu": [-1000.0, 1000.0], "mean": 0.0,
          "std": 300.0, "step": 0.5, "label_space": "organ", "class_ids": list(range(N_CLASSES))}
    p = save_checkpoint(tmp_path / "m.pt", m, pp, {"x": 1})
    m2, pp2 = build_from_checkpoint(p)
    assert pp2 == pp
    x = torch.randn(1, 1, 8, 16, 16)
    m.eval()
    torch.testing.assert_close(m(x), m2(x))
    ck = torch.load(p, weights_only=False)
    assert ck["ontology"]["fingerprint"] == ontology.ontology_fingerprint()
    ck["ontology"]["fingerprint"] = "deadbeef"
    torch.save(ck, p)
    with pytest.raises(Exception):
        build_from_checkpoint(p)


def test_learns_a_bright_box_and_runs_through_the_runtime_path():
    """A few dozen steps on 'bright = organ 1' must give a usable segmentation via appliance.segment."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = build({"channels": [4, 8, 8, 8], "n_classes": 2})
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(90):
        x = rng.normal(0, 0.2, (2, 1, 8, 16, 16)).astype(np.float32)
        y = np.zeros((2, 8, 16, 16), np.int64)
        for b in range(2):
            z0, y0, x0 = rng.integers(0, 4), rng.integers(0, 8), rng.integers(0, 8)
            x[b, 0, z0:z0 + 4, y0:y0 + 8, x0:x0 + 8] += 2.0
            y[b, z0:z0 + 4, y0:y0 + 8, x0:x0 + 8] = 1
        loss = dice_ce_loss(m(torch.from_numpy(x)), torch.from_numpy(y), 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    arr = np.zeros((12, 24, 20), np.float32)
    arr[3:8, 5:15, 4:12] = 600.0  # normalised 2.0 with std 300
    pp = {"spacing_mm": [3.0] * 3, "patch_size": [8, 16, 16], "clip_hu": [-1000.0, 1000.0], "mean": 0.0,
          "std": 300.0, "class_ids": [0, 1]}
    arr += np.random.default_rng(1).normal(0, 60.0, arr.shape).astype(np.float32)
    out = segment_volume(Volume(arr, (3.0, 3.0, 3.0)), pp, torch_predict(m))
    ref = np.zeros(arr.shape, np.uint8)
    ref[3:8, 5:15, 4:12] = 1
    inter = ((out.array == 1) & (ref == 1)).sum()
    dice = 2 * inter / ((out.array == 1).sum() + ref.sum())
    assert dice > 0.8, dice


def test_recipe_postprocess_becomes_label_ids_in_the_checkpoint(tmp_path):
    from appliance.errors import TotalFMError
    from trainer.segmentation.train import load_recipe, postprocess_from_recipe, preprocessing_from_recipe

    recipe = load_recipe("trainer/recipes/seg_demo.toml")
    pp = preprocessing_from_recipe(recipe)
    names = [pp["organs"][i] for i in pp["postprocess"]["keep_largest"]]
    assert names == recipe["postprocess"]["keep_largest"] and "liver" in names
    assert 0.0 < pp["postprocess"]["min_component_fraction"] < 1.0
    assert "postprocess" not in preprocessing_from_recipe({k: v for k, v in recipe.items() if k != "postprocess"})
    with pytest.raises(TotalFMError, match="unknown organs"):
        postprocess_from_recipe({"postprocess": {"keep_largest": ["livr"]}})


def test_seg_eval_writes_the_postprocess_rule_into_the_checkpoint(tmp_path, monkeypatch):
    """--write-postprocess stores the recipe's rule, so the exported bundle runs what seg-eval measured."""
    from trainer.segmentation import evaluate
    from trainer.segmentation.train import load_recipe, postprocess_from_recipe

    m = build({"channels": [4, 8, 8, 8]})
    pp = {"spacing_mm": [3.0] * 3, "patch_size": [8, 16, 16], "clip_hu": [-1000.0, 1000.0], "mean": 0.0,
          "std": 300.0, "step": 0.5, "label_space": "organ", "class_ids": list(range(N_CLASSES))}
    p = save_checkpoint(tmp_path / "m.pt", m, pp, {})
    seen = {}

    def fake_sets(train_patient, n_phantoms, data_dir=None):  # one tiny synthetic case instead of the real patient
        seen["called"] = True
        yield "tiny", "box", Volume(np.zeros((8, 16, 16), np.float32), (3.0, 3.0, 3.0)), np.zeros((8, 16, 16), int)

    monkeypatch.setattr(evaluate, "held_out_sets", fake_sets)
    assert evaluate.main([str(p), "--postprocess", "trainer/recipes/seg_demo.toml", "--write-postprocess",
                          "--write-metrics"]) == 0
    _, pp2 = build_from_checkpoint(p)
    assert seen and pp2["postprocess"] == postprocess_from_recipe(load_recipe("trainer/recipes/seg_demo.toml"))
    assert torch.load(p, weights_only=False)["metrics"]["dice_postprocess"] == pp2["postprocess"]
    assert evaluate.main([str(p), "--postprocess", "none", "--write-postprocess"]) == 0
    assert "postprocess" not in build_from_checkpoint(p)[1]
    before = p.read_bytes()
    with pytest.raises(SystemExit):  # nothing to write: refused before any evaluation, checkpoint untouched
        evaluate.main([str(p), "--write-postprocess"])
    assert p.read_bytes() == before
