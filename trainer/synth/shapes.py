"""Implicit shapes in LPS millimetres: each returns an approximate signed distance (mm, negative inside).

They take broadcastable coordinate arrays (x, y, z) so the same function serves the coarse grid and small boxes.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def rotation(rng: np.random.Generator | None, max_deg: float, base=None) -> np.ndarray:
    """A rotation matrix: ``base`` Euler angles (deg, about x, y, z) plus a random jitter of up to max_deg."""
    ang = np.radians(np.asarray(base if base is not None else (0.0, 0.0, 0.0), dtype=np.float64))
    if rng is not None and max_deg > 0:
        ang = ang + np.radians(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid(x, y, z, centre, semi, rot: np.ndarray | None = None):
    """First-order signed distance to an ellipsoid (f / |grad f|, exact on the axes, good near the surface)."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if rot is not None:  # coordinates in the ellipsoid frame: R^T d
        dx, dy, dz = (rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
                      rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
                      rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz)
    a, b, c = semi
    r = np.sqrt((dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)
    g = np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2 + (dz / c**2) ** 2)
    return np.where(r > 1e-6, (r - 1) * r / np.maximum(g, 1e-9), -min(semi))


def ellipse_xy(x, y, centre, ax, ay):
    """Signed distance to an infinite elliptic cylinder along z (ax, ay may be arrays varying with z)."""
    dx, dy = x - centre[0], y - centre[1]
    r = np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2)
    g = np.sqrt((dx / ax**2) ** 2 + (dy / ay**2) ** 2)
    return np.where(r > 1e-6, (r - 1) * r / np.maximum(g, 1e-9), -np.minimum(ax, ay))


def box(x, y, z, centre, half):
    q = [np.abs(x - centre[0]) - half[0], np.abs(y - centre[1]) - half[1], np.abs(z - centre[2]) - half[2]]
    return np.maximum(np.maximum(q[0], q[1]), q[2])


def resample_path(points, radii, step: float):
    """Points along a polyline every ``step`` mm, with linearly interpolated radii."""
    p = np.asarray(points, dtype=np.float64)
    r = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    # radii given at fewer control points than the (smoothed) path: spread them evenly along it
    r = r * np.ones(len(p)) if r.size == 1 else np.interp(np.linspace(0, 1, len(p)), np.linspace(0, 1, r.size), r)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0, s[-1], n)
    out = np.stack([np.interp(t, s, p[:, k]) for k in range(3)], axis=1)
    return out, np.interp(t, s, r)


def smooth_path(points, rng: np.random.Generator | None, jitter: float) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if rng is not None and jitter > 0:
        p = p + rng.normal(0, jitter, p.shape)
    # Chaikin corner cutting twice: a smooth tube from a few control points
    for _ in range(2):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        p = np.concatenate([p[:1], np.stack([q, r], axis=1).reshape(-1, 3), p[-1:]])
    return p


def tube(x, y, z, path_points, path_radii, step: float = 1.5):
    """Signed distance to a tube of varying radius around a polyline (nearest densely resampled centre point)."""
    pts, rad = resample_path(path_points, path_radii, step)
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    q = np.stack([np.broadcast_to(x, shape).ravel(), np.broadcast_to(y, shape).ravel(),
                  np.broadcast_to(z, shape).ravel()], axis=1)
    d, i = cKDTree(pts).query(q, workers=1)
    return (d - rad[i]).reshape(shape)


def path_bounds(points, radii, margin: float = 4.0):
    p = np.asarray(points, dtype=np.float64)
    r = float(np.max(radii)) + margin
    return p.min(axis=0) - r, p.max(axis=0) + r
