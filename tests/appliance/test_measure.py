"""Organ measurements: exact on constructed volumes, consistent on real anatomy."""

import numpy as np
import pytest

from appliance import ontology
from appliance.errors import CropError
from appliance.measure import measure_organs
from appliance.nifti_io import read_nifti
from appliance.volume import Volume, resample

TS = ontology.TOTALSEG_ID_BY_NAME


def test_exact_on_a_constructed_volume():
    labels = np.zeros((10, 20, 30), np.uint8)
    hu = np.zeros(labels.shape, np.float32)
    labels[2:6, 5:10, 5:15] = TS["liver"]  # 4*5*10 = 200 voxels
    hu[2:6, 5:10, 5:15] = np.where(np.arange(10) % 2, 40.0, 60.0)  # mean 50, std 10
    labels[1:3, 1:3, 20:24] = TS["kidney_left"]  # 16 voxels
    labels[1:3, 1:3, 24:25] = TS["kidney_cyst_left"]  # 4 voxels, part of the left kidney
    labels[5:7, 12:14, 20:22] = TS["kidney_right"]  # 8 voxels
    vol = Volume(hu, (2.0, 1.0, 0.5))
    m = measure_organs(vol, vol.with_array(labels))
    liver = m["liver"]
    assert liver.voxel_count == 200 and liver.volume_ml == pytest.approx(200 * 1e-3)
    assert liver.mean_hu == pytest.approx(50.0) and liver.std_hu == pytest.approx(10.0)
    assert liver.extent_mm == (8.0, 5.0, 5.0)
    k = m["kidneys"]
    assert k.left_ml == pytest.approx(20 * 1e-3) and k.right_ml == pytest.approx(8 * 1e-3)
    assert k.left_ml + k.right_ml == pytest.approx(k.volume_ml)
    assert set(m) == {"liver", "kidneys"}  # absent organs are not reported


def test_real_scan_agrees_with_direct_computation(real_ct):
    vol = read_nifti(real_ct / "ts_abdomen_pelvis" / "ct.nii.gz")
    labels = read_nifti(real_ct / "ts_abdomen_pelvis" / "seg_totalsegmentator_fast.nii.gz")
    m = measure_organs(vol, labels)
    mask = labels.array == TS["liver"]
    assert m["liver"].volume_ml == pytest.approx(mask.sum() * 27 / 1000)
    assert m["liver"].mean_hu == pytest.approx(float(vol.array[mask].mean()), abs=1e-3)
    assert 30 <= m["liver"].mean_hu <= 70 and m["lungs"].mean_hu < -600
    assert m["kidneys"].left_ml > 0 and m["kidneys"].right_ml > 0


def test_grid_mismatch_refused(real_ct):
    vol = read_nifti(real_ct / "ts_abdomen_pelvis" / "ct.nii.gz")
    labels = read_nifti(real_ct / "ts_abdomen_pelvis" / "seg_totalsegmentator_fast.nii.gz")
    with pytest.raises(CropError, match="different grids"):
        measure_organs(vol, resample(labels, (6.0, 6.0, 6.0), order=0))
