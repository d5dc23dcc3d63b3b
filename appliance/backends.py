"""Inference backends: one `Runner` interface over ONNX Runtime (CPU, CUDA EP, TensorRT EP) and native TensorRT.

`open_model(path, backend="auto"|"cpu"|"cuda"|"tensorrt", threads=None) -> Runner` with `.run(feeds) -> outputs`,
`.backend` (what actually runs) and `.reason` (why this one was chosen), logged at INFO.

Decisions (and why):
- ``auto`` picks the best thing present, in order: a native TensorRT engine from the bundle for this exact GPU and
  TensorRT version (fastest; engines are only valid there) -> ONNX Runtime TensorRT EP -> CUDA EP -> CPU. A missing
  accelerator under ``auto`` is not an error: it falls back to CPU and the reason says what was missing.
- An EXPLICIT ``cuda``/``tensorrt`` that cannot run raises BackendUnavailable naming what is missing and the fix. An
  admin who configured a GPU must not silently get a CPU that is 50x slower (the queue would back up unnoticed).
- ONNX Runtime may accept a provider list and still drop a provider at session creation (e.g. CUDA libraries not
  found); we check ``session.get_providers()`` afterwards and report what really runs.
- Threads: intra-op = the CPUs this process may use (affinity AND cgroup quota: a container limited to 2 CPUs on a
  64-core host must not start 64 threads), inter-op = 1 (our graphs are sequential). Several workers on one host
  should pass threads = cpus // workers (the site config's [worker] threads).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from appliance.errors import TotalFMError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")


class BackendUnavailable(TotalFMError):
    """The requested inference backend cannot run on this host (library, provider or GPU missing)."""


# ------------------------------------------------------------------------------------------------ CPU sizing


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPU quota of this process's cgroup (v2 cpu.max or v1 cfs quota/period), None when unlimited/unknown."""
    try:
        txt = (root / "cpu.max").read_text().split()
        if txt and txt[0] != "max":
            return float(txt[0]) / float(txt[1])
        if txt:
            return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def cpu_count() -> int:
    """CPUs this process may really use: min(affinity mask, cgroup quota rounded up), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


# ------------------------------------------------------------------------------------------------ runners


class Runner:
    """A loaded model. ``run(feeds)`` -> {output name: array}. Not assumed thread-safe by callers."""

    backend: str
    reason: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, reason={self.reason!r})"


class OrtRunner(Runner):
    def __init__(self, session, backend: str, reason: str, threads: int):
        self.session = session
        self.backend = backend
        self.reason = reason
        self.threads = threads
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._input_types = {i.name: i.type for i in session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise TotalFMError(f"model input(s) {missing} not given (model expects {self.input_names})")
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))


class TrtEngineRunner(Runner):
    """A native TensorRT engine via appliance.trt_runner (imported only here, only when an engine is used)."""

    def __init__(self, engine_path: Path, reason: str):
        from appliance import trt_runner  # noqa: PLC0415 - optional (tensorrt extra), GPU hosts only

        self._impl = trt_runner.TRTRunner(engine_path)
        self.backend = "tensorrt-engine"
        self.reason = reason
        self.input_names = list(getattr(self._impl, "input_names", []))
        self.output_names = list(getattr(self._impl, "output_names", []))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._impl.run(feeds)


# ------------------------------------------------------------------------------------------------ selection


def _import_ort():
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise BackendUnavailable("onnxruntime is not installed; install the appliance (pip install -c "
                                 "constraints.txt -e .) or onnxruntime-gpu with the `gpu` extra") from exc
    return ort


def available_providers() -> list[str]:
    return list(_import_ort().get_available_providers())


def _session(ort, path: Path, providers: list, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # a missing provider library is our decision to report, not ORT's stderr noise
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


def native_engine_for(bundle, model_name: str):
    """(EngineSpec, why) for a native TensorRT engine of this bundle usable on this GPU, or (None, why not)."""
    if bundle is None or not bundle.engines(model_name):
        return None, "the bundle has no TensorRT engine for this model"
    try:
        from appliance import trt_runner  # noqa: PLC0415
    except ImportError as exc:
        return None, f"the bundle has TensorRT engines but the TensorRT runtime is not importable ({exc})"
    try:
        gpu, trt_version = trt_runner.gpu_name(), trt_runner.tensorrt_version()
    except Exception as exc:  # no GPU, driver missing, ...
        return None, f"the bundle has TensorRT engines but no usable GPU/TensorRT here ({exc})"
    eng = bundle.engine_for(model_name, gpu, trt_version)
    if eng is None:
        built = ", ".join(e.key for e in bundle.engines(model_name))
        return None, (f"the bundle's TensorRT engines ({built}) were built for another GPU/TensorRT than this "
                      f"{gpu} / TensorRT {trt_version}; rebuild with `totalfm export tensorrt` on this host")
    return eng, f"native TensorRT engine {eng.key} matches this GPU"


def open_model(path: str | Path, backend: str = "auto", threads: int | None = None, *, bundle=None,
               model_name: str | None = None) -> Runner:
    """Load an ONNX model on the best (``auto``) or the requested backend; see the module docstring.

    ``bundle``/``model_name`` (optional) let ``auto``/``tensorrt`` use a native TensorRT engine from the bundle.
    """
    if backend not in BACKENDS:
        raise BackendUnavailable(f"backend {backend!r} is not one of {', '.join(BACKENDS)} (config key "
                                 f"[worker] backend / --backend)")
    path = Path(path)
    if not path.is_file():
        raise BackendUnavailable(f"model file {path} does not exist; check the bundle (`totalfm doctor`)")
    threads = int(threads) if threads else cpu_count()
    notes: list[str] = []

    if backend in ("auto", "tensorrt") and bundle is not None and model_name:
        eng, why = native_engine_for(bundle, model_name)
        if eng is not None:
            try:
                r = TrtEngineRunner(eng.path, why)
                log.info("model %s: backend %s (%s)", path.name, r.backend, r.reason)
                return r
            except Exception as exc:
                why = f"native TensorRT engine {eng.key} failed to load ({type(exc).__name__}: {exc})"
        notes.append(why)

    ort = _import_ort()
    avail = ort.get_available_providers()
    wanted: list[tuple[str, list]] = []
    if backend in ("auto", "tensorrt"):
        wanted.append(("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]))
    if backend in ("auto", "cuda"):
        wanted.append(("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]))
    for name, providers in wanted:
        head = providers[0]
        if head not in avail:
            notes.append(f"ONNX Runtime here has no {head} (installed providers: {', '.join(avail)}; "
                         f"install onnxruntime-gpu with the `gpu` extra on a CUDA host)")
            continue
        try:
            sess = _session(ort, path, providers, threads)
        except Exception as exc:
            notes.append(f"{head} failed to create a session ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        got = sess.get_providers()
        if got and got[0] == head:
            reason = f"ONNX Runtime {head}" + (f" (after: {'; '.join(notes)})" if notes else "")
            r = OrtRunner(sess, f"onnxruntime-{name}", reason, threads)
            log.info("model %s: backend %s (%s)", path.name, r.backend, r.reason)
            return r
        notes.append(f"{head} is installed but ONNX Runtime dropped it at session creation (GPU driver/CUDA/"
                     f"TensorRT libraries missing?); it ran with {got}")
    if backend != "auto" and backend != "cpu":
        raise BackendUnavailable(f"backend {backend!r} was requested but cannot run here: {'; '.join(notes)}. "
                                 f"Set [worker] backend = \"auto\" or \"cpu\", or fix the GPU install")
    sess = _session(ort, path, ["CPUExecutionProvider"], threads)
    reason = (f"requested cpu" if backend == "cpu" else "auto: no GPU backend usable") + \
        f"; {threads} intra-op threads (CPUs available to this process: {cpu_count()})"
    if notes:
        reason += " [" + "; ".join(notes) + "]"
    r = OrtRunner(sess, "onnxruntime-cpu", reason, threads)
    log.info("model %s: backend %s (%s)", path.name, r.backend, r.reason)
    return r


def describe_host() -> dict[str, Any]:
    """What this host offers (for `totalfm doctor` and the benchmark header)."""
    try:
        provs = available_providers()
    except BackendUnavailable as exc:
        provs = [f"unavailable: {exc}"]
    return {"cpus": cpu_count(), "onnxruntime_providers": provs}
