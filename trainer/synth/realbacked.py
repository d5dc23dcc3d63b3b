"""Real-backed phantoms: one real CT with its TotalSegmentator labels becomes many studies by random affine and
elastic deformation, field-of-view crops, intensity and contrast-phase changes. Labels follow the very same
coordinate map (nearest neighbour), so they stay on the anatomy.

The data directory is passed in (or $TOTALFM_SHARED_DATA); nothing is copied into the repository.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from appliance.errors import VolumeFormatError
from appliance.nifti_io import read_nifti
from appliance.ontology import TOTALSEG_ID_BY_NAME as TS
from appliance.volume import Volume, to_canonical
from trainer.synth.analytic import HU, PHASE_INDEX
from trainer.synth.source_findings import aortic_calcium_mask, source_findings
from trainer.synth.grid import Grid
from trainer.synth.phantom import Phantom

SOURCES = {  # name -> (folder, image, labels, contrast phase of the source)
    "ts_abdomen_pelvis": ("ts_abdomen_pelvis", "ct.nii.gz", "seg_totalsegmentator_fast.nii.gz", "non_contrast"),
    "ts_upper_abdomen": ("ts_upper_abdomen", "ct.nii.gz", "seg_totalsegmentator_fast.nii.gz", "non_contrast"),
}
# organ -> HU key in analytic.HU: what contrast adds on top of a non-contrast source
ENHANCE = {"liver": "liver", "spleen": "spleen", "kidney_left": "kidney", "kidney_right": "kidney",
           "pancreas": "pancreas", "aorta": "blood", "heart": "blood", "iliac_artery_left": "blood",
           "iliac_artery_right": "blood", "inferior_vena_cava": "vein", "iliac_vena_left": "vein",
           "iliac_vena_right": "vein", "portal_vein_and_splenic_vein": "vein", "adrenal_gland_left": "adrenal",
           "adrenal_gland_right": "adrenal"}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    p = Path(data_dir) if data_dir else (Path(os.environ["TOTALFM_SHARED_DATA"]) if os.environ.get(
        "TOTALFM_SHARED_DATA") else Path(__file__).resolve().parents[3] / "shared" / "data")
    if not (p / "real-ct").is_dir():
        raise VolumeFormatError(f"real CT data not found under {p}/real-ct; pass --data-dir or set "
                                f"TOTALFM_SHARED_DATA to the shared data folder")
    return p


# the real DICOM series (contrast enhanced, portal venous), read through the appliance's DICOM reader once present
DICOM_SOURCE = ("ts_dicom_series", "dicom", "seg_totalsegmentator_fast.nii.gz", "portal_venous")
# Which real patient each source is (never put one patient on both sides of a split): the two NIfTI scans are one
# patient (the upper-abdomen scan is a slab of the abdomen-pelvis one), the DICOM series is another.
SOURCE_PATIENT = {"ts_abdomen_pelvis": "A", "ts_upper_abdomen": "A", DICOM_SOURCE[0]: "B"}
PATIENTS = ("A", "B")


def source_patient(source: str | None) -> str | None:
    """"A" / "B" for a real-backed source name, None otherwise (analytic)."""
    return SOURCE_PATIENT.get(str(source)) if source else None


def sources_of_patient(patient: str) -> list[str]:
    if patient not in PATIENTS:
        raise VolumeFormatError(f"unknown source patient {patient!r}; use one of {', '.join(PATIENTS)}")
    return [s for s in available_sources() if SOURCE_PATIENT.get(s) == patient]


def available_sources() -> list[str]:
    names = sorted(SOURCES)
    if importlib.util.find_spec("appliance.dicom_io") is not None:
        names.append(DICOM_SOURCE[0])
    return names


def _read_dicom(folder: Path):
    from appliance.dicom_io import read_series  # landed by another engineer; optional until then

    vol = read_series(folder)
    vol = vol[0] if isinstance(vol, tuple) else vol
    return Volume(np.asarray(vol.array, dtype=np.float32), vol.spacing, vol.origin, vol.direction, dict(vol.meta))


@lru_cache(maxsize=4)
def load_source(data_dir: str, name: str):
    folder, img, lab, phase = DICOM_SOURCE if name == DICOM_SOURCE[0] else SOURCES[name]
    base = Path(data_dir) / "real-ct" / folder
    raw = _read_dicom(base / img) if name == DICOM_SOURCE[0] else read_nifti(base / img, dtype=np.float32)
    ct = to_canonical(raw)
    seg = to_canonical(read_nifti(base / lab))
    if not ct.same_grid(seg, tol_mm=1e-2):  # same shape is not enough: a flipped axis would misplace every organ
        raise VolumeFormatError(f"{folder}: CT {ct.shape} at {ct.spacing} mm origin {ct.origin} and labels "
                                f"{seg.shape} at {seg.spacing} mm origin {seg.origin} are not on one grid")
    return ct, seg.array.astype(np.uint8), phase


@lru_cache(maxsize=4)
def source_calcium(data_dir: str, name: str) -> np.ndarray:
    """uint8 mask of the source patient's own aortic wall calcium (``source_findings.aortic_calcium_mask``)."""
    ct, seg, _ = load_source(data_dir, name)
    return aortic_calcium_mask(np.asarray(ct.array, dtype=np.float32), seg).astype(np.uint8)


def build_real_backed(rng: np.random.Generator, *, data_dir, phase: str, age: int, source: str | None = None,
                      shape=None, spacing=None, elastic_mm: float = 6.0) -> Phantom:
    """``source``: a source name, a patient ("A" or "B": one of that patient's sources, drawn from ``rng``), or None
    (any available source, drawn from ``rng``: the original behaviour, so old seeds give the same studies)."""
    data_dir = str(resolve_data_dir(data_dir))
    if source in PATIENTS:
        choices = sources_of_patient(source)
        if not choices:
            raise VolumeFormatError(f"no real CT source of patient {source} is available")
        source = str(rng.choice(choices))
    source = source or str(rng.choice(available_sources()))
    if source not in available_sources():
        raise VolumeFormatError(f"unknown or unavailable real CT source {source!r}; available: "
                                f"{', '.join(available_sources())}")
    ct, seg, src_phase = load_source(data_dir, source)
    src_sp = np.asarray(ct.spacing)
    src_shape = np.asarray(ct.shape)
    # output grid: a random crop of the source field of view (or the size/spacing asked for)
    fov = src_shape * src_sp * rng.uniform(0.75, 1.0, 3)  # field of view kept from the source (mm, z y x)
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64)
    elif shape is not None:
        sp = fov / np.asarray(shape)
    else:
        sp = src_sp * rng.uniform(0.9, 1.1, 3)
    if shape is None:
        shape = np.maximum(8, np.round(fov / sp)).astype(int)
    shape = tuple(int(n) for n in shape)
    src_centre_idx = (src_shape - 1) / 2.0
    src_centre_lps = ct.index_to_lps(src_centre_idx)
    shift = rng.uniform(-0.08, 0.08, 3) * src_shape * src_sp  # (z, y, x) mm
    grid = Grid.centred(shape, sp, tuple(src_centre_lps + shift[::-1]))
    # out voxel (z,y,x mm about the grid centre) -> source (z,y,x mm) = A @ p + elastic(p); both are canonical
    ang = np.radians(rng.uniform(-6, 6, 3))
    cz, sz_ = np.cos(ang), np.sin(ang)
    rz = np.array([[1, 0, 0], [0, cz[0], -sz_[0]], [0, sz_[0], cz[0]]])  # about z axis: mixes y, x
    ry = np.array([[cz[1], 0, sz_[1]], [0, 1, 0], [-sz_[1], 0, cz[1]]])
    rx = np.array([[cz[2], -sz_[2], 0], [sz_[2], cz[2], 0], [0, 0, 1]])
    A = (rz @ ry @ rx) @ np.diag(rng.uniform(0.9, 1.1, 3))
    coarse = tuple(max(2, int(np.ceil(n * s / 30.0))) for n, s in zip(shape, sp))
    disp = [ndimage.zoom(ndimage.gaussian_filter(rng.standard_normal(coarse), 0.8) * elastic_mm * 2.0,
                         [n / c for n, c in zip(shape, coarse)], order=1) for _ in range(3)]
    out_c = (np.asarray(shape) - 1) / 2.0
    pz = ((np.arange(shape[0]) - out_c[0]) * sp[0])[:, None, None]
    py = ((np.arange(shape[1]) - out_c[1]) * sp[1])[None, :, None]
    px = ((np.arange(shape[2]) - out_c[2]) * sp[2])[None, None, :]
    coords = []
    for a in range(3):
        src_mm = A[a, 0] * pz + A[a, 1] * py + A[a, 2] * px + disp[a][:shape[0], :shape[1], :shape[2]] + shift[a]
        coords.append((src_mm / src_sp[a] + src_centre_idx[a]).astype(np.float32))
    hu = ndimage.map_coordinates(ct.array, coords, order=1, mode="constant", cval=-1000.0).astype(np.float32)
    labels = ndimage.map_coordinates(seg, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    calcium = ndimage.map_coordinates(source_calcium(data_dir, source), coords, order=0, mode="constant",
                                      cval=0).astype(bool)
    del coords
    # intensity: small calibration drift, then contrast enhancement by organ when the study phase differs
    hu = hu * np.float32(rng.uniform(0.97, 1.03)) + np.float32(rng.uniform(-8, 8))
    if phase != src_phase:
        lut = np.zeros(256, dtype=np.float32)
        for cls, key in ENHANCE.items():
            lut[TS[cls]] = HU[key][PHASE_INDEX[phase]] - HU[key][PHASE_INDEX[src_phase]]
        hu += ndimage.gaussian_filter(lut[labels], 0.7)
    sex = "male" if (labels == TS["prostate"]).any() else ("female" if (labels == TS["urinary_bladder"]).any()
                                                           else "unknown")
    ph = Phantom(hu, labels, grid, sex=sex, phase=phase, age=age, kind="real-backed",
                 meta={"source": source, "source_patient": SOURCE_PATIENT.get(source), "wall_mm": 25.0})
    ph.meta["source_findings"] = source_findings(ph, calcium)
    return ph
