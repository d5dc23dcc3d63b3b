"""Organ crops on real anatomy: right shapes and values, geometry maps back to the patient, flags are honest."""

from __future__ import annotations

import numpy as np
import pytest

from appliance import ontology
from appliance.crops import crop_organs
from appliance.errors import CropError
from appliance.nifti_io import read_nifti
from appliance.volume import Volume, resample, to_canonical


@pytest.fixture(scope="module")
def pelvis(real_ct):
    d = real_ct / "ts_abdomen_pelvis"
    return read_nifti(d / "ct.nii.gz"), read_nifti(d / "seg_totalsegmentator_fast.nii.gz")


@pytest.fixture(scope="module")
def pelvis_crops(pelvis):
    return crop_organs(*pelvis)


def _present_organs(labels: Volume) -> set[str]:
    ids = set(np.unique(labels.array).tolist())
    return {o.name for o in ontology.ORGANS if ids & set(o.totalseg_ids)}


def test_every_organ_in_the_label_map_gets_a_crop_or_a_reason(pelvis, pelvis_crops):
    present = _present_organs(pelvis[1])
    assert {"liver", "spleen", "kidneys", "urinary_bladder", "prostate", "aorta", "spine"} <= present
    assert set(pelvis_crops.crops) == set(ontology.ORGAN_NAMES)
    for name, c in pelvis_crops.crops.items():
        if name not in present:
            assert c.status == "absent" and c.image is None
        elif c.status == "too_small":  # lung bases in a pelvis scan: 111 mL, below the 200 mL plausible minimum
            assert c.image is None and "mL" in c.reason
        else:
            r = ontology.organ(name).crop
            assert c.image.shape == r.shape and c.mask.shape == r.shape, name
            assert c.image.array.dtype == np.float32 and c.mask.array.dtype == np.uint8
            assert 0.0 <= c.image.array.min() and c.image.array.max() <= 1.0
            assert c.mask.array.sum() > 0, name
    assert pelvis_crops.crops["lungs"].status == "too_small"


def test_crop_geometry_maps_back_to_the_patient(pelvis, pelvis_crops):
    vol, labels = pelvis
    checked = 0
    for name, c in pelvis_crops.crops.items():
        if c.status != "ok":
            continue  # a partial or truncated crop holds only part of the organ: its centroid legitimately moves
        src = np.argwhere(np.isin(labels.array, ontology.organ(name).totalseg_ids)).mean(axis=0)
        crop = np.argwhere(c.mask.array > 0).mean(axis=0)
        dist = np.linalg.norm(vol.index_to_lps(src) - c.mask.index_to_lps(crop))
        assert dist < 3.0, f"{name}: crop centroid {dist:.1f} mm from the organ (voxel 3 mm)"
        checked += 1
    assert checked >= 4


def test_liver_hu_inside_mask_is_liver(pelvis_crops):
    c = pelvis_crops.crops["liver"]
    lo, hi = ontology.organ("liver").crop.hu_window
    hu = c.image.array[c.mask.array > 0] * (hi - lo) + lo
    assert 30 <= hu.mean() <= 70


def test_cut_off_organs_are_flagged_with_the_side(real_ct):
    d = real_ct / "ts_upper_abdomen"  # a 30-slice slab: liver and spleen run out of both ends
    crops = crop_organs(read_nifti(d / "ct.nii.gz"), read_nifti(d / "seg_totalsegmentator_fast.nii.gz"))
    liver = crops.crops["liver"]
    assert liver.status == "truncated_by_scan" and "superior" in liver.reason and "inferior" in liver.reason
    assert liver.image is not None  # still cropped, flagged, so downstream decides
    assert crops.crops["gallbladder"].status == "ok"


def test_orientation_does_not_change_the_crop(pelvis, pelvis_crops):
    """Same anatomy stored with flipped axes (and matching geometry) gives the same crop after canonicalisation."""
    vol, labels = pelvis
    flip = lambda v: Volume(np.ascontiguousarray(v.array[::-1, :, ::-1]), v.spacing,  # noqa: E731
                            v.index_to_lps((v.shape[0] - 1, 0, v.shape[2] - 1)),
                            v.direction * np.array([-1, 1, -1]))
    flipped = crop_organs(flip(vol), flip(labels))
    for name in ("liver", "kidneys", "urinary_bladder"):
        a = to_canonical(pelvis_crops.crops[name].image)
        b = to_canonical(flipped.crops[name].image)
        assert np.allclose(a.affine(), b.affine(), atol=1e-3)
        assert np.abs(a.array - b.array).mean() < 1e-3, name


def test_deterministic(pelvis, pelvis_crops):
    again = crop_organs(*pelvis)
    for name, c in pelvis_crops.crops.items():
        if c.usable:
            assert c.image.array.tobytes() == again.crops[name].image.array.tobytes()
            assert c.mask.array.tobytes() == again.crops[name].mask.array.tobytes()


def test_mismatched_grid_is_refused(pelvis):
    vol, labels = pelvis
    coarse = resample(labels, (6.0, 6.0, 6.0), order=0)
    with pytest.raises(CropError, match="different grids"):
        crop_organs(vol, coarse)


def test_empty_label_map_means_all_absent(pelvis):
    vol, labels = pelvis
    crops = crop_organs(vol, labels.with_array(np.zeros_like(labels.array)))
    assert {c.status for c in crops.crops.values()} == {"absent"}
    assert crops.present() == {}


def test_organ_label_space_and_bad_values(pelvis):
    vol, labels = pelvis
    omap = ontology.organ_index_lut()[labels.array]
    via_organ = crop_organs(vol, labels.with_array(omap), label_space="organ")
    via_ts = crop_organs(vol, labels)
    assert via_organ.crops["liver"].image.array.tobytes() == via_ts.crops["liver"].image.array.tobytes()
    with pytest.raises(CropError, match="0..16"):
        crop_organs(vol, labels.with_array(np.full_like(omap, 40)), label_space="organ")


def test_scattered_pieces_that_miss_the_crop_are_not_cropped():
    """Session 7's quick start: a false spine piece on the far side of the body put the bounding-box centre between
    the two pieces, and the 96 mm crop around it held no spine at all. That must not become an 'ok' crop."""
    shape = (17, 300, 300)
    vol = Volume(np.zeros(shape, np.float32), (2.0, 1.0, 1.0))
    omap = np.zeros(shape, np.uint8)
    spine = ontology.ORGAN_NAMES.index("spine") + 1
    omap[:, 140:180, 250:290] = spine  # the real piece
    omap[:, 140:180, 5:30] = spine  # a false piece 220 mm away: bbox centre ~x 147, crop +-48 mm misses both
    c = crop_organs(vol, vol.with_array(omap), label_space="organ").crops["spine"]
    assert c.status == "not_in_crop" and not c.usable and "scattered" in c.reason
    omap[:, 140:180, 5:30] = 0
    assert crop_organs(vol, vol.with_array(omap), label_space="organ").crops["spine"].usable
