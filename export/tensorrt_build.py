"""`totalfm export tensorrt BUNDLE`: TensorRT engines for this GPU from the bundle's ONNX models, into the bundle.

Official TensorRT 10 Python API: Builder -> network from the ONNX parser -> BuilderConfig (FP16, workspace) with one
optimisation profile per model covering the batch sizes the appliance uses (PROFILES) -> serialized engine. Engines
are stored as tensorrt/<key>.plan, key = engine_key(model, GPU name, TensorRT version) (appliance.bundle), because a
plan is only valid on that GPU model with that TensorRT version; the manifest lists them with their sha256, profile,
precision and parity vs ONNX Runtime on real inputs (export.real_inputs). Parity thresholds for FP16 engines are
looser than the ONNX export's (FP16 arithmetic): embeddings cosine >= 0.999, segmentation argmax >= 99.5%.
Without TensorRT (pip install tensorrt-cu12) it stops with a clear message; nothing in the bundle changes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from appliance.bundle import engine_key, load_bundle
from appliance.trt_runner import TensorRTUnavailable, TRTRunner, gpu_name, import_tensorrt
from export.bundle_build import update_manifest

# (min, opt, max) batch per model; text also bounds the sequence length by the tokenizer's max_length.
PROFILES = {"segmentation": (1, 2, 4), "organ_encoder": (1, 8, 32), "text_encoder": (1, 16, 64)}
FP16_COSINE_MIN = 0.999
FP16_SEG_AGREEMENT_MIN = 0.995


def build_engine(onnx_path: Path, spec, *, fp16: bool = True, workspace_gb: float = 4.0) -> tuple[bytes, dict]:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTUnavailable(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    bmin, bopt, bmax = PROFILES[spec.name]
    profile = builder.create_optimization_profile()
    shapes = {}
    for inp in spec.inputs:
        dims = list(inp["shape"])

        def concrete(b, seq):
            return tuple(b if i == 0 else (seq if isinstance(d, str) else int(d)) for i, d in enumerate(dims))

        ml = int(spec.extra.get("max_length", 64))
        lo, opt, hi = concrete(bmin, 1), concrete(bopt, min(16, ml)), concrete(bmax, ml)
        profile.set_shape(inp["name"], lo, opt, hi)
        shapes[inp["name"]] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTUnavailable(f"TensorRT failed to build an engine for {onnx_path.name} (see the log above)")
    info = {"profiles": shapes, "precision": "fp16" if config.get_flag(trt.BuilderFlag.FP16) else "fp32",
            "build_s": round(time.perf_counter() - t0, 1)}
    return bytes(plan), info


def _parity_feeds(bundle, name: str) -> list[dict[str, np.ndarray]]:
    """Real inputs where the shared data is present; seeded random ones otherwise (e.g. on a bare GPU host)."""
    from appliance.errors import TotalFMError
    from export import real_inputs
    from export.bundle_build import load_tokenizer, random_batches, tokenize

    spec = bundle.model(name)
    n_meas = int(spec.preprocessing.get("n_measurements", 0))
    try:
        if name == "segmentation":
            return real_inputs.seg_batches(spec.preprocessing, n=2)
        if name == "organ_encoder":
            return real_inputs.encoder_batches(spec.preprocessing["input_shape"], batch=8, n_measurements=n_meas)
    except TotalFMError:
        if name == "segmentation":
            return random_batches("segmentation", spec.preprocessing["patch_size"])
        return random_batches("organ_encoder", spec.preprocessing["input_shape"], len(bundle.organs),
                              n_measurements=n_meas, batch=8)
    tok = load_tokenizer(bundle.root / spec.extra["tokenizer"], spec.extra["max_length"])
    prompts = bundle.provenance.get("prompts") or [p for f in bundle.findings for p in f.positive_prompts]
    out = []
    for i in range(0, min(len(prompts), 128), 32):
        ids, mask = tokenize(tok, prompts[i:i + 32])
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def parity_vs_ort(bundle, name: str, runner: TRTRunner) -> dict:
    import onnxruntime as ort

    spec = bundle.model(name)
    sess = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    feeds_list = _parity_feeds(bundle, name)
    if name == "segmentation":
        same = total = 0
        for feeds in feeds_list:
            a = sess.run(None, feeds)[0].argmax(1)
            b = runner.run(feeds)["logits"].argmax(1)
            same += int((a == b).sum())
            total += a.size
        v = same / max(total, 1)
        return {"metric": "argmax_agreement", "value": v, "threshold": FP16_SEG_AGREEMENT_MIN,
                "ok": v >= FP16_SEG_AGREEMENT_MIN, "n": total}
    cos = []
    for feeds in feeds_list:
        a = sess.run(None, feeds)[0].astype(np.float64)
        b = runner.run(feeds)["embedding"].astype(np.float64)
        cos.append((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30))
    c = np.concatenate(cos)
    return {"metric": "min_cosine", "value": float(c.min()), "threshold": FP16_COSINE_MIN,
            "ok": bool(c.min() >= FP16_COSINE_MIN), "n": int(c.size)}


def build_tensorrt(bundle_dir: str | Path, *, models=None, fp16: bool = True, log=print) -> dict:
    trt = import_tensorrt()
    b = load_bundle(bundle_dir)
    gpu = gpu_name()
    version = str(trt.__version__)
    entries, report = {}, {"gpu": gpu, "tensorrt_version": version, "models": {}}
    for name in models or b.model_names():
        spec = b.model(name)
        key = engine_key(name, gpu, version)
        rel = f"tensorrt/{key}.plan"
        log(f"building TensorRT engine {key} ...")
        plan, info = build_engine(spec.path, spec, fp16=fp16)
        (b.root / "tensorrt").mkdir(exist_ok=True)
        (b.root / rel).write_bytes(plan)
        runner = TRTRunner(b.root / rel)
        par = parity_vs_ort(b, name, runner)
        log(f"  {name}: {info['precision']} built in {info['build_s']} s; parity {par['metric']} {par['value']:.5f}")
        if not par["ok"]:
            (b.root / rel).unlink()
            report["models"][name] = {**info, "parity": par, "kept": False}
            continue
        entries[key] = {"file": rel, "model": name, "gpu": gpu, "tensorrt_version": version,
                        "precision": info["precision"], "profiles": info["profiles"], "parity_vs_ort": par,
                        "build_s": info["build_s"]}
        report["models"][name] = {**info, "parity": par, "kept": True, "key": key}

    def edit(m):
        m.setdefault("tensorrt", {}).update(entries)

    update_manifest(b.root, edit)
    return report


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export tensorrt", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--models", nargs="*", help="default: every model in the bundle")
    p.add_argument("--fp32", action="store_true", help="no FP16 (slower; for debugging parity)")
    a = p.parse_args(argv)
    try:
        rep = build_tensorrt(a.bundle, models=a.models, fp16=not a.fp32)
    except TensorRTUnavailable as e:
        print(f"totalfm export tensorrt: {e}")
        return 3
    print(json.dumps(rep, indent=2))
    return 0
