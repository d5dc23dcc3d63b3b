"""Organ-encoder input preprocessing, shared byte-for-byte by the trainer and the appliance.

``encoder_input(crop, input_shape)`` takes an :class:`appliance.crops.OrganCrop` (its ``.image`` is already HU-windowed
to 0..1 at the organ's recipe spacing and shape) and fits it to the encoder's fixed input grid ``(d, h, w)`` with a
deterministic separable linear resampling (align-corners, edge values kept). No torch: numpy only, so the appliance
and the trainer produce identical float32 arrays for the same crop.
"""
from __future__ import annotations

import numpy as np

from appliance.errors import TotalFMError

__all__ = ["encoder_input", "fit_to_shape"]


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation indices/weights for one axis, align-corners (first/last samples map onto each other)."""
    if n_out == 1 or n_in == 1:
        pos = np.full(n_out, (n_in - 1) / 2.0)
    else:
        pos = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float64)
    return lo, hi, w


def fit_to_shape(array: np.ndarray, shape) -> np.ndarray:
    """Separable linear resampling of a 3D array onto ``shape`` (float32 result, deterministic, no scipy)."""
    a = np.asarray(array, dtype=np.float64)
    if a.ndim != 3:
        raise TotalFMError(f"encoder input must be a 3D crop, got shape {a.shape}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise TotalFMError(f"encoder input_shape must be three positive sizes, got {shape}")
    for axis, n_out in enumerate(shape):
        n_in = a.shape[axis]
        if n_in == n_out:
            continue
        lo, hi, w = _axis_weights(n_in, n_out)
        bshape = [1, 1, 1]
        bshape[axis] = n_out
        w = w.reshape(bshape)
        a = np.take(a, lo, axis=axis) * (1.0 - w) + np.take(a, hi, axis=axis) * w
    return np.ascontiguousarray(a, dtype=np.float32)


def encoder_input(crop, input_shape) -> np.ndarray:
    """OrganCrop (or a plain 3D array windowed 0..1) -> float32 ``[1, d, h, w]`` on the encoder's input grid."""
    image = getattr(crop, "image", crop)
    if image is None:
        status = getattr(crop, "status", "unknown")
        raise TotalFMError(f"organ crop of {getattr(crop, 'organ', '?')} has no image (status {status}); "
                           "only usable crops can be encoded")
    arr = getattr(image, "array", image)
    out = fit_to_shape(np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0), input_shape)
    np.clip(out, 0.0, 1.0, out=out)
    return out[None]
