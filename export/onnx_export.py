"""torch module -> ONNX file (dynamo exporter, opset 18, dynamic batch) + ONNX Runtime offline graph optimisation.

Why BASIC offline optimisation and not ALL: ORT's "basic" rewrites (constant folding, redundant node elimination,
Conv+BN/Add fusions in ONNX ops) are provider independent, so the saved file still runs on CPU, CUDA and TensorRT;
"extended/all" fusions emit ORT-internal contrib ops tied to one execution provider and must be applied at session
creation on the target host instead (appliance.backends sets ORT_ENABLE_ALL there).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)


def export_onnx(
    module,
    example_inputs: tuple,
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    optimize: bool = True,
) -> Path:
    """Export `module(*example_inputs)` to `path`. dynamic_axes: {input name: {axis: symbolic name}} (batch axes).

    Uses torch.onnx.export(dynamo=True, opset_version=18) with `dynamic_shapes` built from dynamic_axes; the
    exported graph is then checked by onnx.checker and optimised (BASIC) with ONNX Runtime.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = None
    if dynamic_axes:
        dynamic_shapes = []
        for name in input_names:
            spec = {}
            for axis, sym in (dynamic_axes.get(name) or {}).items():
                if sym not in dims:
                    dims[sym] = torch.export.Dim(sym, min=1, max=4096)
                spec[axis] = dims[sym]
            dynamic_shapes.append(spec or None)
        dynamic_shapes = tuple(dynamic_shapes)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module, tuple(example_inputs), dynamo=True, opset_version=18,
            input_names=list(input_names),
            dynamic_shapes=dynamic_shapes, verbose=False, report=False,
        )
    prog.save(str(path), external_data=False)
    import onnx

    m = onnx.load(str(path))
    _rename_outputs(m, list(output_names))
    onnx.save(m, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    if optimize:
        optimize_onnx(path, path)
    return path


def _rename_outputs(model, names: list[str]) -> None:
    """Give the graph outputs the contract names. Why not torch's output_names: the dynamo exporter names internal
    values after their aten op (an nn.Embedding yields a value called "embedding"), which then collides with an
    output called "embedding" and breaks SSA form. Internal values holding a wanted name are renamed first."""
    g = model.graph
    if len(names) != len(g.output):
        raise ValueError(f"model has {len(g.output)} outputs, {len(names)} names given")

    def rename(old: str, new: str) -> None:
        for n in g.node:
            for i, x in enumerate(n.input):
                if x == old:
                    n.input[i] = new
            for i, x in enumerate(n.output):
                if x == old:
                    n.output[i] = new
        for coll in (g.output, g.value_info, g.input):
            for v in coll:
                if v.name == old:
                    v.name = new

    out_names = [o.name for o in g.output]
    for new in names:
        if new not in out_names and any(new in n.output or new in n.input for n in g.node):
            rename(new, new + "__internal")
    for o, new in zip(list(out_names), names):
        if o != new:
            rename(o, new)


def optimize_onnx(src: str | Path, dst: str | Path, level: str = "basic") -> Path:
    """ONNX Runtime offline graph optimisation (portable level by default); writes dst."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=dst.parent)
    os.close(fd)
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = tmp
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def ort_session(path: str | Path, threads: int = 1):
    """A plain CPU session (export-time parity and prompt embedding; the appliance uses appliance.backends)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def io_signature(path: str | Path) -> tuple[list[dict], list[dict]]:
    """inputs/outputs of an ONNX file as manifest entries [{name, shape, dtype}] (symbolic dims as strings)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}

    def entry(v):
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return {"name": v.name, "shape": shape, "dtype": dtype}

    return [entry(v) for v in m.graph.input if v.name not in init], [entry(v) for v in m.graph.output]
