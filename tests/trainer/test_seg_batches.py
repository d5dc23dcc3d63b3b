"""Segmenter training batches drawn by worker processes, and the training device and precision
(trainer/segmentation/batches.py, train.resolve_device, train.resolve_precision)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from appliance.errors import TotalFMError
from trainer.segmentation import train as seg_train
from trainer.segmentation.batches import BatchStream
from trainer.segmentation.seg_data import Case, PatchSampler
from trainer.segmentation.unet import load_checkpoint

PP = {"spacing_mm": [3.0, 3.0, 3.0], "patch_size": [8, 16, 16], "clip_hu": [-1000.0, 1000.0], "mean": 0.0,
      "std": 300.0}


def tiny_cases(n: int = 3) -> list[Case]:
    """Boxes of organ 1 (liver) and 3 (spleen) at different places in noisy bodies: enough for patches to differ."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        img = rng.normal(0, 30, (16, 32, 32)).astype(np.float32)
        lab = np.zeros((16, 32, 32), np.uint8)
        lab[2 + i:8 + i, 4:14, 4 + 2 * i:14 + 2 * i] = 1
        lab[8:12, 18:26, 18:28] = 3
        img[lab == 1] += 60
        img[lab == 3] += 45
        out.append(Case(f"tiny:{i}", "analytic", img, lab, (3.0, 3.0, 3.0)))
    return out


def sampler(seed: int = 0) -> PatchSampler:
    return PatchSampler(tiny_cases(), PP["patch_size"], PP, rng=np.random.default_rng(seed), p_spatial=0.6,
                        scale_range=(0.7, 1.4))


def draw(workers: int, n: int = 6, seed: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    stream = BatchStream(sampler(), 2, workers=workers, seed=seed)
    try:
        return [next(stream) for _ in range(n)]
    finally:
        stream.close()


def test_worker_batches_depend_on_the_seed_not_on_the_number_of_workers():
    one, two = draw(1), draw(2)
    for (x1, y1), (x2, y2) in zip(one, two):
        assert x1.shape == (2, 1, 8, 16, 16) and x1.dtype == np.float32 and y1.dtype == np.int64
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # the batches are not all the same patch, and another seed gives another stream
    assert len({x.tobytes() for x, _ in one}) == len(one)
    assert not np.array_equal(draw(2, n=1, seed=4)[0][0], one[0][0])
    # organ voxels are drawn (class-balanced centring), not only background
    assert any((y > 0).any() for _, y in one)


def test_in_process_batches_use_the_samplers_own_generator():
    """workers = 0 is the sampler exactly as before (the CPU recipes reproduce their earlier runs)."""
    stream = BatchStream(sampler(seed=11), 2)
    reference = sampler(seed=11)
    for _ in range(3):
        x, y = next(stream)
        xr, yr = reference.sample(2)
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)
    stream.close()


def test_device_names():
    assert seg_train.resolve_device("cpu") == "cpu"
    assert seg_train.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TotalFMError, match="auto, cpu or cuda"):
        seg_train.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TotalFMError, match="no CUDA GPU"):
            seg_train.resolve_device("cuda")


@pytest.mark.parametrize("bad, message", [({"workers": -1}, "--workers must be 0"),
                                          ({"precision": "fp16"}, "precision must be auto, bf16 or fp32")])
def test_a_bad_worker_count_or_precision_is_refused_before_any_data_is_built(tmp_path, monkeypatch, bad, message):
    def no_data(*a, **k):
        raise AssertionError("the data should not be built for a refused run")

    monkeypatch.setattr("trainer.segmentation.seg_data.training_cases", no_data)
    recipe = seg_train.load_recipe("trainer/recipes/seg_demo.toml")
    with pytest.raises(TotalFMError, match=message):
        seg_train.train(recipe, tmp_path / "seg.pt", train_patient="A", log=lambda m: None, **bad)
    assert not (tmp_path / "seg.pt").exists()


def test_precision_names():
    assert seg_train.resolve_precision("fp32", "cpu") == "fp32"
    assert seg_train.resolve_precision("bf16", "cpu") == "bf16"
    assert seg_train.resolve_precision("auto", "cuda") == "bf16"
    assert seg_train.resolve_precision("auto", "cpu") == ("bf16" if seg_train.cpu_computes_bf16() else "fp32")
    with pytest.raises(TotalFMError, match="auto, bf16 or fp32"):
        seg_train.resolve_precision("fp16", "cpu")


def _tiny_recipe():
    recipe = copy.deepcopy(seg_train.load_recipe("trainer/recipes/seg_demo.toml"))
    recipe["preprocessing"]["patch_size"] = PP["patch_size"]
    recipe["model"]["channels"] = [4, 8, 8, 8]
    recipe["data"].pop("cache_dir", None)
    recipe["train"].update(checkpoint_every=2, threads=1)
    return recipe


def test_bf16_training_keeps_fp32_weights_and_differs_from_fp32_training(tmp_path, monkeypatch):
    """Autocast really runs the convolutions in bf16 (the same seed and batches give other weights than fp32), while
    the weights the exporter reads stay fp32."""
    monkeypatch.setattr("trainer.segmentation.seg_data.training_cases", lambda *a, **k: tiny_cases())
    ck = {}
    for precision in ("fp32", "bf16", "fp32"):
        out = seg_train.train(_tiny_recipe(), tmp_path / f"{precision}.pt", train_patient="A", iterations=3,
                              device="cpu", precision=precision, log=lambda m: None)
        c = load_checkpoint(out)
        assert c["provenance"]["precision"] == precision
        assert all(v.dtype == torch.float32 for v in c["state_dict"].values() if v.is_floating_point())
        if precision in ck:  # the second fp32 run: training is deterministic, so any difference is the precision
            assert all(torch.equal(v, ck[precision][k]) for k, v in c["state_dict"].items())
        ck[precision] = c["state_dict"]
    diff = max(float((ck["bf16"][k].float() - v.float()).abs().max()) for k, v in ck["fp32"].items()
               if v.is_floating_point())
    assert 0 < diff < 0.05


def test_training_with_sampler_workers_saves_a_checkpoint_that_names_them(tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.segmentation.seg_data.training_cases", lambda *a, **k: tiny_cases())
    out = seg_train.train(_tiny_recipe(), tmp_path / "seg.pt", train_patient="A", iterations=4, workers=2, device="cpu",
                          log=lambda m: None)
    ck = load_checkpoint(out)
    assert ck["metrics"]["iterations"] == 4 and ck["metrics"]["finished"]
    assert ck["provenance"]["device"] == "cpu" and ck["provenance"]["sampler_workers"] == 2
    assert np.isfinite(ck["metrics"]["loss_last50"])
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def _poison_batches(monkeypatch, bad_iterations):
    """Batches whose image is NaN at the given 1-based iterations: a non-finite loss and gradient, as oneDNN's bf16
    Conv3d backward gives now and then on a 2-voxel-deep level (see train.MAX_CONSECUTIVE_SKIPS)."""
    real_next = BatchStream.__next__
    count = {"n": 0}

    def next_batch(self):
        x, y = real_next(self)
        count["n"] += 1
        if count["n"] in bad_iterations:
            x = np.full_like(x, np.nan)
        return x, y

    monkeypatch.setattr(BatchStream, "__next__", next_batch)


def test_a_step_with_a_non_finite_gradient_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.segmentation.seg_data.training_cases", lambda *a, **k: tiny_cases())
    _poison_batches(monkeypatch, {2})
    logged = []
    out = seg_train.train(_tiny_recipe(), tmp_path / "seg.pt", train_patient="A", iterations=4, device="cpu",
                          precision="fp32", log=logged.append)
    ck = load_checkpoint(out)
    assert ck["metrics"]["skipped_steps"] == 1 and ck["metrics"]["finished"]
    assert np.isfinite(ck["metrics"]["loss_last50"])
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert any("it 2: non-finite loss or gradient, step skipped" in m for m in logged)


def test_a_run_that_keeps_failing_stops_with_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.segmentation.seg_data.training_cases", lambda *a, **k: tiny_cases())
    _poison_batches(monkeypatch, set(range(1, 100)))
    with pytest.raises(TotalFMError, match="10 steps in a row had a non-finite loss"):
        seg_train.train(_tiny_recipe(), tmp_path / "seg.pt", train_patient="A", iterations=30, device="cpu",
                        precision="fp32", log=lambda m: None)
    # the checkpoints written on the way say the run did not finish and has no loss to report
    ck = load_checkpoint(tmp_path / "seg.pt")
    assert not ck["metrics"]["finished"] and ck["metrics"]["loss_last50"] is None


def test_phantoms_synthesised_by_workers_equal_those_built_in_process():
    from trainer.segmentation.seg_data import training_cases

    kw = dict(n_analytic=2, n_realbacked=0, seed=0, log=lambda m: None)
    serial = training_cases("A", (3.0, 3.0, 3.0), **kw)
    parallel = training_cases("A", (3.0, 3.0, 3.0), workers=2, **kw)
    assert [c.name for c in serial] == [c.name for c in parallel] and len(serial) == 4  # 2 real scans + 2 phantoms
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
