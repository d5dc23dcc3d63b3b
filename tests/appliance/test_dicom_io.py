"""DICOM CT series -> Volume: real data lands on the right anatomy; bad input gets our errors, never a wrong volume."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from appliance import ontology
from appliance.dicom_io import read_series
from appliance.dicom_write import write_ct_series
from appliance.errors import DicomInputError, NotCTError, SeriesGeometryError
from appliance.nifti_io import read_nifti, write_nifti
from appliance.volume import Volume, resample, to_canonical


def _organ_mean(vol: Volume, labels: Volume, organ: str) -> float:
    mask = ontology.organ_index_lut()[labels.array] == ontology.ORGAN_NAMES.index(organ) + 1
    assert mask.sum() > 100, f"{organ} label missing"
    return float(vol.array[mask].mean())


def _soft_tissue_agreement(vol: Volume, labels: Volume) -> float:
    """Fraction of liver/spleen/aorta/kidney voxels with enhanced soft-tissue HU (0..400). Sharper than organ means:
    a 20-slice slab flipped head-to-foot keeps the means plausible but misplaces the organ borders."""
    o = ontology.organ_index_lut()[labels.array]
    m = np.isin(o, [ontology.ORGAN_NAMES.index(n) + 1 for n in ("liver", "spleen", "aorta", "kidneys")])
    a = vol.array[m]
    return float(((a > 0) & (a < 400)).mean())


# --- real data ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dicom_series(real_ct):
    return read_series(real_ct / "ts_dicom_series" / "dicom")


def test_shared_series_decodes_jpeg2000_with_empty_uids(dicom_series):
    v = dicom_series
    assert v.shape == (20, 512, 512)
    assert v.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert "JPEG 2000" in v.meta["transfer_syntax"]
    assert v.meta["series_uid_missing"] and "grouped by geometry" in v.meta["choice"]
    assert -1100 <= v.array.min() and v.array.max() < 4000


def test_shared_series_labels_land_on_anatomy(dicom_series, real_ct):
    labels = read_nifti(real_ct / "ts_dicom_series" / "seg_totalsegmentator_fast.nii.gz")
    on_grid = resample(labels, order=0, reference=dicom_series)  # geometry-driven, not index-driven
    assert 60 <= _organ_mean(dicom_series, on_grid, "liver") <= 120
    assert _organ_mean(dicom_series, on_grid, "aorta") > 130
    assert _soft_tissue_agreement(dicom_series, on_grid) >= 0.98  # measured 0.994


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipped_volume_fails_the_anatomy_check(dicom_series, real_ct, axis):
    """Negative control: a reader that flipped an axis would put the labels on the wrong tissue."""
    labels = read_nifti(real_ct / "ts_dicom_series" / "seg_totalsegmentator_fast.nii.gz")
    on_grid = resample(labels, order=0, reference=dicom_series)
    flipped = dicom_series.with_array(np.flip(dicom_series.array, axis=axis).copy())
    liver, aorta = _organ_mean(flipped, on_grid, "liver"), _organ_mean(flipped, on_grid, "aorta")
    agreement = _soft_tissue_agreement(flipped, on_grid)  # measured 0.96 / 0.60 / 0.79 for axes 0 / 1 / 2
    assert not (60 <= liver <= 120 and aorta > 130 and agreement >= 0.98)


@pytest.mark.parametrize("scan", ["ts_abdomen_pelvis", "ts_upper_abdomen"])
def test_nifti_scans_land_on_anatomy(real_ct, scan):
    vol = read_nifti(real_ct / scan / "ct.nii.gz")
    labels = read_nifti(real_ct / scan / "seg_totalsegmentator_fast.nii.gz")
    assert vol.same_grid(labels)
    assert 30 <= _organ_mean(vol, labels, "liver") <= 70
    assert _organ_mean(vol, labels, "lungs") < -600
    transposed = vol.with_array(np.ascontiguousarray(np.flip(vol.array, axis=2)))
    assert not 30 <= _organ_mean(transposed, labels, "liver") <= 70 or _organ_mean(transposed, labels, "lungs") > -600


def test_dcmqi_three_slices_read_in_position_order(real_ct):
    v = read_series(real_ct / "dcmqi_liver_3slice")  # the SEG object in the folder is skipped with a reason
    assert v.shape == (3, 512, 512)
    # 1.25 mm thick slices reconstructed every 1.0 mm: spacing comes from positions, thickness from the header
    assert v.spacing == pytest.approx((1.0, 0.810547, 0.810547), abs=1e-5)
    assert v.meta["slice_thickness_mm"] == pytest.approx(1.25)
    assert any(s["modality"] == "SEG" and not s["usable"] for s in v.meta["series"])
    # InstanceNumber runs head->feet here; the volume must still run feet->head (ascending z)
    assert v.index_to_lps((2, 0, 0))[2] > v.index_to_lps((0, 0, 0))[2]


# --- round trip -----------------------------------------------------------------------------------------------

def test_round_trip_volume_dicom_volume_nifti_volume(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(0, 400, (9, 40, 48)).astype(np.float32)  # JPEG 2000 needs >= 32 px per side
    # non-canonical: axis 0 runs head->feet, axis 2 runs left->right
    direction = np.array([[0, 0, -1], [0, 1, 0], [-1, 0, 0]], dtype=float)
    src = Volume(arr, (2.5, 0.7, 0.9), (10.0, -20.0, 30.0), direction)
    for compress in (None, "rle", "jpeg2000", "jpegls"):
        files = write_ct_series(src, tmp_path / f"dcm_{compress}", compress=compress)
        assert len(files) == 9
        back = read_series(tmp_path / f"dcm_{compress}")
        write_nifti(back, tmp_path / "rt.nii.gz")
        again = read_nifti(tmp_path / "rt.nii.gz")
        a, b = to_canonical(src), to_canonical(again)
        assert np.abs(a.array - b.array).max() <= 0.5  # int16 rounding
        assert np.allclose(a.affine(), b.affine(), atol=1e-3)


# --- bad input ------------------------------------------------------------------------------------------------

def _series(tmp_path, n=6, name="s", **kw):
    arr = np.arange(n * 16 * 16, dtype=np.float32).reshape(n, 16, 16) % 700 - 300
    return write_ct_series(Volume(arr, (2.0, 1.0, 1.0)), tmp_path / name, **kw)


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_non_dicom_file(tmp_path):
    p = tmp_path / "report.txt"
    p.write_text("not an image")
    with pytest.raises(DicomInputError, match="report.txt: not a readable DICOM file"):
        read_series(p)


def test_truncated_file(tmp_path):
    f = _series(tmp_path)[0]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 3])
    with pytest.raises(DicomInputError, match="CT00001.dcm"):
        read_series(f)


def test_truncated_file_in_folder_is_listed_not_fatal_when_the_rest_is_complete(tmp_path):
    files = _series(tmp_path, n=6)
    bad = tmp_path / "s" / "zz_broken.dcm"
    bad.write_bytes(files[0].read_bytes()[:200])
    v = read_series(tmp_path / "s")
    assert v.shape[0] == 6 and any("zz_broken.dcm" in u for u in v.meta["unreadable"])


def test_single_slice_series(tmp_path):
    _series(tmp_path, n=1)
    with pytest.raises(DicomInputError, match="only 1 slice"):
        read_series(tmp_path / "s")


def test_localizer(tmp_path):
    for f in _series(tmp_path, n=4):
        _edit(f, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(NotCTError, match="localizer"):
        read_series(tmp_path / "s")


def test_mr_series(tmp_path):
    for f in _series(tmp_path, n=4):
        _edit(f, Modality="MR")
    with pytest.raises(NotCTError, match="modality MR is not CT"):
        read_series(tmp_path / "s")


def test_duplicated_slices_identical_are_dropped_different_are_rejected(tmp_path):
    files = _series(tmp_path, n=5)
    dup = tmp_path / "s" / "dup.dcm"
    shutil.copy(files[2], dup)
    _edit(dup, SOPInstanceUID=pydicom.uid.generate_uid())
    v = read_series(tmp_path / "s")
    assert v.shape[0] == 5 and any("duplicate" in n for n in v.meta["reader_notes"])
    ds = pydicom.dcmread(dup)
    ds.PixelData = (np.frombuffer(ds.PixelData, np.int16) + 5).astype(np.int16).tobytes()
    ds.save_as(dup)
    with pytest.raises(SeriesGeometryError, match="same position"):
        read_series(tmp_path / "s")


def test_missing_slice_rejected_or_filled_by_option(tmp_path):
    files = _series(tmp_path, n=6)
    files[3].unlink()
    with pytest.raises(SeriesGeometryError, match="missing slice"):
        read_series(tmp_path / "s")
    v = read_series(tmp_path / "s", fill_missing=True)
    assert v.shape[0] == 6 and any("interpolated 1" in n for n in v.meta["reader_notes"])
    assert np.allclose(v.array[3], (v.array[2] + v.array[4]) / 2)  # the gap slice, linearly interpolated
    assert not np.allclose(v.array[2], v.array[4])


def test_gantry_tilt_rejected(tmp_path):
    for k, f in enumerate(_series(tmp_path, n=5)):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 0.7, z]  # sheared stack ~19 degrees
        ds.save_as(f)
    with pytest.raises(SeriesGeometryError, match="gantry tilt"):
        read_series(tmp_path / "s")


def test_mixed_series_picks_the_axial_ct_and_says_why(tmp_path):
    _series(tmp_path, n=8, name="study/ct")
    for f in _series(tmp_path, n=3, name="study/scout"):
        _edit(f, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    for f in _series(tmp_path, n=10, name="study/mr"):
        _edit(f, Modality="MR")
    v = read_series(tmp_path / "study")
    assert v.shape[0] == 8 and v.meta["choice"].startswith("chosen: axial CT, 8 slices")
    reasons = sorted(s["reason"] for s in v.meta["series"])
    assert any("localizer" in r for r in reasons) and any("modality MR" in r for r in reasons)


def test_volume_info_cli(tmp_path, real_ct):
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "volume-info", "--json",
                          str(real_ct / "ts_dicom_series" / "dicom")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"shape_zyx"' in out.stdout and "chosen: axial CT" in out.stdout
    bad = tmp_path / "x.dcm"
    bad.write_text("garbage")
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "volume-info", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1 and "not a readable DICOM file" in out.stderr
