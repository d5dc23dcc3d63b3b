"""The output grid of a phantom and its coarse twin, on which smooth shapes are evaluated and then upsampled.

Why a coarse twin: organ outlines are smooth implicit functions (signed distance in mm, negative inside). Evaluating
them at ~2.5 mm and upsampling linearly to the output voxels costs a fraction of a full-resolution evaluation and
gives the same sub-millimetre boundaries, because a signed distance is (almost) linear near the surface.
Upsampling is separable (one linear pass per axis), so a 512x512x300 grid needs no full-size coordinate arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from appliance.volume import CANONICAL_DIRECTION, Volume

COARSE_TARGET_MM = 2.5


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]  # (z, y, x)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin_lps: tuple[float, float, float]  # LPS (x, y, z) of voxel [0, 0, 0] centre
    factor: tuple[int, int, int] = field(init=False)

    def __post_init__(self) -> None:
        f = tuple(max(1, int(round(COARSE_TARGET_MM / s))) for s in self.spacing)
        object.__setattr__(self, "factor", f)

    @classmethod
    def centred(cls, shape, spacing, centre_lps=(0.0, 0.0, 0.0)) -> "Grid":
        """A canonical-orientation grid whose centre lies at ``centre_lps``."""
        shape = tuple(int(n) for n in shape)
        spacing = tuple(float(s) for s in spacing)
        half = [(n - 1) * s / 2.0 for n, s in zip(shape, spacing)]  # (z, y, x)
        origin = (centre_lps[0] - half[2], centre_lps[1] - half[1], centre_lps[2] - half[0])
        return cls(shape, spacing, origin)

    # axis a of the array is LPS component 2 - a (z <- S, y <- P, x <- L)
    def axis_mm(self, axis: int) -> np.ndarray:
        return self.origin_lps[2 - axis] + np.arange(self.shape[axis], dtype=np.float64) * self.spacing[axis]

    @property
    def coarse_shape(self) -> tuple[int, int, int]:
        return tuple(-(-n // f) for n, f in zip(self.shape, self.factor))  # type: ignore[return-value]

    def coarse_axis_mm(self, axis: int) -> np.ndarray:
        f, s = self.factor[axis], self.spacing[axis]
        j = np.arange(self.coarse_shape[axis], dtype=np.float64)
        return self.origin_lps[2 - axis] + (j * f + (f - 1) / 2.0) * s

    def to_volume(self, array: np.ndarray, **meta) -> Volume:
        return Volume(array, self.spacing, self.origin_lps, CANONICAL_DIRECTION.copy(), dict(meta))

    # --- bounding boxes -----------------------------------------------------------------------------------------
    def bbox_from_mm(self, lo_lps, hi_lps) -> tuple[slice, slice, slice] | None:
        """Full-resolution slices covering the LPS box [lo, hi] (clipped to the grid); None when outside."""
        out = []
        for axis in range(3):
            c = 2 - axis
            o, s, n = self.origin_lps[c], self.spacing[axis], self.shape[axis]
            a = int(np.floor((min(lo_lps[c], hi_lps[c]) - o) / s))
            b = int(np.ceil((max(lo_lps[c], hi_lps[c]) - o) / s)) + 1
            a, b = max(a, 0), min(b, n)
            if a >= b:
                return None
            out.append(slice(a, b))
        return tuple(out)  # type: ignore[return-value]

    def coarse_range(self, axis: int, sl: slice) -> tuple[int, int, np.ndarray]:
        """Coarse index range [c0, c1) needed to interpolate full indices sl, and their coarse coordinates."""
        f = self.factor[axis]
        i = np.arange(sl.start, sl.stop, dtype=np.float64)
        c = (i - (f - 1) / 2.0) / f
        n = self.coarse_shape[axis]
        c0 = max(0, int(np.floor(c[0])))
        c1 = min(n, int(np.floor(c[-1])) + 2)
        return c0, c1, c

    def sub_mm(self, bbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable full-resolution LPS coordinates (z, y, x) of a bbox: shapes (n,1,1), (1,n,1), (1,1,n)."""
        z = self.axis_mm(0)[bbox[0]][:, None, None]
        y = self.axis_mm(1)[bbox[1]][None, :, None]
        x = self.axis_mm(2)[bbox[2]][None, None, :]
        return z, y, x


def upsample_linear(coarse: np.ndarray, coarse_start, coords) -> np.ndarray:
    """Separable linear interpolation of ``coarse`` (a coarse-grid block starting at ``coarse_start``) at the full-
    resolution coordinates ``coords`` (one 1-D array of coarse indices per axis), clamping at the edges."""
    out = coarse.astype(np.float32, copy=False)
    for axis in range(3):
        n = out.shape[axis]
        c = coords[axis] - coarse_start[axis]
        c = np.clip(c, 0, n - 1)
        i0 = np.floor(c).astype(np.intp)
        i1 = np.minimum(i0 + 1, n - 1)
        w = (c - i0).astype(np.float32)
        shp = [1, 1, 1]
        shp[axis] = -1
        w = w.reshape(shp)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out
