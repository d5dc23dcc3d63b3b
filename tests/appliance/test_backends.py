"""Inference backends on a CPU-only host: auto -> CPU with a reason, an explicit GPU backend that cannot run is an
error naming what is missing, thread counts follow the cgroup quota."""

import numpy as np
import pytest

from appliance import backends
from appliance.backends import BackendUnavailable, cpu_count, open_model


@pytest.fixture(scope="module")
def add_one(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    g = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "add_one", [x], [y], [one])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path_factory.mktemp("m") / "add_one.onnx"
    onnx.save(m, p)
    return p


def test_auto_runs_on_cpu_and_says_why(add_one):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has a CUDA provider; the CPU fallback is not what auto picks here")
    r = open_model(add_one, "auto", threads=1)
    assert r.backend == "onnxruntime-cpu"
    assert "no GPU backend usable" in r.reason and "CUDAExecutionProvider" in r.reason
    out = r.run({"x": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(out["y"], np.ones((2, 3), np.float32))
    assert r.input_names == ["x"] and r.output_names == ["y"] and r.threads == 1


def test_explicit_gpu_backend_that_cannot_run_is_an_error(add_one):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present")
    for b in ("cuda", "tensorrt"):
        with pytest.raises(BackendUnavailable, match="cannot run here.*CUDAExecutionProvider|TensorrtExecutionProvider"):
            open_model(add_one, b)


def test_bad_requests_are_explained(add_one, tmp_path):
    with pytest.raises(BackendUnavailable, match="not one of"):
        open_model(add_one, "gpu")
    with pytest.raises(BackendUnavailable, match="does not exist"):
        open_model(tmp_path / "nope.onnx")
    r = open_model(add_one, "cpu", threads=1)
    with pytest.raises(Exception, match="not given"):
        r.run({})


def test_threads_follow_the_cgroup_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert backends._cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert backends._cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert backends._cgroup_cpu_limit(v1) == 2.0
    monkeypatch.setattr(backends, "_cgroup_cpu_limit", lambda root=None: 1.5)
    assert cpu_count() == min(2, len(__import__("os").sched_getaffinity(0)))
    monkeypatch.setattr(backends, "_cgroup_cpu_limit", lambda root=None: None)
    assert cpu_count() == len(__import__("os").sched_getaffinity(0))


def test_native_engine_is_only_used_for_this_gpu():
    class FakeBundle:  # a bundle without engines
        def engines(self, model=None):
            return []
    eng, why = backends.native_engine_for(FakeBundle(), "segmentation")
    assert eng is None and "no TensorRT engine" in why
