"""Real inputs for export-time parity and benchmarks: organ crops and CT patches from the shared real scans.

Crops come from appliance.crops.crop_organs on the real scans with their TotalSegmentator labels and go through
appliance.preprocess.encoder_input (the exact runtime path); segmentation patches are the real CT after the same
canonicalisation, resampling and normalisation as appliance.segment.segment_volume.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from appliance.errors import TotalFMError

REPO = Path(__file__).resolve().parents[1]
SCANS = (("ts_abdomen_pelvis", "ct.nii.gz", "seg_totalsegmentator_fast.nii.gz"),
         ("ts_upper_abdomen", "ct.nii.gz", "seg_totalsegmentator_fast.nii.gz"))


def shared_real_ct() -> Path:
    env = os.environ.get("TOTALFM_SHARED_DATA")
    p = (Path(env) if env else REPO.parent / "shared" / "data") / "real-ct"
    if not p.is_dir():
        raise TotalFMError(f"shared real CT data not found at {p}; set TOTALFM_SHARED_DATA (parity needs real crops)")
    return p


@lru_cache(maxsize=4)
def _scan(name: str):
    from appliance.nifti_io import read_nifti

    root = shared_real_ct()
    for n, ct, seg in SCANS:
        if n == name:
            return read_nifti(root / n / ct), read_nifti(root / n / seg)
    raise KeyError(name)


def organ_crops(input_shape, scans=("ts_abdomen_pelvis", "ts_upper_abdomen"),
                measurements: int = 0) -> tuple:
    """-> crops float32 [N,1,d,h,w], organ_index int64 [N], names [(scan, organ)] for every usable crop; with
    ``measurements`` also their organ measurements float32 [N,K] (a fourth item)."""
    from appliance import ontology
    from appliance.crops import crop_organs
    from appliance.preprocess import encoder_input, measurements_spec, organ_measurements

    idx = {o.name: i for i, o in enumerate(ontology.ORGANS)}
    xs, oi, names, ms = [], [], [], []
    for s in scans:
        vol, lab = _scan(s)
        for organ, crop in crop_organs(vol, lab, label_space="totalseg").present().items():
            xs.append(encoder_input(crop, input_shape))
            oi.append(idx[organ])
            names.append((s, organ))
            if measurements:
                ms.append(organ_measurements(crop, measurements_spec(measurements)))
    if not xs:
        raise TotalFMError("no usable organ crop in the shared real scans")
    out = (np.stack(xs).astype(np.float32), np.asarray(oi, dtype=np.int64), names)
    return out + (np.stack(ms).astype(np.float32),) if measurements else out


def encoder_batches(input_shape, batch: int = 4, limit: int | None = None,
                    n_measurements: int = 0) -> list[dict[str, np.ndarray]]:
    """Feeds for the organ encoder from the real scans (crop, organ_index, and measurements when it takes them)."""
    got = organ_crops(tuple(int(v) for v in input_shape), measurements=int(n_measurements))
    x, oi = got[0], got[1]
    m = got[3] if n_measurements else None
    if limit:
        x, oi = x[:limit], oi[:limit]
        m = m[:limit] if m is not None else None
    out = []
    for i in range(0, len(x), batch):
        feeds = {"crop": x[i:i + batch], "organ_index": oi[i:i + batch]}
        if m is not None:
            feeds["measurements"] = m[i:i + batch]
        out.append(feeds)
    return out


def seg_patches(preprocessing: dict, n: int = 2, scan: str = "ts_abdomen_pelvis") -> np.ndarray:
    """n real CT patches [n,1,d,h,w], normalised exactly as segment_volume does, spread along z."""
    from appliance.segment import normalise
    from appliance.volume import resample, to_canonical

    vol, _ = _scan(scan)
    work = resample(to_canonical(vol), spacing=tuple(float(s) for s in preprocessing["spacing_mm"]), order=1)
    img = normalise(work.array, preprocessing)
    patch = [int(p) for p in preprocessing["patch_size"]]
    pad_value = (float(preprocessing["clip_hu"][0]) - float(preprocessing["mean"])) / float(preprocessing["std"])
    pads = [(0, max(0, p - s)) for p, s in zip(patch, img.shape)]
    img = np.pad(img, pads, constant_values=pad_value)
    out = []
    for k in range(n):
        z0 = int(round((img.shape[0] - patch[0]) * (k + 0.5) / n)) if n > 1 else (img.shape[0] - patch[0]) // 2
        y0 = (img.shape[1] - patch[1]) // 2
        x0 = (img.shape[2] - patch[2]) // 2
        out.append(img[z0:z0 + patch[0], y0:y0 + patch[1], x0:x0 + patch[2]])
    return np.stack(out)[:, None].astype(np.float32)


def seg_batches(preprocessing: dict, n: int = 2) -> list[dict[str, np.ndarray]]:
    return [{"image": seg_patches(preprocessing, n)}]
