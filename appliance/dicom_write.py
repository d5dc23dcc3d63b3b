"""Volume -> DICOM CT Image Storage series (synthetic studies, round-trip tests, benchmarks, demo sender).

Pixels are stored as int16 with RescaleSlope 1 / RescaleIntercept 0, so HU round-trip to within 0.5 HU (rounding);
values outside int16 are clipped. Geometry comes from the Volume: axis 0 is the slice axis, IOP = (direction of
axis 2, direction of axis 1), PixelSpacing = (spacing[1], spacing[2]). If the Volume's axes are left-handed the
reader returns the slices in the opposite order: the same voxels in the same places, a different index order.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from appliance.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPRESSIONS = {
    None: None,
    False: None,
    True: "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless, the default lossless choice
    "rle": "1.2.840.10008.1.2.5",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "jpegls": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless (pyjpegls)
}


def write_ct_series(
    volume: Volume,
    out_dir,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "ANON",
    patient_name: str = "ANON",
    study_date: str | None = None,
    accession: str | None = None,
    series_description: str = "",
    compress: str | bool | None = None,
) -> list[Path]:
    """Write one file per slice into ``out_dir`` and return the paths (slice order = array axis 0).

    ``compress``: None (explicit VR little endian), "rle" (RLE lossless), "jpegls" (JPEG-LS lossless) or "jpeg2000"/True (JPEG 2000 lossless;
    openjpeg needs images of at least 32 pixels per side with its default 6 resolution levels).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {list(COMPRESSIONS)}, got {compress!r}")
    syntax = COMPRESSIONS[compress]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    date = study_date or _dt.date.today().strftime("%Y%m%d")
    d = volume.direction
    row_dir, col_dir = d[:, 2], d[:, 1]
    pixels = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    paths = []
    for k in range(volume.shape[0]):
        ds = Dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber = accession or ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.SeriesDescription = series_description
        ds.Manufacturer = "TotalFM synthetic"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.6g}" for v in volume.index_to_lps((k, 0, 0))]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{volume.spacing[1]:.6g}", f"{volume.spacing[2]:.6g}"]
        ds.SliceThickness = f"{volume.spacing[0]:.6g}"
        ds.SpacingBetweenSlices = f"{volume.spacing[0]:.6g}"
        ds.SliceLocation = f"{float(volume.index_to_lps((k, 0, 0))[2]):.6g}"
        ds.KVP = "120"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        if syntax:
            ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax.endswith("4.90") else "")
        path = out / f"CT{k + 1:05d}.dcm"
        tmp = path.with_suffix(".part")
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        tmp.replace(path)
        paths.append(path)
    return paths
