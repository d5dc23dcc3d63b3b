"""appliance.segment: sliding-window geometry and blending, with hand-written (translation-equivariant) predictors.

A thresholding "network" is exact under any tiling: if a window were read from or written to the wrong place, or a
voxel were left uncovered, the known shape would come back shifted, holed or mislabeled.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from appliance.segment import (SegmentationError, clean_components, dice_per_label, gaussian_importance, segment_volume,
                               sliding_window_probabilities, window_starts)
from appliance.volume import CANONICAL_DIRECTION, Volume


def pp(spacing=(3.0, 3.0, 3.0), patch=(8, 16, 16), class_ids=(0, 7)):
    return {"spacing_mm": list(spacing), "patch_size": list(patch), "clip_hu": [-1000.0, 1000.0], "mean": 0.0,
            "std": 100.0, "step": 0.5, "class_ids": list(class_ids), "label_space": "organ"}


def threshold_predict(calls=None):
    """channel 1 wins where the normalised intensity > 1 (HU > 100), channel 0 elsewhere."""

    def predict(batch):
        assert batch.ndim == 5 and batch.shape[1] == 1 and batch.dtype == np.float32
        if calls is not None:
            calls.append(batch.shape)
        x = batch[:, 0]
        return np.stack([np.full_like(x, 1.0), (x - 1.0) * 5.0 + 1.0], axis=1)

    return predict


def box_volume(shape, box, spacing=(3.0, 3.0, 3.0), direction=None, origin=(10.0, -20.0, 5.0)):
    a = np.full(shape, -50.0, dtype=np.float32)
    a[box] = 300.0
    return Volume(a, spacing, origin, CANONICAL_DIRECTION if direction is None else direction)


def test_known_shape_comes_back_exactly_on_working_grid():
    shape = (23, 37, 41)  # odd sizes, several windows on each axis
    box = (slice(3, 15), slice(20, 33), slice(1, 9))
    vol = box_volume(shape, box)
    calls = []
    out = segment_volume(vol, pp(), threshold_predict(calls), batch_size=3)
    assert out.same_grid(vol)
    expect = np.zeros(shape, np.uint8)
    expect[box] = 7
    np.testing.assert_array_equal(out.array, expect)
    assert all(c[0] <= 3 and c[2:] == (8, 16, 16) for c in calls)  # batched windows of the patch size


def test_windows_cover_every_voxel_and_probabilities_sum_to_one():
    img = np.random.default_rng(0).normal(size=(19, 33, 29)).astype(np.float32)
    prob = sliding_window_probabilities(img, (8, 16, 16), threshold_predict(), step=0.5, batch_size=4)
    assert prob.shape == (2,) + img.shape
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)
    assert np.isfinite(prob).all()
    np.testing.assert_array_equal(prob.argmax(0), (img > 1.0).astype(int))


@pytest.mark.parametrize("size,patch", [(8, 8), (9, 8), (33, 16), (100, 32), (5, 8)])
def test_window_starts(size, patch):
    starts = window_starts(size, patch, 0.5)
    assert starts[0] == 0
    if size >= patch:
        assert starts[-1] == size - patch
        assert all(b - a <= patch * 0.5 for a, b in zip(starts, starts[1:]))
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all()


def test_volume_smaller_than_patch():
    shape = (5, 7, 9)
    box = (slice(1, 4), slice(2, 5), slice(3, 8))
    vol = box_volume(shape, box)
    out = segment_volume(vol, pp(patch=(8, 16, 16)), threshold_predict())
    expect = np.zeros(shape, np.uint8)
    expect[box] = 7
    np.testing.assert_array_equal(out.array, expect)


def test_other_spacing_and_flipped_orientation_keep_the_shape_in_place():
    # 1.5 mm grid, axes flipped (as a NIfTI read might give): the box must come back where it was
    shape = (40, 60, 50)
    box = (slice(8, 28), slice(30, 52), slice(6, 26))
    flip = CANONICAL_DIRECTION.copy()
    flip[:, 1] *= -1
    flip[:, 2] *= -1
    vol = box_volume(shape, box, spacing=(1.5, 1.5, 1.5), direction=flip)
    out = segment_volume(vol, pp(), threshold_predict())
    assert out.same_grid(vol)
    ref = np.zeros(shape, np.uint8)
    ref[box] = 7
    d = dice_per_label(out.array, ref, [7])[7]
    assert d > 0.9, d
    # centre of mass within a working voxel (3 mm = 2 input voxels)
    com_p = np.argwhere(out.array == 7).mean(0)
    com_r = np.argwhere(ref == 7).mean(0)
    assert np.abs(com_p - com_r).max() <= 1.0


def test_gaussian_importance():
    g = gaussian_importance((8, 16, 16))
    assert g.shape == (8, 16, 16) and g.max() == pytest.approx(1.0) and g.min() > 0
    # symmetric, peak at the centre
    np.testing.assert_allclose(g, g[::-1, ::-1, ::-1], rtol=1e-6)
    assert g[4, 8, 8] > g[0, 0, 0]


def test_bad_predict_and_preprocessing_are_reported():
    vol = box_volume((8, 16, 16), (slice(1, 3),) * 3)
    with pytest.raises(SegmentationError):
        segment_volume(vol, pp(), lambda b: np.zeros((b.shape[0], 2, 4, 4, 4), np.float32))
    with pytest.raises(SegmentationError):
        segment_volume(vol, pp(class_ids=(0, 1, 2)), threshold_predict())
    bad = pp()
    del bad["clip_hu"]
    with pytest.raises(SegmentationError, match="clip_hu"):
        segment_volume(vol, bad, threshold_predict())


def test_dice_per_label():
    a = np.zeros((4, 4, 4), int)
    b = np.zeros((4, 4, 4), int)
    a[:2] = 1
    b[:1] = 1
    a[3, 0, 0] = 2
    d = dice_per_label(a, b, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 16 / (32 + 16))
    assert d[2] == 0.0
    assert math.isnan(d[3])


def test_clean_components_keeps_one_piece_of_a_solid_organ_and_only_drops_specks_elsewhere():
    lab = np.zeros((10, 20, 20), np.uint8)
    lab[1:6, 1:9, 1:9] = 1     # the liver
    lab[7:9, 15:18, 15:18] = 1  # a second, smaller "liver" elsewhere: not real for a solid organ
    lab[1:4, 12:15, 1:4] = 5   # kidney, right
    lab[1:4, 12:15, 8:10] = 5  # kidney, left (smaller, 2/3 of the right one): a legitimate second piece
    lab[9, 0, 19] = 5          # a one-voxel speck of "kidney"
    out = clean_components(lab, keep_largest=[1], min_component_fraction=0.1)
    expect = lab.copy()
    expect[7:9, 15:18, 15:18] = 0
    expect[9, 0, 19] = 0
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(clean_components(lab), lab)  # no rule: unchanged
    tie = np.zeros((3, 3, 7), np.uint8)
    tie[:, :, 0] = tie[:, :, 6] = 2
    assert (clean_components(tie, keep_largest=[2]) == 2).sum() == 9  # a size tie still leaves exactly one piece


def test_segment_volume_runs_the_models_postprocess_rule():
    shape = (23, 37, 41)
    vol = box_volume(shape, (slice(3, 15), slice(20, 33), slice(1, 9)))
    vol.array[18:20, 2:4, 30:32] = 300.0  # a small bright island: the threshold "network" calls it label 7 too
    plain = segment_volume(vol, pp(), threshold_predict())
    assert (plain.array == 7).sum() == 12 * 13 * 8 + 8
    cleaned = segment_volume(vol, pp() | {"postprocess": {"keep_largest": [7]}}, threshold_predict())
    assert (cleaned.array == 7).sum() == 12 * 13 * 8 and cleaned.array[18, 2, 30] == 0


@pytest.mark.parametrize("post, match", [({"keep_largest": [3]}, "not organ classes"),
                                         ({"keep_largest": [0]}, "not organ classes"),
                                         ({"min_component_fraction": 1.5}, r"\[0, 1\)"),
                                         ({"largest": [7]}, "unknown keys")])
def test_bad_postprocess_rule_is_reported(post, match):
    vol = box_volume((8, 16, 16), (slice(1, 3),) * 3)
    with pytest.raises(SegmentationError, match=match):
        segment_volume(vol, pp() | {"postprocess": post}, threshold_predict())
