"""Organ label map (NIfTI, organ label space) -> DICOM SEG (highdicom, BINARY), one segment per organ present.

Geometry: every pixel of every source CT slice is mapped to its LPS position (IPP + c*col_spacing*row_dir +
r*row_spacing*col_dir) and looked up (nearest voxel) in the label map, so the SEG lies exactly on the source
instances whatever order or orientation the NIfTI was written in. Voxels outside the label map are background.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from appliance import ontology
from appliance.nifti_io import read_nifti
from appliance.volume import Volume
from dicom_node.codes import ALGORITHM_NAME, MANUFACTURER, organ_code, software_version, with_type2

ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
SEG_SERIES_NUMBER = 9902


class SegError(ValueError):
    """The label map cannot be turned into a SEG for these source instances."""


def _slice_normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def sort_slices(source: Sequence[Dataset]) -> list[Dataset]:
    if not source:
        raise SegError("no source instances")
    n = _slice_normal(source[0])
    return sorted(source, key=lambda d: float(np.dot(n, np.asarray(d.ImagePositionPatient, dtype=float))))


def labels_on_source(labels: Volume, source: Sequence[Dataset]) -> np.ndarray:
    """(n_slices, rows, cols) uint8 organ labels sampled (nearest) at the source slices' pixel centres."""
    affine = np.asarray(labels.direction, dtype=float) @ np.diag(np.asarray(labels.spacing, dtype=float))
    inv = np.linalg.inv(affine)
    origin = np.asarray(labels.origin, dtype=float)
    arr = labels.array
    out = []
    for ds in source:
        rows, cols = int(ds.Rows), int(ds.Columns)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row_dir, col_dir = iop[:3], iop[3:]  # direction along a row (increasing column), down a column
        dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        world = ipp + c[..., None] * dc * row_dir + r[..., None] * dr * col_dir  # (rows, cols, 3)
        idx = np.rint((world - origin) @ inv.T).astype(np.int64)  # (rows, cols, 3) array indices (z, y, x)
        inside = np.all((idx >= 0) & (idx < np.asarray(arr.shape)), axis=-1)
        sl = np.zeros((rows, cols), dtype=np.uint8)
        ii = idx[inside]
        sl[inside] = arr[ii[:, 0], ii[:, 1], ii[:, 2]]
        out.append(sl)
    return np.stack(out)


def build_seg(labels: Volume | str | Path, source: Sequence[Dataset], *, bundle_id: str | None = None,
              sop_instance_uid: str | None = None, series_instance_uid: str | None = None,
              instance_number: int = 1) -> hd.seg.Segmentation:
    """SEG of the organs present in `labels` (0 = background, i+1 = ontology.ORGANS[i]) on the `source` series."""
    if not isinstance(labels, Volume):
        labels = read_nifti(labels)
    arr = np.asarray(labels.array)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.allclose(arr, np.rint(arr)):
            raise SegError("the label map holds non-integer values; expected organ indices")
        labels = Volume(np.rint(arr).astype(np.int16), labels.spacing, labels.origin, labels.direction)
    if labels.array.min(initial=0) < 0 or labels.array.max(initial=0) > len(ontology.ORGANS):
        raise SegError(f"label map values must be 0..{len(ontology.ORGANS)} (organ label space)")
    single = [d for d in source if int(d.get("NumberOfFrames", 1) or 1) == 1 and "ImagePositionPatient" in d
              and "ImageOrientationPatient" in d and "PixelSpacing" in d]
    if len(single) != len(source):
        raise SegError("SEG needs single-frame CT slices with position/orientation/spacing; multi-frame (Enhanced CT) "
                       "sources are not supported yet")
    source = [with_type2(d) for d in sort_slices(source)]
    if len({d.SeriesInstanceUID for d in source}) != 1:
        raise SegError("the source instances belong to more than one series")
    on_src = labels_on_source(labels, source)
    present = [int(v) for v in np.unique(on_src) if v]
    if not present:
        raise SegError("no organ of the label map lies on the source slices")
    version = software_version(bundle_id)
    algo = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
                                              version=version[:64])
    descriptions, remap = [], np.zeros(len(ontology.ORGANS) + 1, dtype=np.uint8)
    for number, organ_index in enumerate(present, start=1):
        organ = ontology.ORGANS[organ_index - 1]
        remap[organ_index] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=organ.name, segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=organ_code(organ.name), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, tracking_uid=generate_uid(), tracking_id=organ.name))
    seg = hd.seg.Segmentation(
        source_images=source, pixel_array=remap[on_src], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number, manufacturer=MANUFACTURER, manufacturer_model_name=ALGORITHM_NAME,
        software_versions=version[:64], device_serial_number="0",
        content_description="AI draft organ masks - not for diagnostic use", content_label="ORGANS",
        series_description="AI draft organ segmentation - not for diagnostic use")
    return seg
