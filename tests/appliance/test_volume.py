"""The geometry convention itself: affine, canonical reorientation, resampling, NIfTI boundary."""

import numpy as np
import pytest

from appliance.nifti_io import nifti_affine, read_nifti, write_nifti
from appliance.volume import CANONICAL_DIRECTION, Volume, orientation_code, resample, to_canonical


def _vol(direction, shape=(5, 6, 7), spacing=(3.0, 1.0, 2.0)):
    rng = np.random.default_rng(0)
    return Volume(rng.normal(size=shape).astype(np.float32), spacing, (10.0, -5.0, 2.0), np.asarray(direction, float))


def test_index_and_lps_are_inverse():
    v = _vol([[0, 0, -1], [0, -1, 0], [1, 0, 0]])
    idx = np.array([[1, 2, 3], [4, 0, 6]], float)
    assert np.allclose(v.lps_to_index(v.index_to_lps(idx)), idx)
    assert np.allclose(v.affine() @ [1, 2, 3, 1], [*v.index_to_lps([1, 2, 3]), 1])


@pytest.mark.parametrize("direction", [
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]],      # canonical SPL
    [[0, 0, -1], [0, -1, 0], [1, 0, 0]],    # feet-first, rows anterior
    [[1, 0, 0], [0, 0, 1], [0, -1, 0]],     # permuted axes
    [[0, 1, 0], [-1, 0, 0], [0, 0, -1]],    # another permutation with flips
])
def test_to_canonical_keeps_every_voxel_in_place(direction):
    v = _vol(direction)
    c = to_canonical(v)
    assert np.allclose(c.direction, CANONICAL_DIRECTION) and orientation_code(c.direction) == "SPL"
    # every voxel value sits at the same patient position before and after
    for idx in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        p = v.index_to_lps(idx)
        j = np.rint(c.lps_to_index(p)).astype(int)
        assert c.array[tuple(j)] == v.array[idx]


def test_resample_keeps_the_outer_corner_and_the_values():
    z, y, x = np.meshgrid(np.arange(8), np.arange(10), np.arange(12), indexing="ij")
    v = Volume((2 * z + 3 * y - x).astype(np.float32), (2.0, 1.0, 1.0))  # linear field: trilinear is exact
    r = resample(v, (1.0, 2.0, 0.5))
    assert r.shape == (16, 5, 24)
    # the corner of voxel 0 stays where it was
    assert np.allclose(r.index_to_lps((-0.5, -0.5, -0.5)), v.index_to_lps((-0.5, -0.5, -0.5)))
    inner = (slice(2, -2), slice(1, -1), slice(2, -2))
    pts = np.stack(np.meshgrid(*[np.arange(n) for n in r.shape], indexing="ij"), -1)[inner].reshape(-1, 3)
    src = v.lps_to_index(r.index_to_lps(pts))
    expect = 2 * src[:, 0] + 3 * src[:, 1] - src[:, 2]
    assert np.allclose(r.array[inner].reshape(-1), expect, atol=1e-4)


def test_resample_onto_a_reference_grid_for_labels():
    lab = Volume(np.zeros((6, 6, 6), np.uint8), (2.0, 2.0, 2.0))
    lab.array[2:4, 2:4, 2:4] = 5
    ref = Volume(np.zeros((12, 12, 12), np.float32), (1.0, 1.0, 1.0), origin=(-0.5, -0.5, -0.5))
    out = resample(lab, order=0, reference=ref)
    assert out.array.dtype == np.uint8 and set(np.unique(out.array)) == {0, 5}
    assert out.array.sum() == 5 * 64  # the labelled 4 mm cube is 4x4x4 voxels at 1 mm
    assert out.same_grid(ref)


def test_nifti_round_trip_and_ras_convention(tmp_path):
    v = _vol([[0, 0, -1], [0, -1, 0], [1, 0, 0]])
    write_nifti(v, tmp_path / "v.nii.gz")
    back = read_nifti(tmp_path / "v.nii.gz")
    assert back.same_grid(v) and np.array_equal(back.array, v.array)
    a = nifti_affine(v)
    # NIfTI voxel (i=x, j=y, k=z) = our (2, 1, 0) index order; RAS = LPS with x, y negated
    lps = v.index_to_lps((1, 2, 3))
    assert np.allclose(a @ [3, 2, 1, 1], [-lps[0], -lps[1], lps[2], 1])


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), (0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="orthonormal"):
        Volume(np.zeros((2, 2, 2)), (1.0, 1.0, 1.0), direction=np.ones((3, 3)))
    with pytest.raises(ValueError, match="3-D"):
        Volume(np.zeros((2, 2)), (1.0, 1.0, 1.0))
