"""Organ measurements as the encoder's second input (ViTConfig.measurements): the model uses them, the contrastive
stage and `train eval` feed them, the exported bundle takes them as a third graph input with parity on real crops,
and the appliance's encode stage gives the torch embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from appliance import ontology

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from appliance.preprocess import MEASUREMENTS, N_MEASUREMENTS  # noqa: E402
from trainer.model.vit3d import OrganEncoder, ViTConfig  # noqa: E402

SMALL = dict(input_shape=(8, 32, 32), tubelet=(4, 8, 8), dim=32, depth=1, heads=2, embed_dim=16, stem="conv",
             pool="mean_max")


def test_the_encoder_uses_its_measurements_and_asks_for_them():
    torch.manual_seed(0)
    m = OrganEncoder(ViTConfig(**SMALL, measurements=N_MEASUREMENTS)).eval()
    x, oi = torch.rand(2, 1, 8, 32, 32), torch.tensor([0, 4])
    a, b = torch.rand(2, N_MEASUREMENTS), torch.rand(2, N_MEASUREMENTS)
    with torch.no_grad():
        assert not torch.allclose(m(x, oi, a), m(x, oi, b))  # same pixels, other measurements: other embedding
    with pytest.raises(ValueError, match="needs the organ measurements"):
        m(x, oi)
    with pytest.raises(ValueError, match="without measurements"):
        OrganEncoder(ViTConfig(**SMALL)).eval()(x, oi, a)
    with pytest.raises(ValueError, match="0 or the count of a version"):
        ViTConfig(**SMALL, measurements=7)
    assert ViTConfig(**SMALL, measurements=42).measurements == 42  # session 7-8 checkpoints (organ-measurements-v1)
    assert ViTConfig.from_dict({"input_shape": [16, 64, 64]}).measurements == 0  # older checkpoints: pixels only


def test_a_recipe_names_its_measurement_version_or_says_yes_or_no():
    from appliance.preprocess import MEASUREMENT_VERSIONS
    from appliance.errors import TotalFMError
    from trainer.model.pretrain import model_config_from_recipe

    def count(spec):
        return model_config_from_recipe({"model": {"measurements": spec}}).measurements

    assert count(True) == N_MEASUREMENTS and count(False) == 0
    assert count("organ-measurements-v3") == MEASUREMENT_VERSIONS["organ-measurements-v3"]
    assert count("organ-measurements-v1") == 42
    with pytest.raises(TotalFMError, match="unknown organ-measurement version"):
        count("organ-measurements-v9")


def test_readout_is_per_organ_and_standardised_with_the_training_statistics():
    from trainer.model.vit3d import MeasurementReadout

    r = MeasurementReadout(3, 2, 4)
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])  # second column constant: its std stays 1
    r.fit(train)
    np.testing.assert_allclose(r.mean.numpy(), [3.0, 5.0])
    np.testing.assert_allclose(r.std.numpy(), [2.0, 1.0])
    m = torch.tensor([[5.0, 5.0], [5.0, 5.0]])
    out = r(m, torch.tensor([0, 2]))
    torch.testing.assert_close(out[0], r.weight[0, 0])  # z = (1, 0): the first row of organ 0's map
    torch.testing.assert_close(out[1], r.weight[2, 0])


def test_the_readout_trains_at_its_own_learning_rate():
    """Recipe ``measurement_lr``: the per-organ readout (each organ's slice updated only in batches holding it) has
    its own optimizer group; every other trainable parameter keeps the shared lr, and nothing is left out."""
    from trainer.model.contrastive import CLIPModel, new_text_tower, param_groups

    enc = OrganEncoder(ViTConfig(**SMALL, measurements=N_MEASUREMENTS))
    model = CLIPModel(enc, new_text_tower(16))
    groups = param_groups(model, 1e-3, 2e-5, 1e-2)
    readout = {id(p) for p in enc.backbone.measure.parameters()}
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    assert by_lr[1e-2] == readout and not readout & by_lr[1e-3]
    grouped = set().union(*by_lr.values())
    assert all(id(p) in grouped for p in model.parameters() if p.requires_grad)
    pixels_only = param_groups(CLIPModel(OrganEncoder(ViTConfig(**SMALL)), new_text_tower(16)), 1e-3, 2e-5, 1e-2)
    assert 1e-2 not in {g["lr"] for g in pixels_only}  # no readout, no group of its own


def test_flops_count_the_readout():
    from trainer.model.flops import analytic_flops_per_crop, measured_flops_per_crop

    cfg = ViTConfig(**SMALL, measurements=N_MEASUREMENTS)
    a, m = analytic_flops_per_crop(cfg), measured_flops_per_crop(cfg)
    assert abs(a - m) / m < 0.02 and a > analytic_flops_per_crop(ViTConfig(**SMALL))
    cfg = ViTConfig(**SMALL, measurements=N_MEASUREMENTS, fusion="sum")
    a, m = analytic_flops_per_crop(cfg), measured_flops_per_crop(cfg)
    assert abs(a - m) / m < 0.02


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step contrastive stage with measurements on 2 in-process synthetic studies (the real code path), the
    shipped recipe's shape: "sum" fusion after a 3-step measurement warm-up."""
    from trainer.model.contrastive import main

    d = tmp_path_factory.mktemp("meas")
    (d / "r.toml").write_text(
        'name = "t"\n[model]\nsize = "tiny"\ninput_shape = [8, 32, 32]\ntubelet = [4, 8, 8]\ndim = 32\ndepth = 1\n'
        'heads = 2\nembed_dim = 32\nstem = "conv"\npool = "mean_max"\nmeasurements = true\nfusion = "sum"\n'
        '[contrastive]\nbatch_size = 8\nlr = 1e-3\nanchor_weight = 1.0\nmeasurement_warmup_steps = 3\n')
    assert main(["--recipe", str(d / "r.toml"), "--synth-n", "2", "--out", str(d / "run"), "--steps", "2",
                 "--threads", "1", "--init", "scratch"]) == 0
    return d


def test_contrastive_checkpoint_declares_the_measurements(trained):
    from trainer.model import checkpoint as ckptmod

    ck = ckptmod.read(trained / "run" / "final.pt")
    std = ck["encoder"]["backbone.measure.std"]
    assert (std != 1).any() and torch.isfinite(std).all()  # standardisation fitted on the training crops
    assert ck["model_config"]["measurements"] == N_MEASUREMENTS
    assert ck["preprocessing"]["measurements"] == MEASUREMENTS
    assert ck["preprocessing"]["n_measurements"] == N_MEASUREMENTS


def test_sum_fusion_starts_as_the_measurement_branch_and_the_vit_adds_to_it():
    with pytest.raises(ValueError, match="needs measurements"):
        ViTConfig(**SMALL, fusion="sum")
    torch.manual_seed(0)
    enc = OrganEncoder(ViTConfig(**SMALL, measurements=N_MEASUREMENTS, fusion="sum")).eval()
    x, oi, m = torch.rand(2, 1, 8, 32, 32), torch.tensor([0, 3]), torch.rand(2, N_MEASUREMENTS)
    with torch.no_grad():
        a, b = enc(x, oi, m), enc(torch.rand(2, 1, 8, 32, 32), oi, m)
        torch.testing.assert_close(a, b)  # the image head starts at zero: the pixels add nothing yet
        enc.measurements_only = True
        torch.testing.assert_close(enc(None, oi, m), a)  # the warm-up's path is the same function, without the ViT
        enc.measurements_only = False
        torch.nn.init.normal_(enc.head[-1].weight)
        assert not torch.allclose(enc(x, oi, m), enc(torch.rand(2, 1, 8, 32, 32), oi, m))  # now the pixels count


def test_warmup_trains_the_measurement_branch_alone_then_the_joint_stage_starts_from_it(trained):
    from trainer.model import checkpoint as ckptmod

    warm = ckptmod.read(trained / "run" / "warmup" / "final.pt")["encoder"]
    joint = ckptmod.read(trained / "run" / "final.pt")["encoder"]
    assert not warm["head.2.weight"].any()  # the ViT and its head were never run in the warm-up
    assert warm["measure_head.2.weight"].abs().sum() > 0
    assert joint["head.2.weight"].abs().sum() > 0  # the joint stage trains the image branch
    summary = json.loads((trained / "run" / "contrastive_summary.json").read_text())
    assert summary["measurement_warmup"]["steps"] == 3 and summary["steps"] == 2
    rows = (trained / "run" / "warmup" / "warmup_loss.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3


def test_warmup_needs_the_sum_fusion(tmp_path):
    from trainer.model.contrastive import main

    (tmp_path / "r.toml").write_text(
        'name = "t"\n[model]\nsize = "tiny"\ninput_shape = [8, 32, 32]\ntubelet = [4, 8, 8]\ndim = 32\ndepth = 1\n'
        'heads = 2\nembed_dim = 32\nstem = "conv"\npool = "mean_max"\nmeasurements = true\n'
        '[contrastive]\nbatch_size = 8\nmeasurement_warmup_steps = 3\n')
    with pytest.raises(SystemExit, match="fusion"):
        main(["--recipe", str(tmp_path / "r.toml"), "--synth-n", "1", "--out", str(tmp_path / "run"), "--steps", "1",
              "--threads", "1", "--init", "scratch"])


def test_eval_feeds_the_measurements(trained):
    from trainer.evaluate.cli import main

    out = trained / "eval"
    assert main(["--checkpoint", str(trained / "run" / "final.pt"), "--synth-val", "2", "--synth-test", "2",
                 "--out", str(out), "--bootstrap", "10", "--threads", "1"]) == 0
    assert json.loads((out / "eval.json").read_text())["n_studies"] == {"val": 2, "test": 2}


def test_bundle_takes_measurements_and_the_appliance_encodes_like_torch(trained, shared_data):
    from appliance.backends import open_model
    from appliance.bundle import load_bundle
    from appliance.crops import crop_organs
    from appliance.pipeline import encode_stage
    from appliance.preprocess import encoder_input, organ_measurements
    from export.bundle_cli import export_from_checkpoints
    from export.real_inputs import _scan
    from trainer.model.checkpoint import load_encoder

    out = export_from_checkpoints(None, trained / "run" / "final.pt", trained / "bundle", log=lambda s: None)
    b = load_bundle(out)
    spec = b.model("organ_encoder")
    assert [i["name"] for i in spec.inputs] == ["crop", "organ_index", "measurements"]
    assert spec.preprocessing["n_measurements"] == N_MEASUREMENTS
    par = b.provenance["parity"]["organ_encoder"]
    assert par["value"] >= 0.9999 and par["n"] >= 20  # real crops with their real measurements

    crops = crop_organs(*_scan("ts_upper_abdomen"), label_space="totalseg")
    got = encode_stage(crops, open_model(spec.path, backend="cpu", threads=1), spec.preprocessing["input_shape"],
                       b.organs, measurements=spec.preprocessing["measurements"])
    enc, _ = load_encoder(trained / "run" / "final.pt")
    enc.eval()
    for organ, c in crops.present().items():
        with torch.no_grad():
            t = enc(torch.from_numpy(encoder_input(c, spec.preprocessing["input_shape"])[None]),
                    torch.tensor([b.organs.index(organ)]),
                    torch.from_numpy(organ_measurements(c)[None])).numpy()[0]
        assert float(np.dot(got[organ], t)) >= 0.9999, organ


def test_held_out_findings_scored_by_their_positive_prompts_travel_into_the_bundle(trained):
    """`train eval --held-out-score positive`: the catalogue findings the anchor left out are scored by their positive
    prompts, the rule is stored with their thresholds, the exporter writes it into the bundle, and `train eval
    --bundle` scores with it (same AUROC as the torch evaluation)."""
    from export.bundle_cli import export_from_checkpoints
    from trainer.evaluate.cli import main
    from trainer.model import checkpoint as ckptmod

    ck = trained / "run" / "final.pt"
    assert main(["--checkpoint", str(ck), "--synth-val", "2", "--synth-test", "2", "--out", str(trained / "ev_pos"),
                 "--bootstrap", "10", "--threads", "1", "--no-plots", "--held-out-score", "positive"]) == 0
    meta = ckptmod.read(ck)
    held_out = set(meta["anchor"]["zero_shot"])
    stored = meta["score_rules"]  # every finding's rule, defaults included
    assert held_out and {n for n, r in stored.items() if r == "positive"} == held_out
    assert {n for n, r in stored.items() if r == "organ"} == {f.name for f in ontology.ANY_ABNORMALITY_FINDINGS}
    assert set(meta["prompt_thresholds"]) == {n for n, r in stored.items() if r == "organ"}
    out = export_from_checkpoints(None, ck, trained / "bundle_pos", log=lambda s: None)
    from appliance.bundle import load_bundle
    findings = load_bundle(out).findings
    rules = {f.name: f.score for f in findings}
    assert {n for n, r in rules.items() if r == "positive"} == held_out
    assert all(f.prompt_threshold == meta["prompt_thresholds"][f.name] for f in findings if f.score == "organ")
    assert main(["--bundle", str(out), "--synth-val", "2", "--synth-test", "2", "--out", str(trained / "ev_pos_b"),
                 "--bootstrap", "10", "--threads", "1", "--no-plots"]) == 0
    torch_res = json.loads((trained / "ev_pos" / "eval.json").read_text())["findings"]
    bundle_res = json.loads((trained / "ev_pos_b" / "eval.json").read_text())["findings"]
    for name in held_out | {f.name for f in ontology.ANY_ABNORMALITY_FINDINGS}:  # the organ rule travels too
        a, b = torch_res[name]["auroc"], bundle_res[name]["auroc"]
        assert (a is None and b is None) or abs(a - b) < 1e-6, name
