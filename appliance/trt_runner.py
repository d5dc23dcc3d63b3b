"""Native TensorRT engines (optional `tensorrt` extra, GPU hosts only): load a serialized engine and run it.

Imported lazily by appliance.backends, only when a bundle has an engine for this exact GPU + TensorRT version.
No torch, no pycuda: device memory goes through the CUDA runtime (cuda-python if installed, else libcudart via
ctypes - the tensorrt-cu12 wheels pull in nvidia-cuda-runtime-cu12, which ships it).

    r = TRTRunner("bundle/tensorrt/organ_encoder@nvidia-h200@trt10.x.plan")
    out = r.run({"crop": x, "organ_index": idx})     # -> {"embedding": ...}

Engines are built by `totalfm export tensorrt` (export/tensorrt_build.py) with optimisation profiles covering the
batch sizes the appliance uses; a batch outside the profile raises TensorRTUnavailable naming the range.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from appliance.errors import TotalFMError


class TensorRTUnavailable(TotalFMError):
    """TensorRT or the CUDA runtime is missing, the engine does not fit this GPU/TensorRT, or a shape is off."""


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({exc}); install the optional extra on a GPU host: "
            f"`pip install tensorrt-cu12` (TensorRT 10), or run with backend cpu/cuda (ONNX Runtime)") from None
    return trt


def tensorrt_version() -> str:
    return str(import_tensorrt().__version__)


# ------------------------------------------------------------------------------------------------ CUDA runtime


def _cudart_candidates() -> list[str]:
    pats = []
    for sp in sys.path:
        pats += [os.path.join(sp, "nvidia", "cuda_runtime", "lib", "libcudart.so*"),
                 os.path.join(sp, "tensorrt_libs", "libcudart.so*"),
                 os.path.join(sp, "torch", "lib", "libcudart*.so*")]
    for d in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if d:
            pats.append(os.path.join(d, "lib64", "libcudart.so*"))
    pats += ["/usr/lib/x86_64-linux-gnu/libcudart.so*", "/usr/lib64/libcudart.so*"]
    out = []
    for p in pats:
        out += sorted(glob.glob(p), reverse=True)
    return out + ["libcudart.so.12", "libcudart.so"]


@lru_cache(maxsize=1)
def _cudart():
    errors = []
    for cand in _cudart_candidates():
        try:
            lib = ctypes.CDLL(cand)
            lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
            lib.cudaFree.argtypes = [ctypes.c_void_p]
            lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
            lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
            return lib
        except OSError as exc:
            errors.append(str(exc))
    raise TensorRTUnavailable("the CUDA runtime library (libcudart) was not found; install nvidia-cuda-runtime-cu12 "
                              "or the CUDA toolkit")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise TensorRTUnavailable(f"CUDA runtime call {what} failed with error {rc}")


@lru_cache(maxsize=1)
def gpu_name(device: int = 0) -> str:
    """Marketing name of the GPU (engine key part), e.g. 'NVIDIA H200'."""
    try:
        lib = _cudart()
        buf = ctypes.create_string_buffer(8192)  # cudaDeviceProp is ~1 kB; name is its first 256 bytes
        fn = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _check(fn(buf, device), "cudaGetDeviceProperties")
        name = buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip()
        if name:
            return name
    except TensorRTUnavailable:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader", "-i", str(device)],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        if out:
            return out.splitlines()[0].strip()
    raise TensorRTUnavailable("no CUDA GPU found (neither the CUDA runtime nor nvidia-smi reports one)")


class _DeviceBuffer:
    def __init__(self, nbytes: int):
        self.ptr = ctypes.c_void_p()
        self.nbytes = max(int(nbytes), 1)
        _check(_cudart().cudaMalloc(ctypes.byref(self.ptr), self.nbytes), "cudaMalloc")

    def free(self) -> None:
        if self.ptr:
            _cudart().cudaFree(self.ptr)
            self.ptr = ctypes.c_void_p()


class TRTRunner:
    """One deserialized engine + execution context; `run(feeds)` like an ONNX Runtime session (numpy in/out)."""

    def __init__(self, engine_path: str | Path):
        trt = import_tensorrt()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise TensorRTUnavailable(f"TensorRT engine {self.path} not found; rebuild with `totalfm export tensorrt`")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(
                f"TensorRT could not deserialize {self.path} (built for another GPU or TensorRT version?); "
                f"rebuild it on this host with `totalfm export tensorrt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        stream = ctypes.c_void_p()
        _check(_cudart().cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        self._stream = stream
        self._bufs: dict[str, _DeviceBuffer] = {}
        self.backend = "tensorrt-engine"
        self.reason = f"native TensorRT engine {self.path.name}"

    def _buffer(self, name: str, nbytes: int) -> _DeviceBuffer:
        b = self._bufs.get(name)
        if b is None or b.nbytes < nbytes:
            if b is not None:
                b.free()
            b = self._bufs[name] = _DeviceBuffer(nbytes)
        return b

    def profile_range(self, name: str) -> tuple[tuple, tuple, tuple]:
        return tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))  # type: ignore[return-value]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lib = _cudart()
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise TensorRTUnavailable(f"engine input(s) {missing} not given (engine expects {self.input_names})")
        for n in self.input_names:
            a = np.ascontiguousarray(feeds[n], dtype=self._dtypes[n])
            if not self.context.set_input_shape(n, a.shape):
                lo, _, hi = self.profile_range(n)
                raise TensorRTUnavailable(f"input {n} shape {a.shape} is outside the engine's optimisation profile "
                                          f"{lo}..{hi}; rebuild the engine with a wider profile")
            buf = self._buffer(n, a.nbytes)
            _check(lib.cudaMemcpy(buf.ptr, a.ctypes.data, a.nbytes, 1), "cudaMemcpy H2D")
            self.context.set_tensor_address(n, buf.ptr.value)
        outs = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            outs[n] = np.empty(shape, dtype=self._dtypes[n])
            self.context.set_tensor_address(n, self._buffer(n, outs[n].nbytes).ptr.value)
        if not self.context.execute_async_v3(self._stream.value or 0):
            raise TensorRTUnavailable(f"TensorRT execution of {self.path.name} failed")
        _check(lib.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        for n, arr in outs.items():
            _check(lib.cudaMemcpy(arr.ctypes.data, self._bufs[n].ptr, arr.nbytes, 2), "cudaMemcpy D2H")
        return outs

    def close(self) -> None:
        for b in self._bufs.values():
            b.free()
        self._bufs.clear()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
