"""Segmentation training data: organ label mapping on real scans, patient split, class-balanced patches."""

from __future__ import annotations

import numpy as np
import pytest

from appliance import ontology
from trainer.segmentation.seg_data import Case, PatchSampler, load_real, to_training_grid

PP = {"spacing_mm": [3.0] * 3, "patch_size": [8, 16, 16], "clip_hu": [-1000.0, 1000.0], "mean": 0.0, "std": 300.0}
LIVER = ontology.ORGAN_NAMES.index("liver") + 1


def test_patient_b_labels_sit_on_the_liver(real_ct):
    (name, img, org), = load_real("B", real_ct.parent)
    assert name == "ts_dicom_series" and img.same_grid(org)
    hu = float(img.array[org.array == LIVER].mean())
    assert 60 < hu < 120, hu  # contrast-enhanced liver ~89 HU (shared data README); a flip lands far off
    a, lab, sp = to_training_grid(img, org, (3.0, 3.0, 3.0))
    assert sp == (3.0, 3.0, 3.0) and a.shape == lab.shape
    assert 60 < float(a[lab == LIVER].mean()) < 120


def test_patient_a_is_both_nifti_scans(real_ct):
    cases = load_real("A", real_ct.parent)
    assert [c[0] for c in cases] == ["ts_abdomen_pelvis", "ts_upper_abdomen"]
    for _, img, org in cases:
        assert 25 < float(img.array[org.array == LIVER].mean()) < 70  # non-contrast liver ~45 HU


def test_patches_are_class_balanced_and_normalised():
    rng = np.random.default_rng(0)
    lab = np.zeros((30, 60, 60), np.uint8)
    lab[5:25, 10:50, 10:50] = LIVER  # big organ
    lab[14:16, 30:32, 30:32] = 6  # tiny organ (8 voxels)
    img = np.where(lab > 0, 50.0, -1000.0).astype(np.float32)
    s = PatchSampler([Case("t", "analytic", img, lab, (3.0,) * 3)], PP["patch_size"], PP, rng=rng, p_class=1.0,
                     augment=False)
    x, y = s.sample(40)
    assert x.shape == (40, 1, 8, 16, 16) and y.shape == (40, 8, 16, 16)
    assert x.dtype == np.float32 and y.dtype == np.int64
    with_tiny = sum((yy == 6).any() for yy in y)
    assert with_tiny >= 10  # ~half of the patches, although the tiny organ is 0.03 % of the voxels
    np.testing.assert_allclose(x[:, 0][y == LIVER][:10], 50.0 / 300.0, rtol=1e-5)


def test_global_class_sampling_centres_a_class_of_few_cases_as_often_as_any():
    """A tiny organ in one case of four: drawn per case it is centred in ~1/8 of the class patches, drawn over the
    training set's classes in ~1/2 (session 11: esophagus and prostate)."""
    def case(with_tiny):
        lab = np.zeros((30, 60, 60), np.uint8)
        lab[5:25, 10:50, 10:50] = LIVER
        if with_tiny:
            lab[14:16, 30:32, 30:32] = 6
        return Case("t", "analytic", np.where(lab > 0, 50.0, -1000.0).astype(np.float32), lab, (3.0,) * 3)

    cases = [case(True), case(False), case(False), case(False)]
    share = {}
    for mode in ("case", "global"):
        s = PatchSampler(cases, PP["patch_size"], PP, rng=np.random.default_rng(0), p_class=1.0, augment=False,
                         class_sampling=mode)
        _, y = s.sample(400)
        share[mode] = float(np.mean([(yy == 6).any() for yy in y]))
    assert share["case"] < 0.2 and share["global"] > 0.4, share
    with pytest.raises(ValueError, match="class_sampling"):
        PatchSampler(cases, PP["patch_size"], PP, rng=np.random.default_rng(0), class_sampling="organ")


def test_augmentation_changes_intensity_not_labels():
    rng = np.random.default_rng(1)
    lab = np.zeros((16, 32, 32), np.uint8)
    lab[4:12, 8:24, 8:24] = LIVER
    img = np.where(lab > 0, 50.0, 0.0).astype(np.float32)
    s = PatchSampler([Case("t", "analytic", img, lab, (3.0,) * 3)], PP["patch_size"], PP, rng=rng)
    x, y = s.sample(8)
    assert set(np.unique(y)) <= {0, LIVER}
    assert not np.allclose(x[:, 0][y == LIVER], 50.0 / 300.0)


def _sampler_on(img, lab, seed=0, **kw):
    return PatchSampler([Case("t", "analytic", img, lab, (3.0,) * 3)], PP["patch_size"], PP,
                        rng=np.random.default_rng(seed), **kw)


def test_identity_warp_is_the_plain_crop():
    rng = np.random.default_rng(2)
    img = rng.normal(0, 100, (20, 40, 40)).astype(np.float32)
    lab = rng.integers(0, 4, img.shape).astype(np.uint8)
    s = _sampler_on(img, lab)
    for centre in (np.array([10, 20, 20]), np.array([2, 3, 38])):  # inside, and over the edge (fill values)
        np.testing.assert_allclose(s._warp(img, centre, np.eye(3), -1000.0, order=1),
                                   s._crop(img, centre, np.float32(-1000.0)), atol=1e-4)
        np.testing.assert_array_equal(s._warp(lab, centre, np.eye(3), 0, order=0), s._crop(lab, centre, np.uint8(0)))


def test_spatial_augmentation_moves_image_and_labels_together():
    # a bright cube labelled liver: after any scale / rotation the label must still sit on the bright voxels
    lab = np.zeros((30, 60, 60), np.uint8)
    lab[8:22, 15:45, 15:45] = LIVER
    img = np.where(lab > 0, 300.0, -1000.0).astype(np.float32)
    s = _sampler_on(img, lab, p_class=1.0, p_spatial=1.0, scale_range=(0.7, 1.3), rotate_deg=30.0)
    s._augment = lambda im, lb: im  # isolate the spatial part
    x, y = s.sample(12)
    liver_x = x[:, 0][y == LIVER]
    assert liver_x.size > 0 and np.median(liver_x) == pytest.approx(1.0, abs=1e-3)  # 300 HU / 300
    assert np.median(x[:, 0][y == 0]) < -1.0  # background stays air
    # the warp really changes the geometry: zoomed out 2x around the cube centre, the 14x30x30 cube fills about
    # (14/16)(30/32)^2 = 77 % of an 8x16x16 patch that the plain crop fills completely
    zoom = _sampler_on(img, lab, scale_range=(2.0, 2.0), rotate_deg=0.0, tilt_deg=0.0)
    centre = np.array([15, 30, 30])
    assert (zoom._crop(lab, centre, np.uint8(0)) == LIVER).mean() == 1.0
    frac = (zoom._warp(lab, centre, zoom._spatial_matrix(), 0, order=0) == LIVER).mean()
    assert 0.6 < frac < 0.9, frac


def test_spatial_settings_are_validated():
    lab = np.zeros((8, 16, 16), np.uint8)
    img = np.zeros(lab.shape, np.float32)
    with pytest.raises(ValueError, match="p_spatial"):
        _sampler_on(img, lab, p_spatial=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        _sampler_on(img, lab, scale_range=(1.2, 0.8))


def test_whole_torso_views_hold_the_esophagus_and_prostate_that_abdominal_views_cut():
    """Session 11: in the abdominal test view the esophagus and prostate are slivers at the scan's edges, so the
    segmenter never learnt them. The whole-torso view must hold them whole (not touching the first or last slice)."""
    from trainer.segmentation.seg_data import TEST_PHANTOM_GEOMETRY, WHOLE_TORSO_VIEW_MM, whole_torso_geometry
    from trainer.synth.study import generate_study
    from appliance.crops import organ_index_map

    rng = np.random.default_rng(3)
    for _ in range(20):
        (nz, ny, nx), (sz, sy, sx) = whole_torso_geometry(rng)
        assert nz * sz >= WHOLE_TORSO_VIEW_MM and ny == nx
    eso, pro = (ontology.ORGAN_NAMES.index(n) + 1 for n in ("esophagus", "prostate"))
    coarse = (6.0, 8.0, 8.0)
    for seed in range(2100, 2110):  # a male phantom, at a coarse spacing so the test stays fast
        whole = generate_study(kind="analytic", seed=seed, index=0, shape=(int(np.ceil(WHOLE_TORSO_VIEW_MM / 6.0)), 48, 48),
                               spacing=coarse, findings=[])
        if whole.phantom.sex == "male":
            break
    lab = organ_index_map(whole.labels)
    zs = np.flatnonzero((lab == pro).any(axis=(1, 2)))
    assert zs.size and zs[0] > 0 and zs[-1] < lab.shape[0] - 1  # the whole prostate
    (nz, _, _), (sz, _, _) = TEST_PHANTOM_GEOMETRY
    cut = generate_study(kind="analytic", seed=seed, index=0, shape=(int(round(nz * sz / 6.0)), 48, 48),
                         spacing=coarse, findings=[])
    lab_cut = organ_index_map(cut.labels)
    assert (lab_cut == pro).sum() < 0.75 * (lab == pro).sum()  # the abdominal view cuts the prostate
    # the esophagus leaves the top of any torso scan (as at the thoracic inlet of a real chest CT), but the whole
    # view holds its thoracic part, several times what the abdominal view shows
    assert (lab == eso).sum() > 3 * (lab_cut == eso).sum()
