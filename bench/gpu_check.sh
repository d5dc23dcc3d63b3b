#!/usr/bin/env bash
# GPU check for the exporter (issue 6): TensorRT engines for a bundle, parity vs ONNX Runtime, and latency of
# TensorRT vs torch CUDA vs ORT CUDA vs ORT CPU. One self-contained run, < 6 minutes; the LAST line of stdout is
# one JSON object (everything before it is progress). Run from the repository root on a lent GPU machine:
#
#     bash bench/gpu_check.sh [BUNDLE_DIR]
#
# BUNDLE_DIR: a model bundle. Default: $TOTALFM_BUNDLE, else ./gpu_bundle, else one is built here (needs torch +
# onnxscript). To take one along, build it BEFORE the run on a CPU machine (5 MB, ~1 min; real architectures -
# ViT-tiny organ encoder, U-Net 64^3 - with random weights, which is fine for latency and parity):
#
#     .venv/bin/python bench/gpu_check.sh --prepare gpu_bundle      (a path inside the repo so it travels)
#
# What it tries, and reports in the JSON whatever was (not) possible:
#   1. the Python it finds (.venv/bin/python, else python3), nvidia-smi;
#   2. if `tensorrt` is not importable: pip install tensorrt-cu12 (no retries, 5 s timeout: hosts without network
#      fail fast); if ONNX Runtime has no CUDA provider: pip install onnxruntime-gpu into a SEPARATE --target dir
#      (so the CPU onnxruntime is not broken) used only for the ORT-CUDA measurement;
#   3. totalfm export tensorrt on a copy of the bundle (FP16 engines, profiles, parity vs ORT);
#      (GPU_CHECK_NO_PIP=1 skips both installs)
#   4. latency (median of 20) per model: TensorRT engine, ORT CUDA, torch CUDA (same architecture), ORT CPU.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
RUN="$WORK/gpu_check_run.py"
cat >"$RUN" <<'EOF'
import json, os, shutil, sys, time, traceback
from pathlib import Path
import numpy as np

sys.path.insert(0, os.getcwd())
R = {"checks": {}}


def note(k, v):
    R["checks"][k] = v
    print(f"[gpu_check] {k}: {v}", file=sys.stderr, flush=True)


def build_models():
    import torch
    from trainer.model.vit3d import OrganEncoder, config_for
    from trainer.segmentation import unet
    from export.untrained import _modules, write_word_tokenizer
    torch.manual_seed(0)
    enc = OrganEncoder(config_for("tiny")).eval()
    seg = unet.build().eval()
    pre = {"spacing_mm": [3.0, 3.0, 3.0], "patch_size": [64, 64, 64], "clip_hu": [-1000.0, 1000.0], "mean": 0.0,
           "std": 500.0, "label_space": "organ", "class_ids": list(range(17)), "step": 0.5}
    return enc, seg, pre


def prepare(out):
    import tempfile, torch
    from export.bundle_build import build_bundle
    from export.untrained import _modules, write_word_tokenizer
    torch.set_num_threads(2)
    enc, seg, pre = build_models()
    _, _, TinyText = _modules()
    td = Path(tempfile.mkdtemp())
    vocab = write_word_tokenizer(td / "tok.json")
    build_bundle(out, segmentation=(seg, pre), organ_encoder=(enc, {"input_shape": list(enc.cfg.input_shape)}),
                 text_encoder=(TinyText(vocab, enc.cfg.embed_dim).eval(), td / "tok.json", 32), logit_scale=14.3,
                 provenance={"recipe": "gpu_check", "data": "random weights, real architectures (latency/parity only)",
                             "metrics": {}}, bundle_id="gpu-check-random", overwrite=True, log=print)


def lat(fn, n=20):
    fn(); fn()
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); t.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(t)), 3)


def feeds_for(b, name, batch):
    rng = np.random.default_rng(0)
    s = b.model(name)
    if name == "segmentation":
        return {"image": rng.standard_normal((batch, 1, *s.preprocessing["patch_size"])).astype(np.float32)}
    if name == "organ_encoder":
        return {"crop": rng.random((batch, 1, *s.preprocessing["input_shape"]), dtype=np.float32),
                "organ_index": rng.integers(0, 16, batch).astype(np.int64)}
    return {"input_ids": rng.integers(2, 50, (batch, 16)).astype(np.int64),
            "attention_mask": np.ones((batch, 16), np.int64)}


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--prepare":
        prepare(sys.argv[2]); return
    note("tensorrt_pip", os.environ.get("TRT_PIP"))
    note("ort_gpu_pip", os.environ.get("ORT_PIP"))
    for mod in ("torch", "onnxruntime", "tensorrt", "onnxscript"):
        try:
            m = __import__(mod); note(f"{mod}_version", getattr(m, "__version__", "?"))
        except Exception as e:
            note(f"{mod}_version", f"not importable: {e}")
    torch = None
    try:
        import torch as _t
        torch = _t
        note("torch_cuda", bool(torch.cuda.is_available()) and torch.cuda.get_device_name(0))
    except Exception as e:
        note("torch_cuda", f"no: {e}")
    bundle = os.environ.get("BUNDLE") or ""
    work = Path(os.environ["WORK"])
    if not bundle:
        try:
            prepare(work / "built_bundle"); bundle = str(work / "built_bundle"); note("bundle_source", "built here")
        except Exception as e:
            note("bundle_source", f"no bundle given and building one failed: {e}"); return
    dst = work / "bundle"
    shutil.copytree(bundle, dst, dirs_exist_ok=True)
    from appliance.bundle import load_bundle
    b = load_bundle(dst)
    note("bundle", b.bundle_id)
    batches = {"segmentation": 2, "organ_encoder": 8, "text_encoder": 16}
    L = {n: {"batch": batches[n]} for n in b.model_names()}
    # --- TensorRT engines + parity
    try:
        from export.tensorrt_build import build_tensorrt
        rep = build_tensorrt(dst, log=lambda s: print(s, file=sys.stderr, flush=True))
        note("tensorrt_build", rep)
        from appliance.trt_runner import TRTRunner
        b = load_bundle(dst)
        for e in b.engines():
            r = TRTRunner(e.path)
            f = feeds_for(b, e.model, batches[e.model])
            L[e.model]["ms_tensorrt_fp16"] = lat(lambda: r.run(f))
    except Exception as e:
        note("tensorrt_build", f"not possible: {type(e).__name__}: {e}")
    # --- ORT CPU and CUDA (CUDA from the side install if needed, in a clean sub-process-free import order)
    import onnxruntime as ort
    def ort_lat(providers, key):
        for n in b.model_names():
            try:
                so = ort.SessionOptions(); so.log_severity_level = 3
                s = ort.InferenceSession(str(b.model(n).path), so, providers=providers)
                if providers[0] not in s.get_providers():
                    L[n][key] = f"provider not active ({s.get_providers()})"; continue
                f = feeds_for(b, n, batches[n])
                L[n][key] = lat(lambda: s.run(None, f), 20 if "CUDA" in providers[0] else 5)
            except Exception as e:
                L[n][key] = f"failed: {e}"
    ort_lat(["CPUExecutionProvider"], "ms_ort_cpu")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        ort_lat(["CUDAExecutionProvider", "CPUExecutionProvider"], "ms_ort_cuda")
    else:
        note("ort_cuda", "CUDAExecutionProvider not available in this onnxruntime (see ort_gpu_pip)")
    # --- torch CUDA (same architectures; weights random unless the bundle was built here from them)
    if torch is not None and torch.cuda.is_available():
        try:
            enc, seg, _ = build_models()
            with torch.no_grad():
                for n, m in (("organ_encoder", enc), ("segmentation", seg)):
                    if n not in L:
                        continue
                    f = feeds_for(b, n, batches[n])
                    m = m.cuda()
                    ins = [torch.from_numpy(v).cuda() for v in f.values()]
                    def go():
                        m(*ins); torch.cuda.synchronize()
                    L[n]["ms_torch_cuda_fp32"] = lat(go)
                    m16 = m.half() if n == "segmentation" else None
                    if m16 is not None:
                        i16 = [ins[0].half()]
                        def go16():
                            m16(*i16); torch.cuda.synchronize()
                        L[n]["ms_torch_cuda_fp16"] = lat(go16)
        except Exception as e:
            note("torch_cuda_bench", f"failed: {e}")
    for n, d in L.items():
        t = d.get("ms_tensorrt_fp16")
        if isinstance(t, float):
            for k in ("ms_torch_cuda_fp32", "ms_ort_cuda", "ms_ort_cpu"):
                if isinstance(d.get(k), float):
                    d["speedup_tensorrt_vs_" + k[3:]] = round(d[k] / t, 2)
    R["latency_ms"] = L


try:
    main()
except Exception as e:
    R["error"] = f"{type(e).__name__}: {e}"
    traceback.print_exc()
print(json.dumps(R, default=str))
EOF
if [ "${1:-}" = "--prepare" ]; then
  exec "$PY" "$RUN" --prepare "${2:-gpu_bundle}"
fi
BUNDLE=${1:-${TOTALFM_BUNDLE:-}}
[ -z "$BUNDLE" ] && [ -f gpu_bundle/manifest.json ] && BUNDLE=gpu_bundle
echo "python: $PY; work dir: $WORK; bundle: ${BUNDLE:-<build here>}" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || echo "nvidia-smi failed" >&2

PIP_LOG="$WORK/pip.log"
TRT_PIP="not needed"
if [ -n "${GPU_CHECK_NO_PIP:-}" ]; then TRT_PIP="skipped (GPU_CHECK_NO_PIP)"
elif ! "$PY" -c "import tensorrt" 2>/dev/null; then
  if timeout 90 "$PY" -m pip install -q --retries 0 --timeout 5 tensorrt-cu12 >"$PIP_LOG" 2>&1; then
    TRT_PIP="installed"; else TRT_PIP="failed: $(tail -n 2 "$PIP_LOG" | tr '\n"' '  ')"; fi
fi
ORT_PIP="not needed"
EXTRA_PATH=""
if [ -n "${GPU_CHECK_NO_PIP:-}" ]; then ORT_PIP="skipped (GPU_CHECK_NO_PIP)"
elif ! "$PY" -c "import onnxruntime as o,sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" 2>/dev/null; then
  if timeout 60 "$PY" -m pip install -q --retries 0 --timeout 5 --target "$WORK/ort_gpu" onnxruntime-gpu >>"$PIP_LOG" 2>&1; then
    ORT_PIP="installed to $WORK/ort_gpu (used first on PYTHONPATH)"; EXTRA_PATH="$WORK/ort_gpu"
  else ORT_PIP="failed: $(tail -n 2 "$PIP_LOG" | tr '\n"' '  ')"; fi
fi
export TRT_PIP ORT_PIP WORK BUNDLE
PYTHONPATH="${EXTRA_PATH:+$EXTRA_PATH:}${PYTHONPATH:-}" timeout 200 "$PY" "$RUN"
rc=$?
[ $rc -ne 0 ] && echo "{\"error\": \"gpu check python step exited with $rc (124 = timeout)\", \"tensorrt_pip\": \"$TRT_PIP\", \"ort_gpu_pip\": \"$ORT_PIP\"}"
exit 0
