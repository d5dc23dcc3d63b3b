"""The Volume: a 3-D image on a grid in patient space. One convention, used everywhere.

Convention (read this once, then never think about it again):
- ``array`` axes are (z, y, x) = (slice, row, column), i.e. ``array[k, j, i]``.
- Patient coordinates are DICOM **LPS** millimetres (x -> patient Left, y -> Posterior, z -> Superior).
- ``spacing[a]`` is the voxel size in mm along array axis ``a`` (same order as the array).
- ``direction[:, a]`` is the LPS unit vector of array axis ``a``.
- ``origin`` is the LPS position of the *centre* of voxel ``[0, 0, 0]``.
- So the LPS position of voxel index ``(a0, a1, a2)`` is ``origin + direction @ (spacing * index)``; ``affine()``
  is that map as a 4x4 matrix.

Canonical orientation is the plain axial DICOM layout: axis 0 runs inferior->superior (+z), axis 1 anterior->posterior
(+y, rows go down the screen), axis 2 right->left (+x, columns go across). Its direction matrix is
CANONICAL_DIRECTION. NIfTI files (RAS, axes x, y, z) are converted at the file boundary, in ``appliance.nifti_io``.

Label maps are Volumes with an integer array on the same grid as their image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Columns: LPS vectors of array axes (z, y, x) in canonical layout.
CANONICAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True, eq=False)
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: CANONICAL_DIRECTION.copy())
    # Provenance and reader decisions (series UID, why this series, ...). Never patient names unless enabled.
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3-D array, got shape {self.array.shape}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError(f"direction must be orthonormal, got {d.tolist()}")
        object.__setattr__(self, "direction", d)

    # --- geometry -----------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel index (a0, a1, a2, 1) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_lps(self, index) -> np.ndarray:
        idx = np.asarray(index, dtype=np.float64)
        return idx @ (self.direction * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)

    def lps_to_index(self, points) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return (p @ self.direction) / np.asarray(self.spacing)

    def same_grid(self, other: "Volume", tol_mm: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.affine(), other.affine(), atol=tol_mm)
        )

    def with_array(self, array: np.ndarray, **meta) -> "Volume":
        """A volume on the same grid with other voxel values (e.g. a label map for this image)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} != grid shape {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def describe(self) -> dict:
        """Geometry summary for logs and `totalfm volume-info` (no patient data)."""
        arr = self.array
        return {
            "shape_zyx": list(self.shape),
            "spacing_mm_zyx": [round(s, 4) for s in self.spacing],
            "origin_lps_mm": [round(o, 3) for o in self.origin],
            "direction_columns_zyx": np.round(self.direction, 4).tolist(),
            "orientation": orientation_code(self.direction),
            "extent_mm_zyx": [round(s * n, 1) for s, n in zip(self.spacing, self.shape)],
            "dtype": str(arr.dtype),
            "value_range": [float(arr.min()), float(arr.max())] if arr.size else None,
        }


def orientation_code(direction: np.ndarray) -> str:
    """Three letters: the patient direction each array axis (z, y, x) points *to*, e.g. 'SPL' for canonical."""
    letters = []
    for a in range(3):
        v = direction[:, a]
        k = int(np.argmax(np.abs(v)))
        letters.append("LPS"[k] if v[k] > 0 else "RAI"[k])
    return "".join(letters)


def to_canonical(vol: Volume) -> Volume:
    """Reorient by axis permutation and flips only (no interpolation) to CANONICAL_DIRECTION (as near as possible).

    Exact for any direction whose axes are close to the patient axes; an oblique volume keeps its residual rotation
    (reported in meta['residual_obliquity_deg']).
    """
    d = vol.direction
    # For each canonical axis c (0: z/S, 1: y/P, 2: x/L) find the array axis most aligned with its LPS component.
    lps_component_of_canonical = (2, 1, 0)
    perm, flips = [], []
    used: set[int] = set()
    for comp in lps_component_of_canonical:
        scores = [abs(d[comp, a]) if a not in used else -1 for a in range(3)]
        a = int(np.argmax(scores))
        used.add(a)
        perm.append(a)
        flips.append(d[comp, a] < 0)
    arr = np.transpose(vol.array, perm)
    spacing = tuple(vol.spacing[a] for a in perm)
    direction = d[:, perm].copy()
    origin = np.asarray(vol.origin, dtype=np.float64)
    slicer = []
    for ax, flip in enumerate(flips):
        if flip:
            # the new first voxel is the old last one along this axis
            origin = origin + direction[:, ax] * spacing[ax] * (arr.shape[ax] - 1)
            direction[:, ax] = -direction[:, ax]
            slicer.append(slice(None, None, -1))
        else:
            slicer.append(slice(None))
    arr = np.ascontiguousarray(arr[tuple(slicer)])
    residual = float(np.degrees(np.arccos(np.clip(np.min(np.abs(np.diag(direction.T @ CANONICAL_DIRECTION))), -1, 1))))
    return Volume(arr, spacing, tuple(origin), direction, {**vol.meta, "residual_obliquity_deg": round(residual, 3)})


def resample(
    vol: Volume,
    spacing: tuple[float, float, float] | None = None,
    *,
    shape: tuple[int, int, int] | None = None,
    order: int = 1,
    cval: float | None = None,
    reference: Volume | None = None,
) -> Volume:
    """Resample onto a new grid with the same direction and the same physical first-voxel corner.

    Give ``spacing`` (shape follows from the extent), or ``reference`` (any grid: take its geometry exactly).
    ``order=0`` for label maps (nearest neighbour), 1 (trilinear) for images. Outside the input, label maps and
    the ``reference`` path get ``cval`` (default: the array minimum, i.e. air for CT, background for labels); images
    resampled by spacing replicate their edge (so border voxels are not blended with a fill value).
    """
    from scipy import ndimage

    src = vol.array
    if cval is None:
        cval = float(src.min()) if src.size else 0.0
    if reference is not None:
        # general case: map reference voxel centres into this volume's index space
        m = np.linalg.inv(vol.affine()) @ reference.affine()
        out_dtype = src.dtype if order == 0 else np.float32
        out = ndimage.affine_transform(
            src.astype(np.float32) if order > 0 else src, m[:3, :3], offset=m[:3, 3],
            output_shape=reference.shape, order=order, mode="constant", cval=cval, prefilter=False,
        ).astype(out_dtype, copy=False)
        return Volume(out, reference.spacing, reference.origin, reference.direction, dict(vol.meta))
    if spacing is None:
        raise ValueError("resample needs spacing or reference")
    new_sp = np.asarray(spacing, dtype=np.float64)
    old_sp = np.asarray(vol.spacing, dtype=np.float64)
    if shape is None:
        extent = old_sp * np.asarray(vol.shape)
        shape = tuple(max(1, int(round(e))) for e in extent / new_sp)
    # keep the outer corner of voxel 0 fixed: centre moves by (new - old) / 2 along each axis
    scale = new_sp / old_sp
    offset = (scale - 1.0) / 2.0
    if np.allclose(scale, 1.0) and tuple(shape) == vol.shape:
        return vol
    out_dtype = src.dtype if order == 0 else np.float32
    out = ndimage.affine_transform(
        src.astype(np.float32) if order > 0 else src, scale, offset=offset, output_shape=tuple(shape),
        order=order, mode="nearest" if order > 0 else "constant", cval=cval, prefilter=False,
    ).astype(out_dtype, copy=False)
    new_origin = np.asarray(vol.origin) + vol.direction @ (old_sp * offset)
    return Volume(out, tuple(new_sp), tuple(new_origin), vol.direction.copy(), dict(vol.meta))
