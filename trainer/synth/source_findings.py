"""Findings the real source patients bring with them into every real-backed study.

Why: a real-backed study is a real patient's scan with lesions painted in. Whatever that patient already has stays in
the image, so a truth that lists only the painted lesions scores a model that sees the real one as wrong, and trains
it to call the real one normal. Session 18 found exactly that: patient B (the shared DICOM series) has calcified
plaques along its aortic wall (three plaques of 150-250 voxels, up to 1,277 HU, over all 20 slices), and 42 of the
shipped model's 50 "atherosclerosis" calls on B's held-out studies were scored false because the truth said "normal".

Only what can be measured from the image is added, with the same rule for every source, so nothing here is a read by
eye: mural aortic calcification, i.e. voxels at the aortic wall well above the lumen's own (contrast) attenuation.
The amount is a calcium equivalent in mm3 (each voxel weighted by how far above the lumen it is, so a partial-volume
3 mm voxel counts less than a dense 1 mm one), compared with ``MIN_CALCIUM_MM3``, about the smallest plaque set the
atherosclerosis inserter (``lesions.atherosclerosis``) paints: three plaques of 1.2 mm radius.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from trainer.synth.phantom import Phantom, ts_ids

CALCIUM_HU = 400.0  # never below this (cortical bone-like); dense calcium is 400-1,500 HU on CT
OVER_LUMEN_HU = 250.0  # and this far above the lumen's median, so an arterial-phase lumen (~320 HU) is not calcium
DENSE_HU = 1000.0  # a voxel of this attenuation counts fully in the calcium equivalent
MIN_CALCIUM_MM3 = 20.0
SEVERITY_MM3 = (20.0, 600.0)  # calcium equivalent mapped to mild / moderate / severe (thirds of this range)


def lumen_hu(hu: np.ndarray, aorta: np.ndarray) -> float:
    return float(np.median(hu[aorta])) if aorta.any() else 0.0


def calcium_threshold(lumen: float) -> float:
    return max(CALCIUM_HU, lumen + OVER_LUMEN_HU)


def aortic_calcium_mask(hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Voxels within one voxel of the aortic label (plaques sit in the wall, where the label's edge is) that are
    calcium-dense for this scan's lumen."""
    aorta = np.isin(labels, ts_ids("aorta"))
    if not aorta.any():
        return np.zeros(hu.shape, dtype=bool)
    wall = ndimage.binary_dilation(aorta, iterations=1)
    return wall & (hu >= calcium_threshold(lumen_hu(hu, aorta)))


def calcium_mm3(hu: np.ndarray, mask: np.ndarray, lumen: float, voxel_mm3: float) -> float:
    """Calcium equivalent (mm3 of fully dense calcium) of the voxels in ``mask``."""
    w = np.clip((hu[mask] - lumen) / (DENSE_HU - lumen), 0.0, 1.0)
    return float(w.sum()) * voxel_mm3


def severity(mm3: float) -> str:
    lo, hi = SEVERITY_MM3
    t = (mm3 - lo) / (hi - lo)
    return "mild" if t < 1 / 3 else ("moderate" if t < 2 / 3 else "severe")


def source_findings(ph: Phantom, source_calcium: np.ndarray) -> list[dict]:
    """Truth records of the source patient's own findings visible in this study. ``source_calcium``: the source's
    ``aortic_calcium_mask`` carried onto the study grid by the same resampling as the labels. The calcium is measured
    again on the study's own HU and lumen, so a field of view that cuts the plaques off, or a contrast phase that
    brightens the lumen, is taken into account (a voxel no denser than the lumen weighs nothing)."""
    if not source_calcium.any():
        return []
    aorta = np.isin(ph.labels, ts_ids("aorta"))
    mm3 = calcium_mm3(ph.hu, source_calcium, lumen_hu(ph.hu, aorta), float(np.prod(ph.grid.spacing)))
    if mm3 < MIN_CALCIUM_MM3:
        return []
    idx = np.argwhere(source_calcium)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    centre = idx.mean(axis=0)
    plaques = int(ndimage.label(source_calcium, structure=np.ones((3, 3, 3)))[1])
    return [{
        "organ": "aorta", "finding": "atherosclerosis", "inserted": False, "origin": "source_patient",
        "location_voxel": [round(float(v), 1) for v in centre],
        "location_lps_mm": [round(v, 1) for v in ph.voxel_to_lps(centre)],
        "size_mm": None, "severity": severity(mm3), "laterality": None,
        "bbox_voxel": [[int(a), int(b)] for a, b in zip(lo, hi)],
        "details": {"calcium_mm3": round(mm3, 1), "count": plaques},
    }]
