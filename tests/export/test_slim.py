"""The slim bundle's uint8 word-embedding table: same rows out (within the per-row quantisation step), both for
Gather and GatherND, run through ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.slim import quantize_embedding_tables


def _table_model(op: str, table: np.ndarray) -> onnx.ModelProto:
    idx_shape = [None, 1] if op == "GatherND" else [None]
    node = helper.make_node(op, ["table", "ids"], ["out"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, idx_shape)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(table, "table")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_uint8_rows_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    table = (rng.normal(size=(12000, 16)) * rng.uniform(0.01, 1.0, size=(12000, 1))).astype(np.float32)
    for op in ("Gather", "GatherND"):
        src, dst = tmp_path / f"{op}.onnx", tmp_path / f"{op}.slim.onnx"
        onnx.save(_table_model(op, table), src)
        info = quantize_embedding_tables(src, dst)
        assert len(info) == 1 and info[0]["shape"] == [12000, 16]
        ids = np.array([0, 5, 11999, 42], dtype=np.int64)
        feed = ids[:, None] if op == "GatherND" else ids
        out = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"ids": feed})[0]
        ref = table[ids]
        step = (ref.max(1) - ref.min(1)) / 255
        assert out.shape == ref.shape
        assert np.all(np.abs(out - ref) <= step[:, None] / 2 + 1e-6)  # at most half a quantisation step per row
        assert dst.stat().st_size < src.stat().st_size / 2.5  # 16-wide rows: 16 B of uint8 + 8 B scale/min vs 64 B


def test_a_refused_slim_leaves_the_existing_output_untouched(tmp_path):
    """The embedded bundle is the usual --out: a slim refused at its gate must not delete it (session 7 lost it)."""
    import pytest

    from export.slim import slim_bundle
    from export.untrained import build_untrained_bundle

    src = build_untrained_bundle(tmp_path / "src")  # no INT8 text encoder variant: the gate refuses
    out = tmp_path / "embedded"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(SystemExit, match="nothing written"):
        slim_bundle(src, out, log=lambda s: None)
    assert (out / "manifest.json").read_text() == "{}" and not list(tmp_path.glob(".*slim-tmp"))
