"""TotalSegmentator adapter against the real, unmodified totalsegmentator() API, with a random-weight model.

One subprocess (clean interpreter, so sys.modules tells the truth) runs both our adapter and a direct API call on a
real CT under a socket guard, and writes what it saw; the tests below each check one property of that run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("totalsegmentator")

REPO = Path(__file__).resolve().parents[2]

RUN = textwrap.dedent(r'''
    import json, socket, sys
    from pathlib import Path
    import numpy as np

    out_dir = Path(sys.argv[1]); ct = sys.argv[2]
    attempts = []
    def _is_loopback(address):
        host = address[0] if isinstance(address, tuple) else str(address)
        return host in ("localhost", "::1") or str(host).startswith("127.") or isinstance(address, (str, bytes))
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    def guarded_connect(self, address):
        if not _is_loopback(address):
            attempts.append(repr(address))
            raise OSError("network disabled in test")
        return real_connect(self, address)
    def guarded_connect_ex(self, address):
        if not _is_loopback(address):
            attempts.append(repr(address))
            raise OSError("network disabled in test")
        return real_connect_ex(self, address)
    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    real_getaddrinfo = socket.getaddrinfo
    def guarded_getaddrinfo(host, *a, **k):
        if host not in (None, "localhost") and not str(host).startswith("127."):
            attempts.append("dns:" + str(host))
            raise OSError("network disabled in test")
        return real_getaddrinfo(host, *a, **k)
    socket.getaddrinfo = guarded_getaddrinfo

    import nibabel as nib
    from appliance.nifti_io import read_nifti
    from trainer.segmentation.totalseg_adapter import (TotalSegmentatorAdapter, our_roi_subset,
                                                       register_trainers_without_package_walk)

    vol = read_nifti(ct)
    labels = TotalSegmentatorAdapter().segment(vol)
    np.save(out_dir / "adapter.npy", labels.array)

    # Direct call of the unmodified API on the file as nibabel loads it (only the trainer lookup is registered:
    # without it nnU-Net imports torchvision, which cannot load with this torch build).
    register_trainers_without_package_walk()
    from totalsegmentator.python_api import totalsegmentator
    direct = totalsegmentator(nib.load(ct), None, task="total", fast=True, roi_subset=our_roi_subset(),
                              device="cpu", quiet=True)
    np.save(out_dir / "direct.npy", np.asarray(direct.dataobj))
    run_attempts = list(attempts)
    # Self-check: the guard must catch a real outgoing request (like TotalSegmentator's usage-stats post).
    import requests
    try:
        requests.post("http://backend.totalsegmentator.com/", timeout=2)
    except Exception:
        pass
    guard_caught = len(attempts) > len(run_attempts)
    json.dump({
        "direct_affine": np.asarray(direct.affine).tolist(),
        "input_affine": nib.load(ct).affine.tolist(),
        "adapter_dtype": str(labels.array.dtype),
        "same_grid": bool(labels.same_grid(vol)),
        "input_shape": list(vol.shape), "adapter_shape": list(labels.shape),
        "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")),
        "network_attempts": run_attempts, "guard_caught_selfcheck": guard_caught,
    }, open(out_dir / "result.json", "w"))
''')


@pytest.fixture(scope="module")
def run(tmp_path_factory, real_ct):
    CT = real_ct / "ts_upper_abdomen" / "ct.nii.gz"  # shared data via the conftest fixture (fails in CI if absent)
    from trainer.segmentation.random_weights import write_random_total_model

    root = tmp_path_factory.mktemp("totalseg")
    weights, home, out = root / "weights", root / "home", root / "out"
    out.mkdir()
    write_random_total_model(weights)
    env = {**os.environ, "TOTALSEG_WEIGHTS_PATH": str(weights), "TOTALSEG_HOME_DIR": str(home),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", RUN, str(out), str(CT)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    return {"result": result, "home": home, "adapter": np.load(out / "adapter.npy"),
            "direct": np.load(out / "direct.npy")}


def test_adapter_output_equals_direct_totalsegmentator_call(run):
    r = run["result"]
    # Direct output is in NIfTI (x, y, z) on the input file's grid; ours is (z, y, x) on the Volume's grid.
    assert np.allclose(r["direct_affine"], r["input_affine"], atol=1e-4)
    direct_zyx = np.transpose(run["direct"], (2, 1, 0))
    assert direct_zyx.shape == run["adapter"].shape
    # The random model must actually predict several classes, or equality would prove nothing.
    assert len(np.unique(run["adapter"])) > 3
    np.testing.assert_array_equal(run["adapter"], direct_zyx)


def test_adapter_output_is_integer_labels_on_input_grid(run):
    r = run["result"]
    assert r["same_grid"] and r["adapter_shape"] == r["input_shape"]
    assert np.issubdtype(np.dtype(r["adapter_dtype"]), np.integer)
    from appliance.ontology import ORGANS
    allowed = {0} | {i for o in ORGANS for i in o.totalseg_ids}
    assert set(np.unique(run["adapter"]).tolist()) <= allowed  # roi_subset keeps only our organs' classes


def test_no_torchvision_or_timm_imported(run):
    assert run["result"]["modules"] == []


def test_no_network_connection_attempted(run):
    assert run["result"]["guard_caught_selfcheck"]  # the guard works, so an empty list means no attempt
    assert run["result"]["network_attempts"] == []


def test_usage_stats_disabled_in_config(run):
    config = json.loads((run["home"] / "config.json").read_text())
    assert config["send_usage_stats"] is False


def test_missing_weights_is_a_clear_error(tmp_path, monkeypatch, real_ct):
    from appliance.errors import SegmentationError
    from appliance.nifti_io import read_nifti
    from trainer.segmentation.totalseg_adapter import TotalSegmentatorAdapter

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    vol = read_nifti(real_ct / "ts_upper_abdomen" / "ct.nii.gz")
    with pytest.raises(SegmentationError, match="TOTALSEG_WEIGHTS_PATH") as info:
        TotalSegmentatorAdapter(tmp_path / "empty").segment(vol)
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in str(info.value)
    assert not (tmp_path / "empty").exists()  # nothing was downloaded or created


def test_segmenter_protocol():
    from trainer.segmentation.base import OrganSegmenter
    from trainer.segmentation.totalseg_adapter import TotalSegmentatorAdapter

    assert isinstance(TotalSegmentatorAdapter("/nonexistent"), OrganSegmenter)
