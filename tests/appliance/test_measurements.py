"""appliance.preprocess.organ_measurements: the organ encoder's second input, on hand-made crops with known answers
and on real crops, where the trainer's path (stored arrays + recipe spacing) must give the very same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from appliance import ontology
from appliance.errors import TotalFMError
from appliance.preprocess import (HIST_BINS, MEASUREMENT_VERSIONS, MEASUREMENTS, N_FOCAL, N_MEASUREMENTS,
                                  PERCENTILES, measurement_version, measurements_from_arrays, measurements_spec,
                                  organ_measurements)
from appliance.volume import Volume


def _crop(image, mask, spacing=(2.0, 1.0, 1.0), organ="spleen"):
    return type("Crop", (), {"image": Volume(image, spacing), "mask": Volume(mask, spacing), "organ": organ,
                             "status": "ok"})()


def test_known_box_gives_known_volume_intensities_and_shell():
    img = np.full((20, 40, 40), 0.2, np.float32)  # surroundings: bin 3 of 16
    mask = np.zeros(img.shape, np.uint8)
    mask[5:15, 10:30, 10:30] = 1  # 10 x 20 x 20 voxels of 2 x 1 x 1 mm = 8 mL
    img[mask > 0] = 0.55  # organ: bin 8
    img[6, 12, 12] = 0.97  # one bright voxel inside (a "stone"): the max and the top bin see it
    v = organ_measurements(_crop(img, mask))
    assert v.shape == (N_MEASUREMENTS,) and v.dtype == np.float32
    n = 10 * 20 * 20
    assert v[0] == pytest.approx(np.log1p(8.0) / 8.0, rel=1e-6)
    assert v[1] == pytest.approx((0.55 * (n - 1) + 0.97) / n, rel=1e-5)  # mean
    assert v[3] == pytest.approx(0.97)  # max
    pct = v[4:4 + len(PERCENTILES)]
    assert pct[2] == pytest.approx(0.55)  # median
    inside = v[4 + len(PERCENTILES):4 + len(PERCENTILES) + HIST_BINS]
    assert inside[8] == pytest.approx((n - 1) / n) and inside[15] == pytest.approx(1 / n)
    n1 = MEASUREMENT_VERSIONS["organ-measurements-v1"]
    shell = v[4 + len(PERCENTILES) + HIST_BINS:n1 - 1]
    assert shell[3] == pytest.approx(1.0) and v[n1 - 1] == pytest.approx(0.2)  # the 5 mm shell is all surroundings


def test_fluid_around_the_organ_shows_in_the_shell_only():
    img = np.full((20, 40, 40), 0.2, np.float32)
    mask = np.zeros(img.shape, np.uint8)
    mask[5:15, 10:30, 10:30] = 1
    img[mask > 0] = 0.55
    dry = organ_measurements(_crop(img, mask))
    wet = img.copy()
    wet[5:15, 30:33, 10:30] = 0.45  # a fluid rim just outside the organ (within 5 mm)
    got = organ_measurements(_crop(wet, mask))
    n_in = 4 + len(PERCENTILES) + HIST_BINS
    np.testing.assert_array_equal(got[:n_in], dry[:n_in])
    assert got[n_in + 7] > 0.05 and dry[n_in + 7] == 0.0  # bin of 0.45


def test_bad_crops_are_refused():
    img = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(TotalFMError, match="empty mask"):
        organ_measurements(_crop(img, np.zeros((4, 4, 4), np.uint8)))
    with pytest.raises(TotalFMError, match="differs"):
        measurements_from_arrays(img, np.ones((4, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(TotalFMError, match="no image or mask"):
        organ_measurements(type("C", (), {"image": None, "mask": None, "organ": "liver", "status": "absent"})())


def test_trainer_path_equals_appliance_path_on_real_crops(real_ct):
    """The trainer measures stored crop arrays with the organ recipe's spacing; the appliance measures the OrganCrop.
    Both must produce identical bytes."""
    from appliance.crops import crop_organs
    from appliance.nifti_io import read_nifti

    d = real_ct / "ts_upper_abdomen"
    crops = crop_organs(read_nifti(d / "ct.nii.gz"), read_nifti(d / "seg_totalsegmentator_fast.nii.gz")).present()
    assert len(crops) >= 5
    for organ, c in crops.items():
        a = organ_measurements(c)
        b = measurements_from_arrays(np.asarray(c.image.array), np.asarray(c.mask.array),
                                     ontology.ORGANS_BY_NAME[organ].crop.spacing_mm, organ)
        assert np.all(np.isfinite(a)) and a.tobytes() == b.tobytes(), organ


def test_a_bundle_trained_on_other_measurements_is_refused_with_a_fix_it_message():
    """The encoder's measurement input is part of the bundle contract: another version or count must stop the
    pipeline at load time, not feed the model numbers it was not trained on."""
    from appliance.pipeline import Pipeline

    bundle = type("B", (), {"bundle_id": "site-bundle-7"})()
    assert Pipeline._check_measurements(bundle, {"input_shape": [16, 64, 64]}) is None  # pixels-only encoder
    assert Pipeline._check_measurements(bundle, {"measurements": MEASUREMENTS,
                                                 "n_measurements": N_MEASUREMENTS}) == MEASUREMENTS
    # a bundle of an older version keeps working: this software still computes it
    assert Pipeline._check_measurements(bundle, {"measurements": "organ-measurements-v1",
                                                 "n_measurements": 42}) == "organ-measurements-v1"
    for pre in ({"measurements": MEASUREMENTS + "-other", "n_measurements": N_MEASUREMENTS},
                {"measurements": MEASUREMENTS, "n_measurements": N_MEASUREMENTS + 1},
                {"measurements": "organ-measurements-v1", "n_measurements": N_MEASUREMENTS}):
        with pytest.raises(TotalFMError, match="site-bundle-7.*install the software version"):
            Pipeline._check_measurements(bundle, pre)


def _organ_with_blob(depth: float, radius_vox: int = 0):
    """A 30 x 60 x 60 organ of density 0.55 on a 1 mm grid with noise, and optionally a darker ball inside."""
    rng = np.random.default_rng(0)
    img = np.full((40, 80, 80), 0.2, np.float32)
    mask = np.zeros(img.shape, np.uint8)
    mask[5:35, 10:70, 10:70] = 1
    img[mask > 0] = 0.55 + rng.normal(0, 0.01, int(mask.sum())).astype(np.float32)
    if radius_vox:
        z, y, x = np.ogrid[:40, :80, :80]
        img[(z - 20) ** 2 + (y - 40) ** 2 + (x - 40) ** 2 <= radius_vox ** 2] -= depth
    return img, mask


def test_focal_measurements_see_a_small_dark_lesion_the_histogram_does_not():
    """v2's focal numbers: a 1 cm ball 0.15 darker in a 108 mL organ (0.5 % of it) barely moves the v1 numbers, but the
    smoothed dip, the share of the core 6 spreads below the median and the volume of that piece all rise."""
    spacing = (1.0, 1.0, 1.0)
    clean = measurements_from_arrays(*_organ_with_blob(0.0), spacing)
    lesion = measurements_from_arrays(*_organ_with_blob(0.15, radius_vox=5), spacing)
    n1 = MEASUREMENT_VERSIONS["organ-measurements-v1"]
    assert clean.shape == lesion.shape == (N_MEASUREMENTS,) == (n1 + N_FOCAL,)
    np.testing.assert_allclose(lesion[4 + 2], clean[4 + 2], atol=1e-3)  # the median does not move
    f0, f1 = clean[n1:], lesion[n1:]
    assert f1[0] > f0[0] + 0.05  # deepest dip below the median (smoothed at 3 mm: less than the full 0.15)
    assert f1[5] > 0.002 and f0[5] == 0.0  # share of the core 6 spreads (and >= 2 % of the window) below
    assert f1[6] == pytest.approx(np.log1p(f1[5] * 28 * 58 * 58 / 1000.0) / 4.0, rel=1e-3)  # one piece: all of it
    assert f1[9] == 0.0 and f0[9] == 0.0  # nothing brighter
    assert np.all(np.isfinite(lesion))


def test_versions_are_still_computable_and_named_by_their_count():
    img, mask = _organ_with_blob(0.15, radius_vox=5)
    v1 = measurements_from_arrays(img, mask, (1.0, 1.0, 1.0), version="organ-measurements-v1")
    v2 = measurements_from_arrays(img, mask, (1.0, 1.0, 1.0))
    assert v1.shape == (42,) and v1.tobytes() == v2[:42].tobytes()  # v2 extends v1, it does not change it
    assert measurement_version(42) == "organ-measurements-v1" and measurement_version(N_MEASUREMENTS) == MEASUREMENTS
    assert measurements_spec(True) == MEASUREMENTS and measurements_spec(0) is None and measurements_spec(False) is None
    assert measurements_spec(42) == "organ-measurements-v1"
    with pytest.raises(TotalFMError, match="no organ-measurement version has 7"):
        measurements_spec(7)
    with pytest.raises(TotalFMError, match="unknown organ-measurement version"):
        measurements_from_arrays(img, mask, (1.0, 1.0, 1.0), version="organ-measurements-v0")


def test_focal_measurements_stay_finite_on_degenerate_masks():
    """A one-voxel organ (no core to erode), an organ touching the crop's edge (the smoothing box is clipped) and a
    perfectly uniform organ (robust spread 0) must give finite numbers, not NaN or an exception mid-study."""
    n1 = MEASUREMENT_VERSIONS["organ-measurements-v1"]
    img = np.random.default_rng(1).random((12, 20, 20)).astype(np.float32)
    one = np.zeros(img.shape, np.uint8)
    one[6, 10, 10] = 1
    edge = np.zeros(img.shape, np.uint8)
    edge[:, :8, :8] = 1
    flat = np.full(img.shape, 0.4, np.float32)
    for image, mask in ((img, one), (img, edge), (flat, edge)):
        v = measurements_from_arrays(image, mask, (2.0, 1.5, 1.5))
        assert v.shape == (N_MEASUREMENTS,) and np.all(np.isfinite(v))
    uniform = measurements_from_arrays(flat, edge, (2.0, 1.5, 1.5))[n1:]
    assert uniform[0] == pytest.approx(0.0, abs=1e-6) and uniform[3:].sum() == 0.0  # nothing focal in a uniform organ


V3 = "organ-measurements-v3"


def _lung_with(nodule: bool, vessel: bool):
    """A 40 x 80 x 80 'lung' (density 0.3 with noise) on a 1.5 mm grid; optionally a bright 9 mm ball (a nodule) and a
    bright 6 mm-wide straight tube through the whole crop (a vessel, without ends: an end is a blob) of the same
    density 0.9."""
    rng = np.random.default_rng(2)
    img = np.full((40, 80, 80), 0.1, np.float32)
    mask = np.zeros(img.shape, np.uint8)
    mask[3:37, 5:75, 5:75] = 1
    img[mask > 0] = 0.3 + rng.normal(0, 0.01, int(mask.sum())).astype(np.float32)
    z, y, x = np.ogrid[:40, :80, :80]
    if vessel:
        img[np.broadcast_to((y - 25) ** 2 + (x - 25) ** 2 <= 2 ** 2, img.shape)] = 0.9  # all along z: no end cap
    if nodule:
        img[(z - 20) ** 2 + (y - 50) ** 2 + (x - 50) ** 2 <= 3 ** 2] = 0.9  # 6 voxels (9 mm) across
    return img, mask


def test_v3_blob_numbers_see_a_nodule_and_not_a_vessel_of_the_same_density():
    """v3 appends the strongest bright / dark blob per scale (3, 5 mm): a ball lights the bright numbers, a straight
    tube of the same density does not (flat along its axis); neither touches the dark ones; v3 extends v2."""
    spacing = (1.5, 1.5, 1.5)
    n2, n3 = MEASUREMENT_VERSIONS["organ-measurements-v2"], MEASUREMENT_VERSIONS[V3]
    assert n3 == n2 + 4 and measurement_version(n3) == V3 and measurements_spec(V3) == V3
    vessel = measurements_from_arrays(*_lung_with(False, True), spacing, version=V3)
    both = measurements_from_arrays(*_lung_with(True, True), spacing, version=V3)
    v2 = measurements_from_arrays(*_lung_with(True, True), spacing, version="organ-measurements-v2")
    assert vessel.shape == both.shape == (n3,) and both[:n2].tobytes() == v2.tobytes()
    bright3, dark3, bright5, dark5 = both[n2:]
    assert bright3 > 5 * max(vessel[n2], 1e-3) and bright3 > 0.05  # the ball, not the tube
    assert bright5 > vessel[n2 + 2]
    assert dark3 < 0.2 * bright3 and dark5 < 0.2 * bright3  # nothing dark: noise only
    assert np.all(np.isfinite(both))


def test_v3_blob_numbers_stay_finite_on_degenerate_masks():
    img = np.random.default_rng(1).random((12, 20, 20)).astype(np.float32)
    one = np.zeros(img.shape, np.uint8)
    one[6, 10, 10] = 1
    flat = np.full(img.shape, 0.4, np.float32)
    edge = np.zeros(img.shape, np.uint8)
    edge[:, :8, :8] = 1
    n2 = MEASUREMENT_VERSIONS["organ-measurements-v2"]
    for image, mask in ((img, one), (img, edge), (flat, edge)):
        v = measurements_from_arrays(image, mask, (2.0, 1.5, 1.5), version=V3)
        assert v.shape == (n2 + 4,) and np.all(np.isfinite(v)) and np.all(v[n2:] >= 0)
    assert measurements_from_arrays(flat, edge, (2.0, 1.5, 1.5), version=V3)[n2:].max() < 1e-3  # float32 rounding


def test_shared_derivative_passes_give_the_bytes_of_six_gaussian_filters():
    """The v3 blob pass shares the 1-D passes its six second derivatives have in common; a v3 vector is fixed once
    bundles use it, so the shortcut must give exactly what ``gaussian_filter(order=...)`` gives (anisotropic grid)."""
    from scipy import ndimage

    from appliance.preprocess import _second_derivatives

    x = np.random.default_rng(3).random((14, 22, 18)).astype(np.float32)
    sigma = np.array([1.0, 2.0, 2.0])
    got = _second_derivatives(x, sigma)
    assert sorted(got) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    for (i, j), d in got.items():
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        assert d.dtype == np.float32
        assert d.tobytes() == ndimage.gaussian_filter(x, sigma, order=order).tobytes(), (i, j)
