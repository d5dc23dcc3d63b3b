"""Analytic torso phantom: smooth, randomly deformed organ shapes at plausible positions, sizes and HU.

Anatomy is laid out in LPS mm around the body axis (x = 0, y = 0), with z = 0 at the pelvic floor and the lung
apices near z = 440 (a compact adult). Every shape is an implicit function evaluated on the coarse grid after a
smooth random displacement of the coordinates (one field for the whole body, so organs deform together and do not
tear apart), upsampled to the output voxels and painted in anatomical order; ``over`` restricts what a shape may
overwrite (bowel fills only fat, bone wins over everything).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from appliance.ontology import TOTALSEG_ID_BY_NAME as TS
from trainer.synth import shapes as S
from trainer.synth.grid import Grid, upsample_linear
from trainer.synth.phantom import Phantom

FULL_TORSO_Z_MM = 450.0
DEFAULT_FOV_XY_MM = 400.0

# (non-contrast, arterial, portal venous) mean HU; why these: textbook values, e.g. liver enhances mostly in the
# portal venous phase, spleen and renal cortex in the arterial phase, aorta peaks arterially.
HU = {
    "fat": (-95, -95, -95), "muscle": (48, 55, 60), "skin": (30, 35, 35),
    "liver": (58, 75, 110), "spleen": (48, 125, 118), "kidney": (32, 160, 165), "medulla": (32, 95, 160),
    "pancreas": (42, 115, 95), "adrenal": (30, 60, 60), "bile": (8, 8, 8), "gi_wall": (40, 95, 85),
    "urine": (8, 8, 8), "prostate": (45, 70, 75), "myocardium": (45, 110, 100), "blood": (42, 320, 165),
    "vein": (42, 90, 150), "esophagus": (40, 60, 70), "lung": (-860, -860, -860), "air": (-1000, -1000, -1000),
    "cord": (35, 35, 35), "csf": (10, 10, 10), "disc": (85, 85, 85), "cortical_bone": (800, 800, 800),
}
PHASE_INDEX = {"non_contrast": 0, "arterial": 1, "portal_venous": 2}
LUNG_IDS = tuple(TS[n] for n in ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                                 "lung_middle_lobe_right", "lung_lower_lobe_right"))
MUSCLE_IDS = tuple(TS[n] for n in ("autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"))
SOFT_OVER = (0,) + LUNG_IDS + MUSCLE_IDS


def default_spacing(shape, fov_z_mm: float = FULL_TORSO_Z_MM, fov_xy_mm: float = DEFAULT_FOV_XY_MM):
    return (fov_z_mm / shape[0], fov_xy_mm / shape[1], fov_xy_mm / shape[2])


class Canvas:
    """Output arrays plus the coarse deformation and texture fields; ``paint`` rasterises one implicit shape."""

    def __init__(self, grid: Grid, rng: np.random.Generator, deform_mm: float = 6.0):
        self.grid, self.rng = grid, rng
        cs = grid.coarse_shape
        csp = np.array([grid.spacing[a] * grid.factor[a] for a in range(3)])
        self.hu = np.full(grid.shape, -1000.0, dtype=np.float32)
        self.labels = np.zeros(grid.shape, dtype=np.uint8)
        # smooth random displacement (mm) per LPS component, correlation length ~40 mm
        # made on a 10 mm grid and upsampled: smoothing at 40 mm on the 2.5 mm grid cost a second per study
        self.disp = []
        vc = tuple(max(2, int(np.ceil(n * c / 10.0))) for n, c in zip(cs, csp))
        for _ in range(3):
            f = ndimage.gaussian_filter(rng.standard_normal(vc).astype(np.float32), 4.0, mode="reflect")
            f = ndimage.zoom(f, [n / v for n, v in zip(cs, vc)], order=1, grid_mode=True, mode="nearest")
            f *= deform_mm / max(float(f.std()), 1e-6)
            self.disp.append(f)
        tex = ndimage.gaussian_filter(rng.standard_normal(cs).astype(np.float32), 4.0 / csp, mode="reflect")
        self.tex = tex / max(float(tex.std()), 1e-6)
        self.caxes = [grid.coarse_axis_mm(a) for a in range(3)]

    def _coarse_block(self, bbox):
        rng_ = [self.grid.coarse_range(a, bbox[a]) for a in range(3)]
        cs = tuple(slice(r[0], r[1]) for r in rng_)
        z = self.caxes[0][cs[0]][:, None, None] + self.disp[2][cs]
        y = self.caxes[1][cs[1]][None, :, None] + self.disp[1][cs]
        x = self.caxes[2][cs[2]][None, None, :] + self.disp[0][cs]
        return cs, [r[0] for r in rng_], [r[2] for r in rng_], x, y, z

    def paint(self, phi_fn, lo, hi, label: int, hu, *, over=None, tex_amp: float = 0.0, z_chunk: int = 24):
        """Paint where phi < 0 inside the LPS box [lo, hi]. ``hu``: a number or f(phi, x, y, z) on the full grid."""
        bbox = self.grid.bbox_from_mm(lo, hi)
        if bbox is None:
            return None
        cs, c0, coords, x, y, z = self._coarse_block(bbox)
        phi_c = phi_fn(x, y, z).astype(np.float32)
        tex_c = self.tex[cs]
        # chunk along z to keep temporaries small on 512x512x300 grids
        k0, k1 = bbox[0].start, bbox[0].stop
        for a in range(k0, k1, z_chunk):
            b = min(a + z_chunk, k1)
            sub = (slice(a, b), bbox[1], bbox[2])
            zc = coords[0][a - k0:b - k0]
            phi = upsample_linear(phi_c, c0, (zc, coords[1], coords[2]))
            inside = phi < 0
            if over is not None:
                inside &= np.isin(self.labels[sub], over)
            if not inside.any():
                continue
            if callable(hu):
                zz, yy, xx = self.grid.sub_mm(sub)
                val = np.broadcast_to(hu(phi, xx, yy, zz), phi.shape)
            else:
                val = np.full(phi.shape, float(hu), dtype=np.float32)
            if tex_amp:
                val = val + tex_amp * upsample_linear(tex_c, c0, (zc, coords[1], coords[2]))
            self.hu[sub][inside] = val[inside]
            if label >= 0:
                self.labels[sub][inside] = label
        return bbox


def _hu(name, phase):
    return float(HU[name][PHASE_INDEX[phase]])


def _rim(inner: float, rim: float, thick: float):
    return lambda phi, x, y, z: np.where(phi > -thick, rim, inner).astype(np.float32)


def build_analytic(grid: Grid, rng: np.random.Generator, *, sex: str, phase: str, age: int) -> Phantom:
    """Paint a whole torso on ``grid`` (noise-free, unblurred HU; TotalSegmentator labels)."""
    cv = Canvas(grid, rng)
    s = float(rng.uniform(0.92, 1.08))  # body size
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    ph = lambda n: _hu(n, phase)  # noqa: E731

    # --- body wall: skin, subcutaneous fat, muscle; interior fat --------------------------------------------------
    ax, ay = 165 * s * u(0.92, 1.1), 115 * s * u(0.9, 1.12)
    fat_t, mus_t = u(8, 35), u(9, 15)
    harm = [(k, u(0, 0.025), u(0, 2 * np.pi)) for k in (2, 3, 4)]

    def body_phi(x, y, z):
        th = np.arctan2(y, x)
        sc = 1 + sum(a * np.cos(k * th + p) for k, a, p in harm)
        zf = 1 + 0.04 * np.tanh((z - 300) / 60)  # chest a little wider than the abdomen
        return S.ellipse_xy(x, y, (0, 0), ax * sc * zf, ay * sc * zf)

    def body_hu(phi, x, y, z):
        d = -phi
        out = np.full(phi.shape, -92.0, dtype=np.float32)
        out[d < 2 + fat_t + mus_t] = ph("muscle")
        out[d < 2 + fat_t] = ph("fat")
        out[d < 2] = ph("skin")
        return out

    big = 1e4
    cv.paint(body_phi, (-big, -big, -big), (big, big, big), 0, body_hu, tex_amp=4)
    wall = 2 + fat_t + mus_t
    iax, iay = ax - wall - 6, ay - wall - 6  # inner cavity (inside ribs)

    # --- spine geometry, shared by muscles, aorta and ribs -------------------------------------------------------
    y_vb = iay - 52  # vertebral body centre, y (posterior positive)
    levels = ["L5", "L4", "L3", "L2", "L1"] + [f"T{i}" for i in range(12, 0, -1)]
    heights = [26] * 5 + [19] * 12
    z_edges = 85 * s + np.concatenate([[0], np.cumsum(heights)]) * s

    for side, sx in (("left", 1), ("right", -1)):
        cv.paint(lambda x, y, z, sx=sx: S.tube(x, y, z, [(sx * 35, y_vb + 38, 40), (sx * 35, y_vb + 38, 460)], 17),
                 (sx * 35 - 25, y_vb + 10, 30), (sx * 35 + 25, y_vb + 65, 470), TS[f"autochthon_{side}"],
                 ph("muscle"), over=(0,), tex_amp=4)
        pts = S.smooth_path([(sx * 32, y_vb - 5, 235 * s), (sx * 45, y_vb - 8, 160 * s), (sx * 62, y_vb - 25, 80 * s),
                             (sx * 70, y_vb - 45, 20 * s)], rng, 2)
        rad = np.linspace(7, 22, len(pts))
        lo, hi = S.path_bounds(pts, rad)
        cv.paint(lambda x, y, z, p=pts, r=rad: S.tube(x, y, z, p, r), lo, hi, TS[f"iliopsoas_{side}"],
                 ph("muscle"), over=(0,), tex_amp=4)

    # --- lungs with lobes, airway --------------------------------------------------------------------------------
    z_dia = {"right": 270 * s + u(-10, 10), "left": 258 * s + u(-10, 10)}
    z_apex = 445 * s
    for side, sx in (("left", 1), ("right", -1)):
        zd = z_dia[side]

        def lung_phi(x, y, z, sx=sx, zd=zd):
            cav = S.ellipse_xy(x, y, (0, 0), iax, iay)
            # mediastinum: narrow in front of the heart, wider around the spine, a smooth transition between
            med = 20.0 + 18.0 / (1 + np.exp(-(y - (y_vb - 30)) / 8.0)) + 4 * np.sin(z / 23.0) - sx * x
            dome = zd + 28 * (1 - ((x - sx * 80) / 90) ** 2).clip(0) - 0.35 * y - z
            top = z - z_apex + 0.004 * ((x - sx * 70) ** 2 + y**2)
            return np.maximum(np.maximum(cav, med), np.maximum(dome, top))

        lo = (min(0, sx * iax), -iay, zd - 60)
        hi = (max(0, sx * iax), iay, z_apex + 5)
        bb = cv.paint(lung_phi, lo, hi, TS[f"lung_lower_lobe_{side}"], ph("lung"), tex_amp=25)
        if bb is not None:  # fissures: upper lobe anterior-superior of the oblique fissure, middle lobe (right)
            zz, yy, xx = grid.sub_mm(bb)
            lab = cv.labels[bb]
            lung = lab == TS[f"lung_lower_lobe_{side}"]
            z_line = zd + 20 + (yy + iay) / (2 * iay) * (z_apex - zd - 60)
            upper = lung & (zz > z_line)
            lab[upper] = TS[f"lung_upper_lobe_{side}"]
            if side == "right":
                lab[upper & (zz < zd + 75) & (yy < 10)] = TS["lung_middle_lobe_right"]
    # pulmonary vessels: a few tapering branches from each hilum (what makes lungs read as lungs)
    for sx in (1, -1):
        hilum = np.array([sx * 40, 5, 0.5 * (z_dia["left"] + z_apex) - 20])
        for _ in range(24):
            d = rng.normal(0, 1, 3)
            d[0] = abs(d[0]) * sx + sx * 0.8
            d /= np.linalg.norm(d)
            length = u(50, 120)
            mid = hilum + d * length * 0.5 + rng.normal(0, 6, 3)
            d2 = d + rng.normal(0, 0.6, 3)
            d2 /= np.linalg.norm(d2)
            # a parent vessel and one daughter branch from its middle, tapering to sub-millimetre calibre
            for pts, rad in ((np.array([hilum, mid, hilum + d * length]), np.array([4.0, 2.5, 1.0])),
                             (np.array([mid, mid + d2 * length * 0.4]), np.array([1.8, 0.8]))):
                lo, hi = S.path_bounds(pts, rad)
                cv.paint(lambda x, y, z, p=pts, r=rad: S.tube(x, y, z, p, r, step=1.0), lo, hi, -1, 40.0,
                         over=LUNG_IDS)
    trachea = S.smooth_path([(0, -10, 470), (0, -5, 400), (0, 0, 372)], None, 0)
    cv.paint(lambda x, y, z: S.tube(x, y, z, trachea, 9), (-15, -25, 360), (15, 15, 480), TS["trachea"], ph("air"))
    for sx in (1, -1):
        br = np.array([(0, 0, 374), (sx * 30, 8, 350), (sx * 45, 12, 335)])
        cv.paint(lambda x, y, z, b=br: S.tube(x, y, z, b, [7, 6, 4]), (sx * 55 if sx < 0 else -5, -10, 320),
                 (sx * 55 if sx > 0 else 5, 30, 380), -1, ph("air"))

    # --- heart and great vessels ---------------------------------------------------------------------------------
    hc = (22 + u(-8, 8), -iay + 75 + u(-5, 5), max(z_dia.values()) + 48)
    hsemi = (62 * s * u(0.9, 1.1), 48 * s * u(0.9, 1.1), 50 * s * u(0.9, 1.1))
    hrot = S.rotation(rng, 10, base=(0, -20, 25))
    cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, hc, hsemi, hrot),
             np.subtract(hc, 70 * s), np.add(hc, 70 * s), TS["heart"], _rim(ph("blood"), ph("myocardium"), 9),
             over=(0,) + LUNG_IDS, tex_amp=6)
    y_ao = y_vb - 32
    ao = S.smooth_path([(hc[0] - 15, hc[1] + 5, hc[2] + 10), (5, -25, 375 * s), (15, 5, 398 * s), (25, 40, 380 * s),
                        (25, y_ao + 15, 320 * s), (15, y_ao + 5, 250 * s), (10, y_ao, 200 * s),
                        (8, y_ao, 128 * s)], rng, 2)
    ar = np.concatenate([np.full(len(ao) // 3, 14.0), np.full(len(ao) // 3, 12.0),
                         np.full(len(ao) - 2 * (len(ao) // 3), 10.0)]) * u(0.9, 1.15)
    lo, hi = S.path_bounds(ao, ar)
    cv.paint(lambda x, y, z: S.tube(x, y, z, ao, ar), lo, hi, TS["aorta"], ph("blood"), over=SOFT_OVER + (TS["heart"],))
    for side, sx in (("left", 1), ("right", -1)):
        il = S.smooth_path([(8, y_ao, 130 * s), (sx * 35, y_ao - 2, 100 * s), (sx * 60, y_ao - 10, 60 * s),
                            (sx * 75, -20, 0)], rng, 2)
        lo, hi = S.path_bounds(il, 7)
        cv.paint(lambda x, y, z, p=il: S.tube(x, y, z, p, 6.5), lo, hi, TS[f"iliac_artery_{side}"], ph("blood"),
                 over=SOFT_OVER)
    ivc = S.smooth_path([(-22, y_ao + 2, 100 * s), (-24, y_ao, 200 * s), (-20, y_ao - 15, 262 * s),
                         (hc[0] - 35, hc[1] + 10, hc[2] - 20)], rng, 2)
    lo, hi = S.path_bounds(ivc, 11)
    cv.paint(lambda x, y, z: S.tube(x, y, z, ivc, 11), lo, hi, TS["inferior_vena_cava"], ph("vein"), over=SOFT_OVER)
    eso = S.smooth_path([(2, y_vb - 30, 470), (8, y_vb - 32, 330), (20, y_vb - 45, 275 * s)], rng, 1.5)
    lo, hi = S.path_bounds(eso, 8)
    cv.paint(lambda x, y, z: S.tube(x, y, z, eso, 7.5), lo, hi, TS["esophagus"], ph("esophagus"), over=SOFT_OVER)

    # --- upper abdomen -------------------------------------------------------------------------------------------
    lsc = s * u(0.9, 1.12)  # liver size
    lr_c = (-70 + u(-6, 6), -5 + u(-6, 6), z_dia["right"] - 40)
    ll_c = (5 + u(-6, 6), -iay + 45, z_dia["right"] - 30)
    lr_semi = (68 * lsc, 70 * lsc, 58 * lsc)
    ll_semi = (52 * lsc, 32 * lsc, 28 * lsc)
    rot1, rot2 = S.rotation(rng, 8), S.rotation(rng, 8, base=(0, 0, -15))

    def liver_phi(x, y, z):
        return np.minimum(S.ellipsoid(x, y, z, lr_c, lr_semi, rot1), S.ellipsoid(x, y, z, ll_c, ll_semi, rot2))

    cv.paint(liver_phi, (-170, -130, lr_c[2] - 100), (90, 110, lr_c[2] + 100), TS["liver"], ph("liver"),
             over=SOFT_OVER, tex_amp=5)
    sp_c = (iax - 35, iay - 60, z_dia["left"] - 35)
    sp_semi = (24 * s * u(0.85, 1.15), 52 * s * u(0.85, 1.15), 45 * s * u(0.85, 1.15))
    sprot = S.rotation(rng, 8, base=(0, 0, 35))
    cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, sp_c, sp_semi, sprot), np.subtract(sp_c, 70), np.add(sp_c, 70),
             TS["spleen"], ph("spleen"), over=SOFT_OVER, tex_amp=5)
    kidney_top = {}
    for side, sx, zc in (("left", 1, 182 * s), ("right", -1, 168 * s)):
        kc = (sx * 75 + u(-5, 5), y_vb - 5 + u(-5, 5), zc + u(-8, 8))
        ksemi = (24 * u(0.9, 1.1), 22 * u(0.9, 1.1), 55 * s * u(0.9, 1.1))
        krot = S.rotation(rng, 6, base=(0, sx * 12, sx * -30))
        kidney_top[side] = (kc, ksemi)
        k_hu = ph("kidney")
        med_hu = ph("medulla")
        cv.paint(lambda x, y, z, c=kc, a=ksemi, r=krot: S.ellipsoid(x, y, z, c, a, r), np.subtract(kc, 70),
                 np.add(kc, 70), TS[f"kidney_{side}"], _rim(med_hu, k_hu, 6), over=SOFT_OVER, tex_amp=3)
        # renal sinus fat at the hilum (medial, anterior): where stones and hydronephrosis live
        sc_ = (kc[0] - sx * 16, kc[1] - 6, kc[2])
        cv.paint(lambda x, y, z, c=sc_: S.ellipsoid(x, y, z, c, (9, 8, 22)), np.subtract(sc_, 30), np.add(sc_, 30),
                 -1, -40.0, over=(TS[f"kidney_{side}"],))
        ac = (sx * 45 + u(-4, 4), y_vb - 15, kc[2] + ksemi[2] + 8)
        arot = S.rotation(rng, 10, base=(20, 0, sx * 30))
        # adrenals sit in the fat between liver/spleen, crus and kidney top; they may indent liver or spleen
        cv.paint(lambda x, y, z, c=ac, r=arot: S.ellipsoid(x, y, z, c, (6, 14, 18), r), np.subtract(ac, 30),
                 np.add(ac, 30), TS[f"adrenal_gland_{side}"], ph("adrenal"),
                 over=SOFT_OVER + (TS["liver"], TS["spleen"]))
    gb_c = (lr_c[0] + 30 + u(-5, 5), -iay + 55 + u(-5, 5), lr_c[2] - 40 * lsc)
    gb_semi = (15 * u(0.8, 1.2), 16 * u(0.8, 1.2), 34 * u(0.8, 1.2))
    gbrot = S.rotation(rng, 10, base=(-40, 0, 0))
    cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, gb_c, gb_semi, gbrot), np.subtract(gb_c, 45), np.add(gb_c, 45),
             TS["gallbladder"], _rim(ph("bile"), ph("gi_wall"), 2), over=SOFT_OVER + (TS["liver"],))
    zp = 205 * s
    pan = S.smooth_path([(-25, y_ao - 28, zp - 10), (0, y_ao - 32, zp), (40, y_ao - 22, zp + 8),
                         (sp_c[0] - 15, sp_c[1] - 20, sp_c[2] - 10)], rng, 3)
    prad = np.linspace(14, 9, len(pan)) * u(0.85, 1.15)
    lo, hi = S.path_bounds(pan, prad)
    cv.paint(lambda x, y, z: S.tube(x, y, z, pan, prad), lo, hi, TS["pancreas"], ph("pancreas"), over=SOFT_OVER,
             tex_amp=8)
    st_c = (55 + u(-5, 5), -25 + u(-5, 5), z_dia["left"] - 30)
    st_semi = (45 * u(0.85, 1.2), 35 * u(0.85, 1.2), 48 * u(0.85, 1.2))
    gas_y = st_c[1] - st_semi[1] * u(0.2, 0.6)
    gi_wall = ph("gi_wall")

    def gi_contents(level_y, fluid):
        def f(phi, x, y, z):
            out = np.where(y < level_y, -1000.0, fluid).astype(np.float32)
            return np.where(phi > -3.5, gi_wall, out).astype(np.float32)
        return f

    antrum = np.array([(st_c[0] - 15, st_c[1] - 15, st_c[2] - 25), (10, -iay + 50, st_c[2] - 45),
                       (-15, -iay + 55, st_c[2] - 45)])

    def stomach_phi(x, y, z):
        return np.minimum(S.ellipsoid(x, y, z, st_c, st_semi), S.tube(x, y, z, antrum, [20, 15, 12]))

    cv.paint(stomach_phi, (-40, -iay, st_c[2] - 80), (st_c[0] + 60, st_c[1] + 50, st_c[2] + 60), TS["stomach"],
             gi_contents(gas_y, u(5, 35)), over=SOFT_OVER)
    duo = S.smooth_path([(-15, -iay + 55, st_c[2] - 45), (-40, y_ao - 40, zp + 5), (-48, y_ao - 28, zp - 20),
                         (-40, y_ao - 25, zp - 38), (-5, y_ao - 20, zp - 42), (18, y_ao - 25, zp - 30)], rng, 2)
    lo, hi = S.path_bounds(duo, 11)
    cv.paint(lambda x, y, z: S.tube(x, y, z, duo, 10.5), lo, hi, TS["duodenum"], gi_contents(-1e9, 15.0),
             over=SOFT_OVER)

    # --- bowel ---------------------------------------------------------------------------------------------------
    colon_ctrl = [(0, y_vb + 5, 45 * s), (20, y_vb - 20, 75 * s), (60, -10, 95 * s), (iax - 25, 10, 115 * s),
                  (iax - 22, 15, 185 * s), (iax - 35, -10, sp_c[2] - 20), (40, -iay + 30, 195 * s),
                  (-20, -iay + 30, 190 * s), (-iax + 35, -20, lr_c[2] - 60), (-iax + 25, 5, 160 * s),
                  (-iax + 35, -5, 105 * s)]
    colon = S.smooth_path(colon_ctrl, rng, 6)
    crad = np.concatenate([np.full(len(colon) - 6, 19.0), np.linspace(19, 25, 6)]) * u(0.85, 1.15)
    lo, hi = S.path_bounds(colon, crad)

    def colon_hu(phi, x, y, z):
        stool = -180.0 + 150.0 * np.sin(x * 0.5) * np.cos(y * 0.45) * np.sin(z * 0.4)
        out = np.where(y < 0.0, -950.0, stool).astype(np.float32)
        return np.where(phi > -3.0, gi_wall, out).astype(np.float32)

    cv.paint(lambda x, y, z: S.tube(x, y, z, colon, crad), lo, hi, TS["colon"], colon_hu, over=(0,))
    # small bowel: a smooth random walk of loops in the central lower abdomen
    walk = [np.array([-40.0, -40.0, 150 * s])]
    v = rng.normal(0, 1, 3)
    box_lo, box_hi = np.array([-iax + 55, -iay + 25, 85 * s]), np.array([iax - 55, y_ao - 20, 180 * s])
    for _ in range(70):
        v = 0.75 * v + 0.6 * rng.normal(0, 1, 3)
        v /= np.linalg.norm(v)
        nxt = walk[-1] + 10 * v
        bounce = (nxt < box_lo) | (nxt > box_hi)
        v[bounce] *= -1
        walk.append(np.clip(walk[-1] + 10 * v, box_lo, box_hi))
    walk = np.array(walk)
    lo, hi = S.path_bounds(walk, 12)
    cv.paint(lambda x, y, z: S.tube(x, y, z, walk, 11.0), lo, hi, TS["small_bowel"], gi_contents(-1e9, u(5, 30)),
             over=(0,))
    # --- pelvis --------------------------------------------------------------------------------------------------
    bl_c = (u(-5, 5), -iay + 45, 55 * s)
    bl_semi = (38 * u(0.7, 1.2), 30 * u(0.7, 1.2), 30 * u(0.7, 1.2))
    cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, bl_c, bl_semi), np.subtract(bl_c, 50), np.add(bl_c, 50),
             TS["urinary_bladder"], _rim(ph("urine"), ph("gi_wall"), 2.5), over=(0, TS["small_bowel"], TS["colon"]))
    if sex == "male":
        pr_c = (0, bl_c[1] + 25, bl_c[2] - bl_semi[2] - 14)
        pr_semi = (20, 15, 16) * np.array(u(0.85, 1.15))
        cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, pr_c, pr_semi), np.subtract(pr_c, 30), np.add(pr_c, 30),
                 TS["prostate"], ph("prostate"), over=SOFT_OVER + (TS["colon"],), tex_amp=4)

    # --- bones (win over soft tissue) ----------------------------------------------------------------------------
    cancellous = 260.0 - 1.6 * max(age - 30, 0) + u(-20, 20)
    cortical = ph("cortical_bone") + u(-80, 80)
    bone_hu = _rim(cancellous, cortical, 2.2)
    col = [(0, y_vb, z_edges[0] - 10), (0, y_vb, z_edges[-1] + 20)]
    cv.paint(lambda x, y, z: S.tube(x, y, z, col, 16), (-22, y_vb - 22, z_edges[0] - 15),
             (22, y_vb + 22, z_edges[-1] + 25), -1, ph("disc"), over=SOFT_OVER)
    for i, lev in enumerate(levels):
        z0, z1 = z_edges[i], z_edges[i + 1]
        zc, hz = 0.5 * (z0 + z1), 0.5 * (z1 - z0) - 2.5 * s
        rx, ry = (22.0, 17.0) if lev[0] == "L" else (17.0 + 0.4 * int(lev[1:]), 14.0)
        ycan = y_vb + ry + 10

        def vert_phi(x, y, z, zc=zc, hz=hz, rx=rx, ry=ry, ycan=ycan):
            body = np.maximum(S.ellipse_xy(x, y, (0, y_vb), rx, ry), np.abs(z - zc) - hz)
            rr = np.sqrt(x**2 + (y - ycan) ** 2)
            arch = np.maximum(np.maximum(np.abs(rr - 12.5) - 3.5, y_vb + ry - 3 - y), np.abs(z - zc) - 0.8 * hz)
            spin = S.box(x, y, z, (0, ycan + 24, zc - 4), (3.5, 12, 0.55 * hz))
            trans = S.box(x, y, z, (0, ycan - 2, zc), (30, 4, 0.4 * hz))
            return np.minimum(np.minimum(body, arch), np.minimum(spin, trans))

        cv.paint(vert_phi, (-40, y_vb - ry - 5, z0 - 5), (40, ycan + 45, z1 + 5), TS[f"vertebrae_{lev}"], bone_hu)
    canal = [(0, y_vb + 27, z_edges[0] - 40), (0, y_vb + 27, z_edges[-1] + 30)]
    cv.paint(lambda x, y, z: S.tube(x, y, z, canal, 8.5), (-12, y_vb + 10, -50), (12, y_vb + 45, 500), -1,
             ph("csf"))
    cv.paint(lambda x, y, z: S.tube(x, y, z, canal, 4.5), (-8, y_vb + 15, z_edges[0] + 40),
             (8, y_vb + 40, 500), TS["spinal_cord"], ph("cord"))
    sac_c = (0, y_vb + 20, z_edges[0] - 35 * s)
    sacrot = S.rotation(None, 0, base=(-30, 0, 0))
    cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, sac_c, (48, 18, 42 * s), sacrot), np.subtract(sac_c, 60),
             np.add(sac_c, 60), TS["sacrum"], bone_hu)
    s1 = np.array(sac_c) + (0, -8, 30 * s)
    cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, s1, (22, 16, 10)), s1 - 30, s1 + 30, TS["vertebrae_S1"], bone_hu)
    for side, sx in (("left", 1), ("right", -1)):
        wing_c = (sx * 85, y_vb - 10, 85 * s)

        def wing_phi(x, y, z, c=wing_c, sx=sx):
            e = S.ellipsoid(x, y, z, c, (45, 55, 40 * s), S.rotation(None, 0, base=(0, 0, sx * 30)))
            # iliac wing: only the lateral, posterior part of the shell (an open plate, not a closed ring)
            cut = np.maximum(abs(c[0]) - 10 - sx * x, (c[1] - 30) - y)
            return np.maximum(np.abs(e) - 4.0, np.maximum(cut, z - (c[2] + 30)))

        cv.paint(wing_phi, (sx * 25 if sx > 0 else -140, -60, 20), (140 if sx > 0 else -25, y_vb + 60, 130),
                 TS[f"hip_{side}"], bone_hu)
        pub = S.smooth_path([(sx * 12, -iay + 35, 15 * s), (sx * 55, -20, 22 * s), (sx * 80, 10, 40 * s)], None, 0)
        lo, hi = S.path_bounds(pub, 10)
        cv.paint(lambda x, y, z, p=pub: S.tube(x, y, z, p, 9), lo, hi, TS[f"hip_{side}"], bone_hu)
        fem = S.smooth_path([(sx * 88, 5, 25 * s), (sx * 100, 10, -10), (sx * 105, 15, -200)], None, 0)
        lo, hi = S.path_bounds(fem, 24)
        cv.paint(lambda x, y, z, p=fem: S.tube(x, y, z, p, [22, 14, 14]), lo, hi, TS[f"femur_{side}"], bone_hu)
    # ribs: 12 pairs, from each thoracic vertebra round the inner body wall, sloping down toward the front
    for i in range(1, 13):
        zi = 0.5 * (z_edges[levels.index(f"T{i}")] + z_edges[levels.index(f"T{i}") + 1])
        th_end = {1: 2.4, 11: 1.5, 12: 1.0}.get(i, 2.75 if i <= 7 else 2.3)
        shrink = 0.6 + 0.4 * min(1.0, (i + 1) / 5.0)
        th = np.linspace(0.28, th_end, 24)
        for side, sx in (("left", 1), ("right", -1)):
            pts = np.stack([sx * (iax + 4) * shrink * np.sin(th), (iay + 4) * shrink * np.cos(th) * 0.95 - 4,
                            zi - 70 * s * (th / 2.75) ** 1.3], axis=1)
            pts[0] = (sx * 22, y_vb + 20, zi)
            rr = 5.0 if i > 2 else 6.0
            lo, hi = S.path_bounds(pts, rr)
            cv.paint(lambda x, y, z, p=pts, r=rr: S.tube(x, y, z, p, r), lo, hi, TS[f"rib_{side}_{i}"],
                     _rim(cancellous * 0.9, cortical * 0.85, 1.6))
    stc = (0, -iay + 8, z_edges[levels.index("T4")])
    cv.paint(lambda x, y, z: S.ellipsoid(x, y, z, stc, (16, 7, 80 * s)), np.subtract(stc, (20, 12, 90)),
             np.add(stc, (20, 12, 90)), TS["sternum"], bone_hu)
    return Phantom(cv.hu, cv.labels, grid, sex=sex, phase=phase, age=age, kind="analytic",
                   meta={"body_scale": round(s, 3), "fat_mm": round(fat_t, 1)})
