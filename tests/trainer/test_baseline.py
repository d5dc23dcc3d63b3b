"""Whole-volume baseline: input preprocessing, a couple of real training steps, evaluation through evaluate()."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from trainer.model import baseline  # noqa: E402


def test_volume_input_window_and_grid():
    from appliance.volume import Volume

    arr = np.full((10, 20, 30), -1000.0, np.float32)
    arr[5:, :, :] = 240.0
    v = Volume(arr, spacing=(2.0, 1.0, 1.0))
    x = baseline.volume_input(v, (8, 16, 16))
    assert x.shape == (1, 8, 16, 16) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)


def test_train_and_evaluate_end_to_end(tmp_path):
    out = tmp_path / "b"
    rc = baseline.main(["--synth-train", "3", "--synth-val", "2", "--synth-test", "2", "--max-steps", "2",
                        "--batch-size", "3", "--grid", "16", "32", "32", "--dim", "32", "--depth", "1",
                        "--heads", "2", "--embed-dim", "32", "--out", str(out), "--bootstrap", "10",
                        "--threads", "1", "--stem", "conv", "--pool", "mean_max", "--anchor-weight", "1"])
    assert rc == 0
    s = json.loads((out / "baseline_summary.json").read_text())["baseline"]
    assert s["steps"] == 2 and s["samples_seen"] == 6 and s["gflops_per_study"] > 0
    lines = (out / "baseline_loss.csv").read_text().splitlines()
    assert lines[0] == "step,seconds,loss,logit_scale" and len(lines) == 3
    ev = json.loads((out / "baseline_eval.json").read_text())
    assert ev["n_studies"] == {"val": 2, "test": 2}
    assert any(v["n"] == 2 for v in ev["findings"].values())  # whole-volume embedding scored for present organs
    assert "not a diagnosis" in (out / "baseline_eval.md").read_text()
    ck = torch.load(out / "baseline.pt", weights_only=False)
    assert ck["format"] == "totalfm-baseline-ckpt" and ck["grid"] == [16, 32, 32]
    # the baseline follows the organ model's encoder family and objective, and says which findings are not zero-shot
    assert ck["model_config"]["stem"] == "conv" and ck["model_config"]["pool"] == "mean_max"
    assert ck["anchor"]["weight"] == 1.0 and ck["anchor"]["prompt_supervised"]
    assert {k for k, v in ev["findings"].items() if v["prompt_supervised"]} == set(ck["anchor"]["prompt_supervised"])
    # --reuse: the trained baseline evaluated again without training: same weights, same scores, its own run's cost
    again = tmp_path / "again"
    assert baseline.main(["--synth-train", "3", "--synth-val", "2", "--synth-test", "2", "--reuse", str(out),
                          "--out", str(again), "--bootstrap", "10", "--threads", "1"]) == 0
    s2 = json.loads((again / "baseline_summary.json").read_text())["baseline"]
    assert (s2["steps"], s2["samples_seen"], s2["train_seconds"]) == (2, 6, s["train_seconds"])
    assert not (again / "baseline_loss.csv").exists()  # nothing trained
    ev2 = json.loads((again / "baseline_eval.json").read_text())
    assert {k: v["auroc"] for k, v in ev2["findings"].items()} == {k: v["auroc"] for k, v in ev["findings"].items()}
    ck2 = torch.load(again / "baseline.pt", weights_only=False)
    assert all(torch.equal(ck2["image"][k], v) for k, v in ck["image"].items())


def test_reuse_refuses_what_is_not_a_trained_baseline(tmp_path):
    torch.save({"format": "totalfm-encoder-ckpt"}, tmp_path / "baseline.pt")
    with pytest.raises(SystemExit, match="not a whole-volume baseline checkpoint"):
        baseline.load_trained(tmp_path)
    with pytest.raises(FileNotFoundError):
        baseline.load_trained(tmp_path / "missing")
