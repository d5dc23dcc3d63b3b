"""Finding insertion: one function per catalogue finding, registered by name in INSERTERS.

Each inserter edits a Phantom in place (noise-free HU and labels) and returns a truth record: organ, finding,
location (LPS mm and voxel), size (mm), severity, laterality, and ``bbox_voxel``, a box that contains every voxel the
insertion changed (tests compare against the lesion-free phantom to hold inserters to it). A finding whose organ is
not in the scan (no prostate in a woman, no lungs in a pelvis scan) returns a record with ``inserted: False`` and the
reason, and changes nothing.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from appliance.ontology import TOTALSEG_ID_BY_NAME as TS
from trainer.synth import shapes as S
from trainer.synth.phantom import Phantom, ts_ids

Inserter = Callable[[Phantom, np.random.Generator], dict]
INSERTERS: dict[str, Inserter] = {}

BONE_IDS = ts_ids("spine") + tuple(i for n, i in TS.items() if n.startswith(("rib_", "hip_", "femur_"))) + (
    TS["sternum"],)
LUNG_IDS = ts_ids("lungs")


def register(name: str):
    def deco(fn: Inserter) -> Inserter:
        INSERTERS[name] = fn
        return fn
    return deco


class Skip(Exception):
    """The finding cannot be placed in this scan (organ absent or too small); the message says why."""


# --- small helpers ----------------------------------------------------------------------------------------------
def _severity(x: float, lo: float, hi: float) -> str:
    t = (x - lo) / max(hi - lo, 1e-9)
    return "mild" if t < 1 / 3 else ("moderate" if t < 2 / 3 else "severe")


def _union(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _need(ph: Phantom, *organs: str, min_ml: float = 1.0) -> tuple[int, ...]:
    ids = ts_ids(*organs)
    bb = ph.bbox(ids)
    if bb is None or ph.mask(ids, bb).sum() * ph.voxel_ml < min_ml:
        raise Skip(f"{'/'.join(organs)} not in the scan")
    return ids


def _side(ph: Phantom, rng, left: str, right: str) -> str:
    sides = [s for s, n in (("left", left), ("right", right)) if ph.present(n, min_ml=0.3)]
    if not sides:
        raise Skip(f"neither {left} nor {right} in the scan")
    return str(rng.choice(sides))


def _interior_point(ph: Phantom, ids, rng, margin_mm: float) -> np.ndarray:
    """A random voxel of the label set at least ``margin_mm`` from its edge (or the deepest one), full-res index."""
    bb = ph.bbox(ids)
    st = [max(1, int(round(2.0 / s))) for s in ph.grid.spacing]
    m = ph.mask(ids, bb)[::st[0], ::st[1], ::st[2]]
    d = ndimage.distance_transform_edt(np.pad(m, 1), sampling=[s * k for s, k in zip(ph.grid.spacing, st)])[
        1:-1, 1:-1, 1:-1]
    cand = np.argwhere(d >= margin_mm)
    if len(cand) == 0:
        cand = np.argwhere(d >= d.max() * 0.8)
    if len(cand) == 0:
        raise Skip("organ too small for the lesion")
    c = cand[rng.integers(len(cand))]
    return np.array([bb[a].start + c[a] * st[a] for a in range(3)])


def _centroid(ph: Phantom, ids) -> np.ndarray:
    bb = ph.bbox(ids)
    idx = np.argwhere(ph.mask(ids, bb))
    return idx.mean(axis=0) + [s.start for s in bb]


def _box_around(ph: Phantom, centre_vox, radius_mm: float):
    r = [int(np.ceil(radius_mm / s)) + 1 for s in ph.grid.spacing]
    c = np.round(centre_vox).astype(int)
    out = tuple(slice(max(0, c[a] - r[a]), min(ph.grid.shape[a], c[a] + r[a] + 1)) for a in range(3))
    if any(s.start >= s.stop for s in out):
        raise Skip("lesion falls outside the field of view")
    return out


def _local_mm(ph: Phantom, bb, centre_vox):
    sp = ph.grid.spacing
    z = (np.arange(bb[0].start, bb[0].stop) - centre_vox[0])[:, None, None] * sp[0]
    y = (np.arange(bb[1].start, bb[1].stop) - centre_vox[1])[None, :, None] * sp[1]
    x = (np.arange(bb[2].start, bb[2].stop) - centre_vox[2])[None, None, :] * sp[2]
    return x, y, z


def _blob(ph: Phantom, rng, centre_vox, semi_mm, target_hu: float, *, within=None, label=None, label_over=None,
          lobulation: float = 0.12):
    """Soft-edged, slightly lobulated ellipsoid blended towards target_hu; returns its bbox (changed voxels only
    inside it). ``within``: label ids the lesion is confined to; ``label``: relabel its core (over ``label_over``)."""
    semi = np.asarray(semi_mm, dtype=np.float64)
    bb = _box_around(ph, centre_vox, float(semi.max()) * (1 + lobulation) + 2 * max(ph.grid.spacing))
    x, y, z = _local_mm(ph, bb, centre_vox)
    rot = S.rotation(rng, 180)
    phi = S.ellipsoid(x, y, z, (0, 0, 0), semi, rot)
    th = np.arctan2(y, x + 1e-9)
    k, p = rng.integers(2, 5), rng.uniform(0, 2 * np.pi)
    phi = phi - lobulation * semi.min() * np.cos(k * th + p)
    edge = 0.6 * min(ph.grid.spacing)  # partial-volume ramp of about one voxel
    w = np.clip(0.5 - phi / (2 * edge), 0, 1).astype(np.float32)
    if within is not None:
        w *= np.isin(ph.labels[bb], within)
    view = ph.hu[bb]
    view += w * (np.float32(target_hu) - view)
    if label is not None:
        core = w >= 0.5
        if label_over is not None:
            core &= np.isin(ph.labels[bb], label_over)
        ph.labels[bb][core] = label
        ph.labels_changed()
    return bb


def _organ_mean(ph: Phantom, ids) -> float:
    bb = ph.bbox(ids)
    return float(ph.hu[bb][ph.mask(ids, bb)].mean())


def _record(ph: Phantom, organ: str, centre_vox, size_mm, severity, laterality, bb, **details) -> dict:
    c = np.asarray(centre_vox, dtype=np.float64)
    return {
        "organ": organ, "location_voxel": [round(float(v), 1) for v in c],
        "location_lps_mm": [round(v, 1) for v in ph.voxel_to_lps(c)],
        "size_mm": None if size_mm is None else round(float(size_mm), 1), "severity": severity,
        "laterality": laterality, "bbox_voxel": [[int(s.start), int(s.stop)] for s in bb], "details": details,
    }


def _radial_warp(ph: Phantom, ids, factor_linear: float, centre_vox=None, r_max_mm=None, margin_mm: float = 20.0):
    """Scale everything within r_max of a centre by ``factor_linear`` (organ enlargement or shrinkage by deformation).

    Inverse map, radial and monotone: output radius r samples source radius r/k inside k*r_max, a linear ramp
    from r_max to r2 in the shell [k*r_max, r2], identity outside r2. So an organ inside r_max is scaled exactly
    (volume x k^3, up to voxelisation) and neighbours are pushed aside, nothing torn or overwritten.
    """
    sp = np.asarray(ph.grid.spacing)
    bbo = ph.bbox(ids)
    if centre_vox is None:
        centre_vox = _centroid(ph, ids)
    if r_max_mm is None:
        idx = np.argwhere(ph.mask(ids, bbo)) + [s.start for s in bbo]
        r_max_mm = float(np.sqrt((((idx - centre_vox) * sp) ** 2).sum(axis=1)).max()) + max(sp)
    k = factor_linear
    r1 = k * r_max_mm
    r2 = max(r1, r_max_mm) + margin_mm
    bb = _box_around(ph, centre_vox, r2)
    x, y, z = _local_mm(ph, bb, centre_vox)
    r = np.sqrt(x**2 + y**2 + z**2).astype(np.float32)
    src = np.where(r <= r1, r / k, np.where(r < r2, r_max_mm + (r - r1) * (r2 - r_max_mm) / (r2 - r1), r))
    scale = np.where(r > 1e-6, src / np.maximum(r, 1e-6), 1 / k).astype(np.float32)
    off = np.array([s.start for s in bb], dtype=np.float32)
    cz, cy, cx = (np.asarray(centre_vox, dtype=np.float32) - off)
    coords = [cz + (z / sp[0]) * scale, cy + (y / sp[1]) * scale, cx + (x / sp[2]) * scale]
    coords = [np.broadcast_to(c, r.shape) for c in coords]
    hu_src, lab_src = ph.hu[bb].copy(), ph.labels[bb].copy()
    ph.hu[bb] = ndimage.map_coordinates(hu_src, coords, order=1, mode="nearest")
    ph.labels[bb] = ndimage.map_coordinates(lab_src, coords, order=0, mode="nearest")
    ph.labels_changed()
    return bb, centre_vox, r_max_mm


def _enlarge(ph, rng, organ, classes, lo, hi, name_extent="volume_factor"):
    ids = _need(ph, *classes, min_ml=5)
    before = ph.volume_ml(*classes)
    vf = float(rng.uniform(lo, hi))
    bb, c, rmax = _radial_warp(ph, ids, vf ** (1 / 3))
    after = ph.volume_ml(*classes)
    sev = _severity(vf, lo, hi) if vf > 1 else _severity(1 / vf, 1 / hi, 1 / lo)
    return _record(ph, organ, c, 2 * rmax * vf ** (1 / 3), sev, None, bb, volume_factor=round(vf, 3),
                   volume_before_ml=round(before, 1), volume_after_ml=round(after, 1))


# --- liver and biliary -----------------------------------------------------------------------------------------
@register("hepatic_steatosis")
def hepatic_steatosis(ph, rng):
    ids = _need(ph, "liver", min_ml=50)
    shift = float(rng.uniform(20, 65))
    bb = ph.bbox(ids)
    m = ph.mask(ids, bb)
    ph.hu[bb][m] -= shift
    ext = (bb[0].stop - bb[0].start) * ph.grid.spacing[0]
    return _record(ph, "liver", _centroid(ph, ids), ext, _severity(shift, 20, 65), None, bb, hu_shift=-round(shift, 1))


@register("hepatomegaly")
def hepatomegaly(ph, rng):
    return _enlarge(ph, rng, "liver", ("liver",), 1.3, 1.8)


@register("liver_lesion")
def liver_lesion(ph, rng):
    ids = _need(ph, "liver", min_ml=50)
    base = _organ_mean(ph, ids)
    n = int(rng.integers(1, 4))
    bb, sizes, centres = None, [], []
    cyst = bool(rng.random() < 0.5)
    for _ in range(n):
        r = float(rng.uniform(4, 18))
        c = _interior_point(ph, ids, rng, r)
        hu = rng.uniform(0, 15) if cyst else base - rng.uniform(30, 60)
        bb = _union(bb, _blob(ph, rng, c, (r, r * rng.uniform(0.8, 1), r * rng.uniform(0.8, 1)), hu, within=ids))
        sizes.append(2 * r); centres.append(c)
    i = int(np.argmax(sizes))
    return _record(ph, "liver", centres[i], sizes[i], _severity(sizes[i], 8, 36), None, bb, count=n,
                   kind="cyst" if cyst else "hypodense lesion")


@register("biliary_dilation")
def biliary_dilation(ph, rng):
    ids = _need(ph, "liver", min_ml=50)
    hilum = _interior_point(ph, ids, rng, 25)
    sp = np.asarray(ph.grid.spacing)
    rad = float(rng.uniform(2.5, 5.0))
    bb = None
    for _ in range(int(rng.integers(4, 7))):
        d = rng.normal(0, 1, 3)
        d /= np.linalg.norm(d)
        L = float(rng.uniform(30, 60))
        pts = np.array([[0, 0, 0], d * L / 2 + rng.normal(0, 4, 3), d * L])  # (z, y, x) mm from hilum
        sub = _box_around(ph, hilum, L + rad + 4)
        x, y, z = _local_mm(ph, sub, hilum)
        phi = S.tube(z, y, x, pts, [rad, rad * 0.7, rad * 0.4], step=1.0)
        m = (phi < 0) & np.isin(ph.labels[sub], ids)
        ph.hu[sub][m] = float(rng.uniform(0, 15))
        bb = _union(bb, sub)
    return _record(ph, "liver", hilum, 2 * rad, _severity(rad, 2.5, 5), None, bb, duct_diameter_mm=round(2 * rad, 1))


@register("gallstones")
def gallstones(ph, rng):
    ids = _need(ph, "gallbladder", min_ml=3)
    n = int(rng.integers(1, 5))
    bb, big = None, 0.0
    c0 = None
    for _ in range(n):
        r = float(rng.uniform(2, 7))
        c = _interior_point(ph, ids, rng, r * 0.8)
        bb = _union(bb, _blob(ph, rng, c, (r, r, r), float(rng.uniform(250, 900)), within=ids, lobulation=0.05))
        if r > big:
            big, c0 = r, c
    return _record(ph, "gallbladder", c0, 2 * big, _severity(2 * big, 4, 14), None, bb, count=n)


# --- spleen, pancreas ------------------------------------------------------------------------------------------
@register("splenomegaly")
def splenomegaly(ph, rng):
    return _enlarge(ph, rng, "spleen", ("spleen",), 1.4, 2.2)


@register("pancreatic_atrophy")
def pancreatic_atrophy(ph, rng):
    return _enlarge(ph, rng, "pancreas", ("pancreas",), 0.45, 0.75)


# --- kidneys, adrenals -----------------------------------------------------------------------------------------
@register("renal_cyst")
def renal_cyst(ph, rng):
    side = _side(ph, rng, "kidney_left", "kidney_right")
    ids = (TS[f"kidney_{side}"],)
    r = float(rng.uniform(5, 22))
    c = _interior_point(ph, ids, rng, min(r, 12))
    bb = _blob(ph, rng, c, (r, r, r), float(rng.uniform(0, 15)), within=ids, label=TS[f"kidney_cyst_{side}"],
               label_over=ids, lobulation=0.03)
    return _record(ph, "kidneys", c, 2 * r, _severity(r, 5, 22), side, bb)


@register("renal_hypodensities")
def renal_hypodensities(ph, rng):
    side = _side(ph, rng, "kidney_left", "kidney_right")
    ids = (TS[f"kidney_{side}"],)
    base = _organ_mean(ph, ids)
    bb, big, c0 = None, 0, None
    for _ in range(int(rng.integers(1, 4))):
        r = float(rng.uniform(4, 10))
        c = _interior_point(ph, ids, rng, r * 0.7)
        bb = _union(bb, _blob(ph, rng, c, (r, r, r), base - float(rng.uniform(40, 80)), within=ids))
        if r > big:
            big, c0 = r, c
    return _record(ph, "kidneys", c0, 2 * big, _severity(big, 4, 10), side, bb)


@register("hydronephrosis")
def hydronephrosis(ph, rng):
    side = _side(ph, rng, "kidney_left", "kidney_right")
    ids = (TS[f"kidney_{side}"],)
    c = _centroid(ph, ids)
    r = float(rng.uniform(8, 20))
    bb = _blob(ph, rng, c, (r * 0.8, r * 0.8, r * 1.5), float(rng.uniform(0, 12)), within=ids, lobulation=0.3)
    return _record(ph, "kidneys", c, 2 * r, _severity(r, 8, 20), side, bb, pelvis_ap_mm=round(1.6 * r, 1))


@register("kidney_stone")
def kidney_stone(ph, rng):
    side = _side(ph, rng, "kidney_left", "kidney_right")
    ids = (TS[f"kidney_{side}"],)
    r = float(rng.uniform(1.5, 5))
    c = _interior_point(ph, ids, rng, 6)
    bb = _blob(ph, rng, c, (r, r, r), float(rng.uniform(500, 1300)), within=ids, lobulation=0.05)
    return _record(ph, "kidneys", c, 2 * r, _severity(r, 1.5, 5), side, bb)


@register("adrenal_nodule")
def adrenal_nodule(ph, rng):
    side = _side(ph, rng, "adrenal_gland_left", "adrenal_gland_right")
    ids = (TS[f"adrenal_gland_{side}"],)
    c = _centroid(ph, ids)
    r = float(rng.uniform(6, 16))
    bb = _blob(ph, rng, c, (r, r * 0.9, r), float(rng.uniform(0, 35)), within=(0,) + ids, label=ids[0],
               label_over=(0,) + ids)
    return _record(ph, "adrenal_glands", c, 2 * r, _severity(r, 6, 16), side, bb)


# --- GI tract --------------------------------------------------------------------------------------------------
@register("hiatal_hernia")
def hiatal_hernia(ph, rng):
    st = _need(ph, "stomach", min_ml=20)
    eso = _need(ph, "esophagus", min_ml=0.5)
    sbb = ph.bbox(st)
    top = sbb[0].stop  # stomach top slice
    ebb = ph.bbox(eso)
    # slices above the stomach where the (thin) esophagus is seen; the hernia sits 1-4 cm above the hiatus
    zs = [z for z in range(max(top, ebb[0].start), ebb[0].stop) if (ph.labels[z][ebb[1], ebb[2]] == eso[0]).any()]
    if not zs:
        raise Skip("esophagus not seen above the stomach")
    near = [z for z in zs if z <= top + 40 / ph.grid.spacing[0]] or zs[:1]
    z = int(rng.choice(near))
    pts = np.argwhere(ph.labels[z] == eso[0])
    c = np.array([z, *pts.mean(axis=0)])
    r = float(rng.uniform(12, 28))
    over = (0, TS["esophagus"]) + LUNG_IDS
    bb = _blob(ph, rng, c, (r, r * 0.9, r * 1.1), float(rng.uniform(10, 35)), within=over, label=st[0],
               label_over=over, lobulation=0.05)
    return _record(ph, "stomach", c, 2 * r, _severity(r, 12, 28), None, bb)


def _shell(ph, ids, bb, thick_mm, outside: bool):
    m = ph.mask(ids, bb)
    src = ~m if not outside else m
    d = ndimage.distance_transform_edt(src, sampling=ph.grid.spacing)
    return (d > 0) & (d <= thick_mm)


@register("bowel_wall_thickening")
def bowel_wall_thickening(ph, rng):
    choices = [o for o in ("colon", "small_bowel") if ph.present(o, min_ml=10)]
    if not choices:
        raise Skip("no bowel in the scan")
    organ = str(rng.choice(choices))
    ids = ts_ids(organ)
    c = _interior_point(ph, ids, rng, 3)
    t = float(rng.uniform(4, 12))
    bb = _box_around(ph, c, 35)
    m = ph.mask(ids, bb)
    d_in = ndimage.distance_transform_edt(m, sampling=ph.grid.spacing)
    d_out = ndimage.distance_transform_edt(~m, sampling=ph.grid.spacing)
    x, y, z = _local_mm(ph, bb, c)
    near = (x**2 + y**2 + z**2) < 30.0**2
    inner = m & (d_in <= t * 0.6) & near
    outer = ~m & (d_out <= t * 0.4) & near & (ph.labels[bb] == 0) & (ph.hu[bb] < 0)
    val = float(rng.uniform(35, 60))
    ph.hu[bb][inner | outer] = val
    ph.labels[bb][outer] = ids[0]
    ph.labels_changed()
    return _record(ph, organ, c, t, _severity(t, 4, 12), None, bb, wall_mm=round(t, 1), segment_length_mm=60)


@register("bowel_obstruction")
def bowel_obstruction(ph, rng):
    ids = _need(ph, "small_bowel", min_ml=20)
    grow = float(rng.uniform(5, 14))
    bb0 = ph.bbox(ids)
    pad = [int(np.ceil(grow / s)) + 1 for s in ph.grid.spacing]
    bb = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(bb0, pad, ph.grid.shape))
    m = np.isin(ph.labels[bb], (TS["small_bowel"],))
    d = ndimage.distance_transform_edt(~m, sampling=ph.grid.spacing)
    dil = (m | (d <= grow)) & np.isin(ph.labels[bb], (0, TS["small_bowel"])) & (ph.hu[bb] < 0) | m
    d_in = ndimage.distance_transform_edt(dil, sampling=ph.grid.spacing)
    _, yy, _ = ph.grid.sub_mm(bb)
    fluid = np.where(d_in <= 2.5, 45.0, float(rng.uniform(5, 20))).astype(np.float32)
    level = np.percentile(yy.ravel(), 8)
    fluid = np.where((yy < level) & (d_in > 2.5), -1000.0, fluid)
    ph.hu[bb][dil] = np.broadcast_to(fluid, dil.shape)[dil]
    ph.labels[bb][dil] = TS["small_bowel"]
    ph.labels_changed()
    diam = 22 + 2 * grow
    return _record(ph, "small_bowel", _centroid(ph, ids), diam, _severity(grow, 5, 14), None, bb,
                   loop_diameter_mm=round(diam, 1))


def _wall_depth_ok(ph: Phantom, bb) -> np.ndarray:
    """True where a voxel lies deeper than the body wall (so fluid and gas stay inside the peritoneum)."""
    wall = float(ph.meta.get("wall_mm", 30.0))
    st = [max(1, int(round(3.0 / s))) for s in ph.grid.spacing]
    body = ph.hu[::st[0], ::st[1], ::st[2]] > -500
    for k in range(body.shape[0]):  # lungs and bowel gas are inside the body: fill holes slice by slice
        body[k] = ndimage.binary_fill_holes(body[k])
    d = ndimage.distance_transform_edt(body,
                                       sampling=[s * k for s, k in zip(ph.grid.spacing, st)])
    d_full = d[np.ix_(np.arange(bb[0].start, bb[0].stop) // st[0], np.arange(bb[1].start, bb[1].stop) // st[1],
                      np.arange(bb[2].start, bb[2].stop) // st[2])]
    return d_full > wall + 4


@register("free_air")
def free_air(ph, rng):
    ids = _need(ph, "liver", min_ml=50)
    lbb = ph.bbox(ids)
    bb = (lbb[0], slice(0, ph.grid.shape[1]), slice(0, ph.grid.shape[2]))
    fat = (ph.labels[bb] == 0) & (ph.hu[bb] < -30) & (ph.hu[bb] > -300) & _wall_depth_ok(ph, bb)
    cand = np.argwhere(fat)
    if len(cand) == 0:
        raise Skip("no intraperitoneal fat space at the level of the liver")
    # gas rises: in a supine patient free air collects in the most anterior (smallest y) peritoneal space
    cand = cand[cand[:, 1] <= np.percentile(cand[:, 1], 5)]
    centre = cand[rng.integers(len(cand))] + [lbb[0].start, 0, 0]
    semi = (float(rng.uniform(20, 50)), float(rng.uniform(4, 9)), float(rng.uniform(15, 35)))  # x, y, z
    bb = _box_around(ph, centre, max(semi) + 4)
    x, y, z = _local_mm(ph, bb, centre)
    phi = S.ellipsoid(x, y, z, (0, 0, 0), semi)
    m = (phi < 0) & (ph.labels[bb] == 0) & (ph.hu[bb] < -30) & (ph.hu[bb] > -300) & _wall_depth_ok(ph, bb)
    ph.hu[bb][m] = -1000.0
    return _record(ph, "small_bowel", centre, 2 * semi[1], _severity(semi[0], 20, 50), None, bb,
                   volume_ml=round(float(m.sum()) * ph.voxel_ml, 1))


@register("ascites")
def ascites(ph, rng):
    ids = _need(ph, "liver", min_ml=50)
    near = ids + tuple(i for i in ts_ids("spleen", "small_bowel", "colon") if ph.bbox((i,)) is not None)
    depth = float(rng.uniform(8, 35))
    bb0 = ph.bbox(near)
    pad = [int(np.ceil(depth / s)) + 1 for s in ph.grid.spacing]
    bb = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(bb0, pad, ph.grid.shape))
    m = np.isin(ph.labels[bb], near)
    d = ndimage.distance_transform_edt(~m, sampling=ph.grid.spacing)
    fat = (ph.labels[bb] == 0) & (ph.hu[bb] < -30) & (ph.hu[bb] > -300)
    fluid = fat & (d <= depth) & _wall_depth_ok(ph, bb)
    lowest = ph.bbox(ids)[0].start - int(60 / ph.grid.spacing[0])  # no fluid far below the liver tip
    zz = np.arange(bb[0].start, bb[0].stop)[:, None, None]
    fluid &= zz >= lowest
    vol = float(fluid.sum()) * ph.voxel_ml
    if vol < 1:  # decide before writing: a skipped finding must leave the image untouched
        raise Skip("no peritoneal fat space for fluid")
    ph.hu[bb][fluid] = float(rng.uniform(0, 20))
    return _record(ph, "liver", _centroid(ph, ids), depth, _severity(depth, 8, 35), None, bb,
                   volume_ml=round(vol, 1))


# --- chest -----------------------------------------------------------------------------------------------------
def _dependent_lung(ph, rng, depth_lo, depth_hi, hu_fn, relabel: bool, name: str):
    lat = str(rng.choice(["left", "right", "bilateral"], p=[0.35, 0.35, 0.3]))
    sides = ["left", "right"] if lat == "bilateral" else [lat]
    lung_side = {"left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
                 "right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")}
    sides = [s for s in sides if ph.present(*lung_side[s], min_ml=20)]
    if not sides:
        raise Skip("no lungs in the scan")
    lat = sides[0] if len(sides) == 1 else "bilateral"
    depth = float(rng.uniform(depth_lo, depth_hi))
    bb, c0 = None, None
    for s in sides:
        ids = ts_ids(*lung_side[s])
        b = ph.bbox(ids)
        m = ph.mask(ids, b)
        zz, yy, _ = ph.grid.sub_mm(b)
        # dependent (posterior, supine) rim of the lung, deepest at the base
        ymax = np.max(np.where(m, np.broadcast_to(yy, m.shape), -1e9), axis=1, keepdims=True)
        zbase = zz[0, 0, 0] + ph.grid.spacing[0] * np.argmax(m.any(axis=(1, 2)))
        taper = np.clip(1 - (zz - zbase) / (4 * depth + 40), 0, 1)
        region = m & (yy >= ymax - depth * taper) & (taper > 0)
        ph.hu[b][region] = hu_fn(region.sum())
        if relabel:
            ph.labels[b][region] = 0
        bb = _union(bb, b)
        if c0 is None:
            idx = np.argwhere(region)
            c0 = (idx.mean(axis=0) + [q.start for q in b]) if len(idx) else _centroid(ph, ids)
    ph.labels_changed()
    return _record(ph, "lungs", c0, depth, _severity(depth, depth_lo, depth_hi), lat, bb, depth_mm=round(depth, 1))


@register("pleural_effusion")
def pleural_effusion(ph, rng):
    v = float(rng.uniform(0, 20))
    return _dependent_lung(ph, rng, 10, 45, lambda n: v, True, "pleural_effusion")


@register("atelectasis")
def atelectasis(ph, rng):
    v = float(rng.uniform(-150, 30))
    return _dependent_lung(ph, rng, 5, 18, lambda n: v, False, "atelectasis")


@register("lung_nodule")
def lung_nodule(ph, rng):
    side = _side(ph, rng, "lung_lower_lobe_left", "lung_lower_lobe_right")
    ids = ts_ids(*( ("lung_upper_lobe_left", "lung_lower_lobe_left") if side == "left" else
                  ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")))
    r = float(rng.uniform(2.5, 12))
    c = _interior_point(ph, ids, rng, r + 3)
    bb = _blob(ph, rng, c, (r, r, r), float(rng.uniform(10, 60)), within=ids, lobulation=0.2)
    return _record(ph, "lungs", c, 2 * r, _severity(r, 2.5, 12), side, bb)


@register("cardiomegaly")
def cardiomegaly(ph, rng):
    return _enlarge(ph, rng, "heart", ("heart",), 1.3, 1.8)


@register("coronary_calcification")
def coronary_calcification(ph, rng):
    ids = _need(ph, "heart", min_ml=50)
    bb0 = ph.bbox(ids)
    m = ph.mask(ids, bb0)
    surf = np.argwhere(m & ~ndimage.binary_erosion(m))
    c = _centroid(ph, ids)
    surf = surf + [s.start for s in bb0]
    surf = surf[(surf[:, 1] < c[1]) & (surf[:, 0] > c[0])]  # anterior-superior surface: where coronaries run
    if len(surf) == 0:
        raise Skip("heart surface not found")
    n = int(rng.integers(2, 9))
    bb = None
    for p in surf[rng.integers(len(surf), size=n)]:
        r = float(rng.uniform(1.0, 3.0))
        bb = _union(bb, _blob(ph, rng, p, (r, r, r * 2), float(rng.uniform(400, 1000)), lobulation=0.05))
    return _record(ph, "heart", c, None, _severity(n, 2, 8), None, bb, count=n)


@register("aortic_aneurysm")
def aortic_aneurysm(ph, rng):
    ids = _need(ph, "aorta", min_ml=5)
    bb0 = ph.bbox(ids)
    zs = np.arange(bb0[0].start, bb0[0].stop)
    zs = zs[: max(1, len(zs) // 3)]  # infrarenal part (lowest third)
    z = int(rng.choice(zs[len(zs) // 4: max(len(zs) // 4 + 1, 3 * len(zs) // 4)]))
    sl = np.argwhere(ph.labels[z] == ids[0])
    if len(sl) == 0:
        raise Skip("aorta not found")
    c = np.array([z, *sl.mean(axis=0)])
    rad = float(np.sqrt(len(sl) * ph.grid.spacing[1] * ph.grid.spacing[2] / np.pi))
    k = float(rng.uniform(1.6, 2.8))
    bb, _, _ = _radial_warp(ph, ids, k, centre_vox=c, r_max_mm=rad * 1.25, margin_mm=12)
    return _record(ph, "aorta", c, 2 * rad * k, _severity(k, 1.6, 2.8), None, bb,
                   diameter_mm=round(2 * rad * k, 1), normal_diameter_mm=round(2 * rad, 1))


@register("atherosclerosis")
def atherosclerosis(ph, rng):
    ids = _need(ph, "aorta", min_ml=5)
    bb0 = ph.bbox(ids)
    m = ph.mask(ids, bb0)
    surf = np.argwhere(m & ~ndimage.binary_erosion(m)) + [s.start for s in bb0]
    n = int(rng.integers(3, 12))
    bb = None
    for p in surf[rng.integers(len(surf), size=n)]:
        r = float(rng.uniform(1.2, 3.5))
        bb = _union(bb, _blob(ph, rng, p, (r, r, r * 1.5), float(rng.uniform(300, 900)), within=ids,
                              lobulation=0.05))
    return _record(ph, "aorta", _centroid(ph, ids), None, _severity(n, 3, 12), None, bb, count=n)


@register("lymphadenopathy")
def lymphadenopathy(ph, rng):
    ids = _need(ph, "aorta", min_ml=5)
    bb0 = ph.bbox(ids)
    n = int(rng.integers(1, 5))
    bb, big, c0 = None, 0, None
    for _ in range(n):
        z = int(rng.integers(bb0[0].start, bb0[0].start + max(1, (bb0[0].stop - bb0[0].start) // 2)))
        sl = np.argwhere(ph.labels[z] == ids[0])
        if len(sl) == 0:
            continue
        ctr = sl.mean(axis=0)
        rad = np.sqrt(len(sl) * ph.grid.spacing[1] * ph.grid.spacing[2] / np.pi)
        r = float(rng.uniform(6, 14))
        sx = rng.choice([-1, 1])
        c = np.array([z, ctr[0], ctr[1] + sx * (rad + r + 3) / ph.grid.spacing[2]])
        bb = _union(bb, _blob(ph, rng, c, (r * 1.3, r, r * 1.6), float(rng.uniform(30, 50)), within=(0,)))
        if r > big:
            big, c0 = r, c
    if bb is None:
        raise Skip("aorta not found")
    return _record(ph, "aorta", c0, 2 * big, _severity(big, 6, 14), None, bb, count=n, short_axis_mm=round(2 * big, 1))


# --- pelvis ----------------------------------------------------------------------------------------------------
@register("bladder_wall_thickening")
def bladder_wall_thickening(ph, rng):
    ids = _need(ph, "urinary_bladder", min_ml=20)
    t = float(rng.uniform(4, 12))
    bb = ph.bbox(ids)
    m = ph.mask(ids, bb)
    d = ndimage.distance_transform_edt(np.pad(m, 1), sampling=ph.grid.spacing)[1:-1, 1:-1, 1:-1]
    ring = m & (d <= t)
    ph.hu[bb][ring] = float(rng.uniform(35, 55))
    return _record(ph, "urinary_bladder", _centroid(ph, ids), t, _severity(t, 4, 12), None, bb, wall_mm=round(t, 1))


@register("prostatomegaly")
def prostatomegaly(ph, rng):
    if ph.sex != "male":
        raise Skip(f"no prostate in this scan (sex: {ph.sex})")
    return _enlarge(ph, rng, "prostate", ("prostate",), 1.6, 3.0)


# --- bones -----------------------------------------------------------------------------------------------------
@register("fracture")
def fracture(ph, rng):
    cands = [v for v in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "T8", "T9") if
             ph.present(f"vertebrae_{v}", min_ml=3)]
    if not cands:
        raise Skip("no vertebrae in the scan")
    lev = str(rng.choice(cands))
    ids = (TS[f"vertebrae_{lev}"],)
    bb = ph.bbox(ids)
    m = ph.mask(ids, bb)
    c = _centroid(ph, ids)
    zz, yy, _ = ph.grid.sub_mm(bb)
    zc = ph.voxel_to_lps(c)[2]
    yc = ph.voxel_to_lps(c)[1]
    zmax = zz.max()
    loss = float(rng.uniform(0.2, 0.5))
    h = zmax - zz.min()
    # wedge: the superior endplate collapses most anteriorly (small y) within the vertebral body (y < centroid)
    cut = zmax - loss * h * np.clip((yc - yy) / 20.0 + 0.4, 0, 1.2)
    body = m & (yy < yc + 5)
    gone = body & (zz > cut)
    ph.hu[bb][gone] = 70.0
    ph.labels[bb][gone] = 0
    band = body & (zz <= cut) & (zz > cut - 3)
    ph.hu[bb][band] += 250.0  # sclerotic band of impacted trabeculae
    ph.labels_changed()
    return _record(ph, "spine", c, loss * h, _severity(loss, 0.2, 0.5), None, bb, level=lev,
                   height_loss_pct=round(100 * loss))


@register("osteopenia")
def osteopenia(ph, rng):
    present = tuple(i for i in BONE_IDS if ph.bbox((i,)) is not None)
    if not any(i in ts_ids("spine") for i in present):
        raise Skip("no spine in the scan")
    f = float(rng.uniform(0.4, 0.7))
    bb = ph.bbox(present)
    m = ph.mask(present, bb) & (ph.hu[bb] > 100)
    v = ph.hu[bb]
    v[m] = 40 + (v[m] - 40) * f
    return _record(ph, "spine", _centroid(ph, ts_ids("spine")), None, _severity(1 - f, 0.3, 0.6), None, bb,
                   density_factor=round(f, 2))


@register("metastatic_disease")
def metastatic_disease(ph, rng):
    opts = [o for o, ml in (("liver", 100), ("lungs", 100), ("spine", 30)) if ph.present(o, min_ml=ml)]
    if not opts:
        raise Skip("none of liver, lungs, spine in the scan")
    organ = str(rng.choice(opts))
    ids = ts_ids(organ)
    base = _organ_mean(ph, ids)
    n = int(rng.integers(3, 9))
    bb, big, c0 = None, 0, None
    sclerotic = bool(rng.random() < 0.3)
    for _ in range(n):
        r = float(rng.uniform(3, 11))
        c = _interior_point(ph, ids, rng, r * 0.6 if organ != "spine" else 2)
        if organ == "liver":
            hu = base - rng.uniform(30, 60)
        elif organ == "lungs":
            hu = rng.uniform(20, 60)
        else:
            hu = rng.uniform(600, 900) if sclerotic else rng.uniform(10, 60)
        bb = _union(bb, _blob(ph, rng, c, (r, r, r), float(hu), within=ids))
        if r > big:
            big, c0 = r, c
    return _record(ph, organ, c0, 2 * big, _severity(n, 3, 8), None, bb, count=n)


def insert_finding(ph: Phantom, name: str, rng: np.random.Generator) -> dict:
    """Insert one finding; always returns its truth record (inserted True/False, reason when not)."""
    try:
        fn = INSERTERS[name]
    except KeyError:
        from appliance.errors import OntologyError
        raise OntologyError(f"no insertion method for finding {name!r}; known: {', '.join(sorted(INSERTERS))}")
    # Transactional: a finding that gives up half way (e.g. its third metastasis finds no room) must leave the image
    # exactly as it was, since the truth will say "not inserted". A copy costs ~0.1 s at 512x512x300.
    hu, labels = ph.hu.copy(), ph.labels.copy()
    try:
        rec = fn(ph, rng)
        rec.update(finding=name, inserted=True)
    except Skip as why:
        ph.hu, ph.labels = hu, labels
        ph.labels_changed()
        rec = {"finding": name, "inserted": False, "reason": str(why)}
    return rec
