"""Organ encoder: encoder_input, ViT shapes/normalisation, ONNX export (dynamo, opset 18, dynamic batch) parity,
FLOPs per study within the demo budget, checkpoint round trip with the metadata the exporter needs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from appliance import ontology
from appliance.errors import TotalFMError
from appliance.preprocess import encoder_input, fit_to_shape
from trainer.model import checkpoint as ckptmod
from trainer.model.flops import analytic_flops_per_crop, flops_per_study, measured_flops_per_crop
from trainer.model.vit3d import OrganEncoder, ViTConfig, config_for

torch.set_num_threads(1)


class _Crop:
    def __init__(self, arr):
        self.image = type("V", (), {"array": arr})()
        self.organ, self.status = "liver", "ok"


def test_encoder_input_shape_range_and_determinism():
    rng = np.random.default_rng(0)
    arr = rng.random((64, 128, 128), dtype=np.float32)
    a = encoder_input(_Crop(arr), (16, 64, 64))
    b = encoder_input(arr, (16, 64, 64))
    assert a.shape == (1, 16, 64, 64) and a.dtype == np.float32
    assert np.array_equal(a, b)  # byte-for-byte the same for the same crop
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_fit_to_shape_exact_on_linear_field_and_identity():
    z, y, x = np.meshgrid(np.linspace(0, 1, 48), np.linspace(0, 2, 96), np.linspace(0, 3, 96), indexing="ij")
    f = (z + y + x).astype(np.float32)
    g = fit_to_shape(f, (16, 64, 64))
    zz, yy, xx = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 2, 64), np.linspace(0, 3, 64), indexing="ij")
    np.testing.assert_allclose(g, zz + yy + xx, atol=1e-5)  # linear resampling is exact on a linear field
    assert np.array_equal(fit_to_shape(f, f.shape), f)


def test_encoder_input_refuses_unusable_crop():
    c = _Crop(None)
    c.image = None
    c.status = "absent"
    with pytest.raises(TotalFMError, match="absent"):
        encoder_input(c, (16, 64, 64))


def test_vit_embedding_normalised_and_organ_embedding_matters():
    cfg = ViTConfig(input_shape=(8, 32, 32), tubelet=(4, 8, 8), dim=32, depth=1, heads=2, embed_dim=16)
    m = OrganEncoder(cfg).eval()
    x = torch.rand(3, 1, 8, 32, 32)
    e0 = m(x, torch.tensor([0, 0, 0]))
    e1 = m(x, torch.tensor([5, 5, 5]))
    assert e0.shape == (3, 16)
    torch.testing.assert_close(e0.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(e0, e1)  # the organ index changes the embedding (shared backbone + organ embedding)


def test_onnx_export_dynamic_batch_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cfg = ViTConfig(input_shape=(8, 32, 32), tubelet=(4, 8, 8), dim=32, depth=2, heads=2, embed_dim=16)
    m = OrganEncoder(cfg).eval()
    ex = (torch.rand(2, 1, 8, 32, 32), torch.tensor([0, 3]))
    path = tmp_path / "enc.onnx"
    torch.onnx.export(m, ex, str(path), dynamo=True, opset_version=18, input_names=["crop", "organ_index"],
                      output_names=["embedding"],
                      dynamic_shapes={"crop": {0: torch.export.Dim("batch")}, "organ_index": {0: torch.export.Dim("batch")}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        x = torch.rand(b, 1, 8, 32, 32)
        idx = torch.arange(b) % 16
        want = m(x, idx).detach().numpy()
        got = sess.run(["embedding"], {"crop": x.numpy(), "organ_index": idx.numpy()})[0]
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_demo_encoder_flops_within_budget_and_analytic_matches_counter():
    cfg = config_for("tiny", input_shape=(16, 64, 64), tubelet=(4, 8, 8))
    f = flops_per_study(cfg)
    assert f["gflops_per_study"] <= 170 and f["within_demo_budget"]
    assert abs(analytic_flops_per_crop(cfg) - measured_flops_per_crop(cfg)) / measured_flops_per_crop(cfg) < 0.02


def test_checkpoint_round_trip_carries_exporter_metadata(tmp_path):
    cfg = ViTConfig(input_shape=(8, 32, 32), tubelet=(4, 8, 8), dim=32, depth=1, heads=2, embed_dim=16)
    m = OrganEncoder(cfg)
    ck = ckptmod.base_meta(cfg, stage="contrastive", recipe={"name": "t"})
    ck["encoder"] = m.state_dict()
    ckptmod.save(tmp_path / "final.pt", ck)
    m2, meta = ckptmod.load_encoder(tmp_path)
    x, idx = torch.rand(2, 1, 8, 32, 32), torch.tensor([1, 2])
    torch.testing.assert_close(m.eval()(x, idx), m2(x, idx))
    assert meta["ontology"] == {"version": ontology.ONTOLOGY_VERSION, "fingerprint": ontology.ontology_fingerprint()}
    assert meta["input_shape"] == [8, 32, 32]
    assert set(meta["preprocessing"]["recipes"]) == {o.name for o in ontology.ORGANS}
    ckptmod.set_thresholds(tmp_path / "final.pt", {"liver_abnormal": 0.4})
    assert ckptmod.load_encoder(tmp_path)[1]["thresholds"] == {"liver_abnormal": 0.4}


def test_recipes_load_and_demo_encoder_within_budget():
    from trainer.model.pretrain import model_config_from_recipe
    from trainer.recipe import load_recipe
    demo, hosp = load_recipe("demo"), load_recipe("hospital")
    d = flops_per_study(model_config_from_recipe(demo), measured=False)
    h = flops_per_study(model_config_from_recipe(hosp), measured=False)
    assert d["gflops_per_study"] <= 170 and d["ratio_vs_merlin"] >= 8
    assert h["gflops_per_study"] < 1329  # the hospital ViT-B stays below Merlin at its token budget
    assert demo["pretrain"]["mask_ratio"] == 0.9
    splits = {g["seed"] for g in demo["data"]["train"] if g["kind"] == "analytic"}
    assert all(s < 1000 for s in splits)
    assert all(g.get("source") != "B" for g in demo["data"]["train"])  # patient B never trains
    # enrichment is for training only: thresholds and metrics are measured at realistic prevalence
    assert not any(g.get("findings_per_study") for split in ("val", "test") for g in demo["data"][split])


def test_recipe_synth_passes_the_enriched_plan_per_group(tmp_path):
    import json

    from trainer.recipe import synth_studies
    recipe = {"data": {"workers": 1, "normal_fraction": 0.3, "train": [
        {"kind": "analytic", "n": 2, "seed": 0, "size": "64,64,48", "findings_per_study": [5, 5],
         "normal_fraction": 0.0}]}}
    made = synth_studies(recipe, tmp_path)
    assert made == {"groups": {"train0_analytic": 2}}
    for d in sorted((tmp_path / "flat").iterdir()):
        truth = json.loads((d / "truth.json").read_text())
        assert len(truth["findings"]) + len(truth["not_inserted"]) == 5


HYBRID = ViTConfig(input_shape=(8, 32, 32), tubelet=(4, 8, 8), dim=32, depth=1, heads=2, embed_dim=16, stem="conv",
                   pool="mean_max")


def test_conv_stem_reaches_the_tubelet_grid_and_exports(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = OrganEncoder(HYBRID).eval()
    assert m.backbone.embed(torch.rand(2, 1, 8, 32, 32)).shape == (2, HYBRID.n_tokens, 32)
    path = tmp_path / "hybrid.onnx"
    torch.onnx.export(m, (torch.rand(2, 1, 8, 32, 32), torch.tensor([0, 3])), str(path), dynamo=True,
                      opset_version=18, input_names=["crop", "organ_index"], output_names=["embedding"],
                      dynamic_shapes={"crop": {0: torch.export.Dim("batch")},
                                      "organ_index": {0: torch.export.Dim("batch")}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, idx = torch.rand(3, 1, 8, 32, 32), torch.tensor([1, 7, 15])
    np.testing.assert_allclose(sess.run(["embedding"], {"crop": x.numpy(), "organ_index": idx.numpy()})[0],
                               m(x, idx).detach().numpy(), atol=1e-4)
    assert abs(analytic_flops_per_crop(HYBRID) - measured_flops_per_crop(HYBRID)) / measured_flops_per_crop(HYBRID) < 0.02


def test_stem_and_pool_are_validated():
    with pytest.raises(ValueError, match="powers of 2"):
        ViTConfig(input_shape=(6, 24, 24), tubelet=(3, 8, 8), stem="conv")
    with pytest.raises(ValueError, match="stem"):
        ViTConfig(stem="resnet")
    with pytest.raises(ValueError, match="pool"):
        ViTConfig(pool="gem")
    assert ViTConfig.from_dict({"input_shape": [16, 64, 64]}).stem == "linear"  # older checkpoints keep their stem


def test_recipe_init_decides_whether_stage_1_runs():
    from trainer.recipe import stage_plan

    assert stage_plan({"contrastive": {"init": "pretrain"}}) == {"init": "pretrain", "pretrain": True, "ablation": None}
    assert stage_plan({"contrastive": {"init": "scratch"}}) == {"init": "scratch", "pretrain": False, "ablation": None}
    # the ablation trains the other start, so stage 1 runs either way
    assert stage_plan({"contrastive": {"init": "scratch"}}, ablation=True) == {"init": "scratch", "pretrain": True,
                                                                               "ablation": "pretrain"}
    assert stage_plan({}, ablation=True)["ablation"] == "scratch"
    with pytest.raises(SystemExit, match="contrastive.init"):
        stage_plan({"contrastive": {"init": "videomae"}})


def test_recipe_eval_section_sets_the_held_out_score_rule():
    from trainer.recipe import eval_score_args, load_recipe

    assert eval_score_args({"eval": {"held_out_score": "positive"}}) == ["--held-out-score", "positive"]
    assert eval_score_args({"eval": {}}) == [] and eval_score_args({}) == []
    assert eval_score_args(load_recipe("demo")) == ["--held-out-score", "positive"]


def test_recipe_ablation_is_evaluated_under_the_same_protocol(tmp_path, monkeypatch):
    """`train recipe --ablation`: the other start's model is scored with the same bootstrap and score rules as the
    recipe's own (it was scored with `pair` for every finding while the recipe's used its [eval] rule). The training
    and eval entry points are replaced by recorders: what is under test is the arguments the recipe hands them."""
    import trainer.evaluate.cli as eval_cli
    import trainer.model.contrastive as contrastive
    from trainer.recipe import main

    evals = []
    monkeypatch.setattr(contrastive, "main", lambda argv: {"recorded": argv})
    monkeypatch.setattr(eval_cli, "main", lambda argv: evals.append(argv) or {"recorded": True})
    assert main(["demo", "--out", str(tmp_path), "--pairs", str(tmp_path / "pairs"), "--ablation",
                 "--skip", "pretrain"]) == 0
    assert len(evals) == 2

    def protocol(argv):
        return [a for i, a in enumerate(argv) if argv[i - 1] not in ("--checkpoint", "--out") and
                a not in ("--checkpoint", "--out")]
    assert protocol(evals[0]) == protocol(evals[1])
    assert "--held-out-score" in evals[1] and evals[1][evals[1].index("--bootstrap") + 1] == "500"
    assert evals[1][evals[1].index("--checkpoint") + 1].endswith("contrastive_pretrain")
