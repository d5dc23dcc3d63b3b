"""DICOM CT series -> Volume (see appliance/volume.py for the geometry convention).

Series selection rule (documented here because PACS admins ask "why did it pick that one?"):
  1. Only usable series compete: modality CT, CT Image Storage SOP class, not a localizer/scout (ImageType
     LOCALIZER or a single slice), at least MIN_SLICES slices, one orientation and one image size.
  2. Prefer axial series (slice normal within 30 degrees of the patient's head-foot axis).
  3. Prefer ImageType ORIGINAL\\PRIMARY over DERIVED/SECONDARY (reformats, MIPs).
  4. Then the most slices (widest coverage), then the thinnest slice spacing.
Every series gets a reason (chosen / skipped because ...), kept in Volume.meta["series"].

Slices are ordered by ImagePositionPatient projected on the slice normal (row x column direction cosines), never by
InstanceNumber or file name. Rejected with SeriesGeometryError: mixed orientations or image sizes, gantry tilt,
duplicated positions with different pixels, and uneven spacing / missing slices (unless ``fill_missing=True``,
which linearly interpolates a gap of exactly one missing slice and records it).

Series with empty SeriesInstanceUID (de-identification dirt, e.g. the shared real series) are grouped by a
fallback key (frame of reference, orientation, image size, pixel spacing) and the volume meta says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from appliance.errors import DicomInputError, NoUsableSeriesError, NotCTError, SeriesGeometryError
from appliance.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
# Why 3: with fewer than three slices the slice spacing cannot be cross-checked, so a missing slice is undetectable.
MIN_SLICES = 3
AXIAL_MAX_ANGLE_DEG = 30.0
GANTRY_TILT_MAX_DEG = 0.5
SPACING_TOLERANCE = 0.10  # a gap may differ from the median gap by 10% before the series counts as uneven


@dataclass
class SeriesInfo:
    key: str
    series_uid: str
    uid_missing: bool
    modality: str
    sop_class_uid: str
    description: str
    image_type: tuple[str, ...]
    datasets: list = field(default_factory=list)  # header-only datasets (or full ones for in-memory input)
    sources: list = field(default_factory=list)  # Path per dataset, or None for in-memory
    usable: bool = True
    reason: str = ""
    axial: bool = False
    slice_spacing: float = float("inf")

    def summary(self) -> dict:
        return {
            "series_uid": self.series_uid or "(empty)",
            "modality": self.modality,
            "description": self.description,
            "n_instances": len(self.datasets),
            "usable": self.usable,
            "reason": self.reason,
        }


def _files_of(source) -> list:
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not files:
                raise DicomInputError(f"{p}: folder contains no files")
            return files
        if p.is_file():
            return [p]
        raise DicomInputError(f"{p}: no such file or folder")
    return list(source)


def _read_header(item):
    """(dataset, source path or None). A non-DICOM or truncated file raises DicomInputError naming the file."""
    import pydicom
    from pydicom.dataset import Dataset

    if isinstance(item, Dataset):
        return item, None
    path = Path(item)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        # force decoding of the elements we rely on, so a damaged header fails here and not later
        for kw in ("Modality", "SOPClassUID", "ImagePositionPatient", "ImageOrientationPatient"):
            getattr(ds, kw, None)
    except Exception as exc:
        raise DicomInputError(f"{path.name}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    _check_complete(ds, path)
    return ds, path


_CT_REQUIRED = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "BitsAllocated")


def _check_complete(ds, path: Path) -> None:
    """pydicom reads truncated files leniently; catch the two ways truncation shows in a header-only read."""
    if not getattr(ds, "Modality", None):
        raise DicomInputError(f"{path.name}: not a readable DICOM file (no Modality; truncated or not an image)")
    if ds.Modality != "CT":
        return  # skipped later with a reason; nothing more to verify
    missing = [kw for kw in _CT_REQUIRED if kw not in ds]
    if missing:
        raise DicomInputError(f"{path.name}: truncated or incomplete CT header (missing {', '.join(missing)})")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and not ts.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
        if path.stat().st_size < expected:
            raise DicomInputError(
                f"{path.name}: file is truncated ({path.stat().st_size} bytes, the image alone needs {expected})")


def _sop_class(ds) -> str:
    uid = str(getattr(ds, "SOPClassUID", "") or "")
    if not uid and hasattr(ds, "file_meta"):
        uid = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
    return uid


def _fallback_key(ds) -> str:
    iop = tuple(round(float(v), 3) for v in getattr(ds, "ImageOrientationPatient", []) or [])
    ps = tuple(round(float(v), 4) for v in getattr(ds, "PixelSpacing", []) or [])
    return "|".join(str(x) for x in (
        getattr(ds, "FrameOfReferenceUID", ""), getattr(ds, "Modality", ""), iop,
        getattr(ds, "Rows", ""), getattr(ds, "Columns", ""), ps, getattr(ds, "SeriesNumber", ""),
    ))


def group_series(items: Iterable) -> tuple[list[SeriesInfo], list[str]]:
    """Read headers and group by SeriesInstanceUID (fallback key when empty). Returns (series, unreadable-file notes)."""
    groups: dict[str, SeriesInfo] = {}
    unreadable: list[str] = []
    items = list(items)
    for item in items:
        try:
            ds, path = _read_header(item)
        except DicomInputError as exc:
            if len(items) == 1:
                raise
            unreadable.append(str(exc))
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        key = uid or "nouid:" + _fallback_key(ds)
        if key not in groups:
            groups[key] = SeriesInfo(
                key=key, series_uid=uid, uid_missing=not uid,
                modality=str(getattr(ds, "Modality", "") or ""), sop_class_uid=_sop_class(ds),
                description=str(getattr(ds, "SeriesDescription", "") or ""),
                image_type=tuple(str(v).upper() for v in (getattr(ds, "ImageType", None) or [])),
            )
        groups[key].datasets.append(ds)
        groups[key].sources.append(path)
    return list(groups.values()), unreadable


def _assess(s: SeriesInfo) -> None:
    """Mark a series usable or not, with the reason an admin reads."""
    n = len(s.datasets)
    if s.modality != "CT":
        s.usable, s.reason = False, f"modality {s.modality or 'missing'} is not CT"
    elif s.sop_class_uid == ENHANCED_CT_IMAGE_STORAGE:
        s.usable, s.reason = False, "Enhanced (multi-frame) CT is stored but not yet analysed"
    elif s.sop_class_uid and s.sop_class_uid != CT_IMAGE_STORAGE:
        s.usable, s.reason = False, f"SOP class {s.sop_class_uid} is not CT Image Storage"
    elif "LOCALIZER" in s.image_type:
        s.usable, s.reason = False, "localizer/scout image (ImageType LOCALIZER)"
    elif n < MIN_SLICES:
        s.usable, s.reason = False, (
            f"only {n} slice(s); a CT volume needs at least {MIN_SLICES} so that slice spacing can be verified")
    else:
        try:
            iop = np.asarray([float(v) for v in s.datasets[0].ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            s.axial = abs(normal[2]) >= np.cos(np.radians(AXIAL_MAX_ANGLE_DEG))
            pos = sorted(float(np.dot([float(v) for v in d.ImagePositionPatient], normal)) for d in s.datasets)
            gaps = np.diff(pos)
            gaps = gaps[gaps > 1e-3]
            s.slice_spacing = float(np.median(gaps)) if gaps.size else float("inf")
            s.reason = "usable"
        except (AttributeError, TypeError, ValueError):
            s.usable, s.reason = False, "missing ImagePositionPatient/ImageOrientationPatient"


def select_series(series: list[SeriesInfo]) -> SeriesInfo:
    """Pick the best series by the rule in the module docstring; raise with every series' reason if none is usable."""
    for s in series:
        _assess(s)
    usable = [s for s in series if s.usable]
    if not usable:
        detail = "; ".join(f"series {s.series_uid or '(no UID)'} [{s.modality}, {len(s.datasets)} inst.]: {s.reason}"
                           for s in series)
        if all(s.modality != "CT" or "LOCALIZER" in s.image_type for s in series):
            raise NotCTError(f"no axial CT image series in the input: {detail}")
        raise NoUsableSeriesError(f"no usable CT series: {detail}")

    def rank(s: SeriesInfo):
        primary = "ORIGINAL" in s.image_type[:1] and "PRIMARY" in s.image_type[1:2]
        return (s.axial, primary, len(s.datasets), -s.slice_spacing)

    best = max(usable, key=rank)
    for s in usable:
        if s is not best:
            s.reason = "usable, not chosen (ranked lower: axial, ORIGINAL/PRIMARY, slice count, slice spacing)"
    best.reason = (f"chosen: {'axial' if best.axial else 'non-axial (no axial series)'} CT, "
                   f"{len(best.datasets)} slices at {best.slice_spacing:.2f} mm"
                   + (", ORIGINAL/PRIMARY" if best.image_type[:2] == ("ORIGINAL", "PRIMARY") else "")
                   + ("; SeriesInstanceUID empty, grouped by geometry" if best.uid_missing else ""))
    return best


def _pixels_hu(ds, name: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        raise DicomInputError(
            f"{name}: pixel data cannot be decoded (transfer syntax {ts_name}): {exc}. Compressed CT needs the "
            f"decoder plugins pylibjpeg-openjpeg (JPEG 2000) and pyjpegls (JPEG-LS), installed with the appliance"
        ) from exc
    if arr.ndim != 2:
        raise DicomInputError(f"{name}: expected one 2-D frame per instance, got pixel array shape {arr.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _full_dataset(ds, path):
    import pydicom

    return ds if path is None else pydicom.dcmread(str(path))


def build_volume(s: SeriesInfo, *, fill_missing: bool = False) -> Volume:
    """Stack one series into a Volume; geometry checks first (cheap, headers only), then pixels."""
    dss = s.datasets
    name = lambda i: s.sources[i].name if s.sources[i] is not None else f"instance {i}"  # noqa: E731
    iops = np.asarray([[float(v) for v in d.ImageOrientationPatient] for d in dss])
    if np.abs(iops - iops[0]).max() > 1e-3:
        raise SeriesGeometryError("series mixes slice orientations (ImageOrientationPatient differs); "
                                  "it is not one volume")
    sizes = {(int(d.Rows), int(d.Columns)) for d in dss}
    spacings = {tuple(round(float(v), 5) for v in d.PixelSpacing) for d in dss}
    if len(sizes) > 1 or len(spacings) > 1:
        raise SeriesGeometryError(f"series mixes image sizes {sorted(sizes)} or pixel spacings {sorted(spacings)}")
    row_dir, col_dir = iops[0, :3], iops[0, 3:]
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    ipps = np.asarray([[float(v) for v in d.ImagePositionPatient] for d in dss])
    proj = ipps @ normal
    order = np.argsort(proj, kind="stable")
    ipps, proj = ipps[order], proj[order]
    idx = [int(i) for i in order]

    # duplicates: same position twice
    keep = [0]
    notes = []
    for k in range(1, len(idx)):
        if abs(proj[k] - proj[keep[-1]]) < 1e-3:
            a = _pixels_hu(_full_dataset(dss[idx[keep[-1]]], s.sources[idx[keep[-1]]]), name(idx[keep[-1]]))
            b = _pixels_hu(_full_dataset(dss[idx[k]], s.sources[idx[k]]), name(idx[k]))
            if not np.array_equal(a, b):
                raise SeriesGeometryError(
                    f"two different slices at the same position {proj[k]:.2f} mm ({name(idx[keep[-1]])}, "
                    f"{name(idx[k])}); the series is inconsistent, resend it from the scanner")
            notes.append(f"dropped duplicate slice {name(idx[k])} at {proj[k]:.2f} mm (identical pixels)")
            continue
        keep.append(k)
    ipps, proj, idx = ipps[keep], proj[keep], [idx[k] for k in keep]
    if len(idx) < MIN_SLICES:
        raise SeriesGeometryError(f"only {len(idx)} distinct slice positions; need at least {MIN_SLICES}")

    # gantry tilt: slices must stack along the normal
    stack = ipps[-1] - ipps[0]
    cos = abs(float(np.dot(stack, normal))) / max(float(np.linalg.norm(stack)), 1e-9)
    tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    if tilt > GANTRY_TILT_MAX_DEG:
        raise SeriesGeometryError(
            f"gantry tilt of {tilt:.1f} degrees (slices are sheared, not stacked along their normal); tilted "
            f"acquisitions are not supported: ask for a reconstruction without tilt")

    gaps = np.diff(proj)
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step)
    fill_at: list[int] = []
    if bad.size:
        single_missing = all(abs(gaps[b] - 2 * step) <= SPACING_TOLERANCE * step for b in bad)
        where = ", ".join(f"{proj[b]:.2f}->{proj[b + 1]:.2f} mm" for b in bad[:5])
        if fill_missing and single_missing:
            fill_at = [int(b) for b in bad]
            notes.append(f"interpolated {len(fill_at)} missing slice(s) at gaps {where}")
        else:
            kind = "missing slice(s)" if single_missing or np.all(gaps[bad] > step) else "uneven slice spacing"
            raise SeriesGeometryError(
                f"{kind}: expected a slice every {step:.2f} mm but found gaps {where}; the series is incomplete "
                f"(resend it) or irregular")

    # Fill a preallocated array slice by slice: peak memory ~ one volume, not a list of slices plus its stack.
    rows, cols = sizes.pop()
    arr = np.empty((len(idx) + len(fill_at), rows, cols), dtype=np.float32)
    z = 0
    for k, i in enumerate(idx):
        arr[z] = _pixels_hu(_full_dataset(dss[i], s.sources[i]), name(i))
        if k - 1 in fill_at:  # the slice before this one was followed by a one-slice gap
            arr[z - 1] = (arr[z - 2] + arr[z]) / 2
        z += 1 + (k in fill_at)
    ps = [float(v) for v in dss[0].PixelSpacing]  # (row spacing, column spacing)
    direction = np.stack([normal, col_dir, row_dir], axis=1)
    first = dss[idx[0]]
    ts = getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", None)
    meta = {
        "source": "dicom",
        "series_uid": s.series_uid or None,
        "series_uid_missing": s.uid_missing,
        "study_uid": str(getattr(first, "StudyInstanceUID", "") or "") or None,
        "modality": s.modality,
        "series_description": s.description,
        "n_slices": int(arr.shape[0]),
        "slice_thickness_mm": float(getattr(first, "SliceThickness", 0) or 0) or None,
        "transfer_syntax": getattr(ts, "name", None) if ts else None,
        "reader_notes": notes,
        "gantry_tilt_deg": round(tilt, 3),
    }
    return Volume(arr, (step, ps[0], ps[1]), tuple(ipps[0]), direction, meta)


def read_series(source, *, fill_missing: bool = False) -> Volume:
    """Read a DICOM CT study (folder, file list or in-memory datasets) and return the chosen series as a Volume.

    Unreadable files inside a folder are skipped and listed in meta["unreadable"]; if the only input is unreadable,
    DicomInputError is raised naming it.
    """
    series, unreadable = group_series(_files_of(source))
    if not series:
        raise DicomInputError("no readable DICOM files: " + "; ".join(unreadable[:5]))
    best = select_series(series)
    vol = build_volume(best, fill_missing=fill_missing)
    vol.meta["choice"] = best.reason
    vol.meta["series"] = [s.summary() for s in series]
    vol.meta["unreadable"] = unreadable
    return vol


def list_series(source) -> list[dict]:
    """Every series in the input with whether it is usable and why (for volume-info and the TUI)."""
    series, _ = group_series(_files_of(source))
    for s in series:
        _assess(s)
    return [s.summary() for s in series]


__all__ = ["read_series", "select_series", "group_series", "build_volume", "list_series", "MIN_SLICES",
           "SeriesInfo"]
