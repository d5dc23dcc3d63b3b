"""Training / evaluation cases for the distilled segmenter, and the patch sampler.

A *case* is an image (float32 HU) and an organ label map (uint8, organ label space: 0 = background, i+1 = ORGANS[i])
on one canonical grid at the training spacing. Sources, by patient (never both sides of a split):
- patient A: the two NIfTI scans (``ts_abdomen_pelvis``, ``ts_upper_abdomen`` - a slab of the same patient) and
  real-backed phantoms built from them;
- patient B: the DICOM series ``ts_dicom_series`` (+ its TotalSegmentator labels) and real-backed phantoms of it;
- analytic phantoms (no patient): train seeds < 1000, validation 1000-1999, test >= 2000.

Cases are cached under ``var/cache/seg`` (npz) keyed by source and geometry, so a second run starts training at once.

Intensity augmentation: global HU scale/shift, a per-organ contrast shift (what enhancement does between non-contrast
patient A and portal-venous patient B), and noise. Optional spatial augmentation (``p_spatial`` > 0): a random scale
per axis around one common factor (body habitus: the held-out patient's organs are not the training patient's size)
and a small rotation in the axial plane plus a smaller tilt (positioning on the table), sampled straight into the
patch with one affine resampling (linear for HU, nearest for labels). Never a flip: a left-right flip would swap the
spleen side and the left/right kidney anatomy the network must learn.

Patches are class balanced: most are centred on a voxel of an organ drawn uniformly from those present in the case,
so the adrenals and the prostate are seen as often as the liver.
"""

from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from appliance import ontology
from appliance.crops import organ_index_map
from appliance.nifti_io import read_nifti
from appliance.volume import Volume, resample, to_canonical
from trainer.synth.analytic import FULL_TORSO_Z_MM

N_CLASSES = len(ontology.ORGANS) + 1
CACHE_VERSION = 2

# organs whose HU changes with intravenous contrast, and by how much it may shift (HU) in augmentation
_CONTRAST_SHIFT = {"liver": (-10, 70), "spleen": (-10, 90), "kidneys": (-10, 160), "pancreas": (-10, 70),
                   "aorta": (-10, 250), "heart": (-10, 200), "adrenal_glands": (-10, 50)}


@dataclass
class Case:
    name: str
    patient: str  # "A", "B" or "analytic"
    image: np.ndarray  # float32 HU (z, y, x) on the training grid
    labels: np.ndarray  # uint8 organ label space
    spacing: tuple[float, float, float]

    def present(self) -> list[int]:
        return [int(c) for c in np.unique(self.labels) if c > 0]


def shared_data_dir(data_dir=None) -> Path:
    from trainer.synth.realbacked import resolve_data_dir

    return resolve_data_dir(data_dir)


def load_real(patient: str, data_dir=None) -> list[tuple[str, Volume, Volume]]:
    """The real scans of one patient as (name, image Volume, organ label Volume on the image grid)."""
    base = shared_data_dir(data_dir) / "real-ct"
    out = []
    if patient == "A":
        for folder in ("ts_abdomen_pelvis", "ts_upper_abdomen"):
            img = read_nifti(base / folder / "ct.nii.gz", dtype=np.float32)
            lab = read_nifti(base / folder / "seg_totalsegmentator_fast.nii.gz")
            out.append((folder, img, _organ_labels_on(lab, img)))
    elif patient == "B":
        from appliance.dicom_io import read_series

        img = read_series(base / "ts_dicom_series" / "dicom")
        img = img[0] if isinstance(img, tuple) else img
        img = Volume(np.asarray(img.array, dtype=np.float32), img.spacing, img.origin, img.direction)
        lab = read_nifti(base / "ts_dicom_series" / "seg_totalsegmentator_fast.nii.gz")
        out.append(("ts_dicom_series", img, _organ_labels_on(lab, img)))
    else:
        raise ValueError(f"patient must be 'A' or 'B', got {patient!r}")
    return out


def _organ_labels_on(lab: Volume, img: Volume) -> Volume:
    org = lab.with_array(organ_index_map(lab.with_array(lab.array.astype(np.int32))))
    if org.same_grid(img):
        return img.with_array(org.array)
    return img.with_array(resample(org, reference=img, order=0, cval=0).array)


def to_training_grid(img: Volume, org: Volume, spacing) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Canonical orientation, then the fixed spacing (image trilinear, labels nearest on the image's new grid)."""
    ci = to_canonical(img)
    work = resample(ci, spacing=tuple(spacing), order=1)
    lab = resample(org, reference=work, order=0, cval=0).array.astype(np.uint8)
    return work.array.astype(np.float32), lab, work.spacing


def _cache_path(cache_dir: Path, key: dict) -> Path:
    h = hashlib.sha1(json.dumps({**key, "v": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{key['kind']}_{h}.npz"


def _cached(cache_dir: Path | None, key: dict, make) -> Case:
    if cache_dir is not None:
        p = _cache_path(cache_dir, key)
        if p.exists():
            z = np.load(p)
            return Case(str(z["name"]), str(z["patient"]), z["image"].astype(np.float32), z["labels"],
                        tuple(float(s) for s in z["spacing"]))
    case = make()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, name=case.name, patient=case.patient, image=case.image.astype(np.int16),
                            labels=case.labels, spacing=np.asarray(case.spacing))
        tmp.replace(p)
    return case


def real_cases(patient: str, spacing, *, data_dir=None, cache_dir=None) -> list[Case]:
    out = []
    for name, img, org in load_real(patient, data_dir):
        key = {"kind": "real", "name": name, "spacing": list(spacing)}

        def make(name=name, img=img, org=org):
            a, lab, sp = to_training_grid(img, org, spacing)
            return Case(name, patient, a, lab, sp)

        out.append(_cached(cache_dir, key, make))
    return out


REALBACKED_SOURCES = {"A": ("ts_abdomen_pelvis", "ts_upper_abdomen"), "B": ("ts_dicom_series",)}


def phantom_case(kind: str, seed: int, index: int, spacing, *, source: str | None = None, shape=None,
                 gen_spacing=None, data_dir=None, cache_dir=None) -> Case:
    """One synthetic study (trainer.synth.generate_study), on the training grid."""
    key = {"kind": kind, "seed": seed, "index": index, "source": source, "spacing": list(spacing),
           "shape": list(shape) if shape else None, "gen_spacing": list(gen_spacing) if gen_spacing else None}

    def make():
        from trainer.synth.study import generate_study

        kw = {}
        if shape is not None:
            kw["shape"] = tuple(shape)
        if gen_spacing is not None:
            kw["spacing"] = tuple(gen_spacing)
        if kind == "real-backed":
            kw["source"] = source
            kw["data_dir"] = data_dir
        st = generate_study(kind=kind, seed=seed, index=index, **kw)
        img = Volume(st.image.array.astype(np.float32), st.image.spacing, st.image.origin, st.image.direction)
        org = st.labels.with_array(organ_index_map(st.labels))
        a, lab, sp = to_training_grid(img, org, spacing)
        patient = "analytic" if kind == "analytic" else ("B" if source == "ts_dicom_series" else "A")
        return Case(f"{kind}:{source or ''}:{seed}:{index}", patient, a, lab, sp)

    return _cached(cache_dir, key, make)


def analytic_geometry(rng: np.random.Generator):
    """A varied analytic phantom grid: spacing 2.5-5 mm along z, 2.5-4 mm in plane; ~300-450 mm z, 380 mm in plane."""
    sz = float(rng.uniform(2.5, 5.0))
    sxy = float(rng.uniform(2.5, 4.0))
    nz = int(round(float(rng.uniform(300, 450)) / sz))
    nxy = int(round(380 / sxy))
    return (nz, nxy, nxy), (sz, sxy, sxy)


# the analytic torso spans 0-450 mm; the prostate sits at 0-30 mm, so a 450 mm view still cut it in 2 of 4 male
# phantoms (session 11). 30 mm beyond each end keeps it whole; the body continues below.
WHOLE_TORSO_VIEW_MM = FULL_TORSO_Z_MM + 60.0


def whole_torso_geometry(rng: np.random.Generator):
    """Like :func:`analytic_geometry`, but the field of view spans the phantom's whole torso (450 mm, see
    trainer.synth.study, plus a margin): the esophagus above the diaphragm and the prostate below the bladder are in
    the scan. In the 300-450 mm abdominal views they are slivers or missing (session 11: 37-63 esophagus voxels and 12
    prostate voxels in the three held-out phantoms)."""
    sz = float(rng.uniform(2.5, 5.0))
    sxy = float(rng.uniform(2.5, 4.0))
    nz = int(np.ceil(WHOLE_TORSO_VIEW_MM / sz))
    nxy = int(round(380 / sxy))
    return (nz, nxy, nxy), (sz, sxy, sxy)


# held-out phantoms for seg-eval: an abdominal view (seeds 2000+) and a whole-torso view (seeds 2100+)
TEST_PHANTOM_GEOMETRY = ((96, 128, 128), (3.5, 3.0, 3.0))
TEST_WHOLE_TORSO_GEOMETRY = ((146, 128, 128), (3.5, 3.0, 3.0))  # 511 mm
TEST_WHOLE_TORSO_SEED = 2100


def training_cases(train_patient: str, spacing, *, n_analytic: int, n_realbacked: int, n_whole_torso: int = 0,
                   seed: int = 0, data_dir=None, cache_dir=None, workers: int = 0, log=print) -> list[Case]:
    """Real scans of ``train_patient`` + its real-backed phantoms + analytic phantoms (seeds < 1000), the last
    ``n_whole_torso`` of them over the whole torso (:func:`whole_torso_geometry`). ``workers`` > 1 synthesises the
    phantoms in that many processes (a fresh cache of the demo recipe's 40 phantoms is minutes on one core)."""
    if not 0 <= seed < 1000:
        raise ValueError("analytic training seeds must be < 1000 (1000-1999 validation, >= 2000 test)")
    cases = real_cases(train_patient, spacing, data_dir=data_dir, cache_dir=cache_dir)
    srcs = REALBACKED_SOURCES[train_patient]
    specs = [partial(phantom_case, "real-backed", seed, i, spacing, source=srcs[i % len(srcs)], data_dir=data_dir,
                     cache_dir=cache_dir) for i in range(n_realbacked)]
    rng = np.random.default_rng(seed + 7)
    for i in range(n_analytic):
        shape, gsp = analytic_geometry(rng)
        specs.append(partial(phantom_case, "analytic", seed % 1000, i, spacing, shape=shape, gen_spacing=gsp,
                             cache_dir=cache_dir))
    # their own generator, after the abdominal ones: adding them leaves the earlier cases (and their cache) as they were
    rng_torso = np.random.default_rng(seed + 11)
    for j in range(n_whole_torso):
        shape, gsp = whole_torso_geometry(rng_torso)
        specs.append(partial(phantom_case, "analytic", seed % 1000, n_analytic + j, spacing, shape=shape,
                             gen_spacing=gsp, cache_dir=cache_dir))
    if workers > 1 and len(specs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # an executor, not multiprocessing.Pool, whose terminate() on leaving `with` can hang (batches.py)
        with ProcessPoolExecutor(min(workers, len(specs)), mp_context=mp.get_context("fork")) as pool:
            cases += list(pool.map(operator.call, specs))
    else:
        cases += [make() for make in specs]
    log(f"training cases: {len(cases)} ({sum(c.patient == train_patient for c in cases)} of patient "
        f"{train_patient}, {sum(c.patient == 'analytic' for c in cases)} analytic)")
    return cases


class PatchSampler:
    """Random class-balanced patches with intensity augmentation, normalised like the runtime."""

    def __init__(self, cases: list[Case], patch, preprocessing: dict, *, rng: np.random.Generator,
                 p_class: float = 0.7, case_weights=None, augment: bool = True, p_spatial: float = 0.0,
                 scale_range=(0.85, 1.15), rotate_deg: float = 15.0, tilt_deg: float = 5.0,
                 class_sampling: str = "case"):
        self.cases = cases
        # "case": draw a case, then a class present in it (nnU-Net's way); "global": draw the class uniformly over
        # every class of the training set, then a case that has it. Why: a class present in few cases and few voxels
        # (esophagus, prostate: 0.01-0.02 % of sampled voxels, session 11) is then centred as often as the liver.
        if class_sampling not in ("case", "global"):
            raise ValueError(f"class_sampling must be 'case' or 'global', got {class_sampling!r}")
        self.class_sampling = class_sampling
        self.p_spatial = float(p_spatial)
        self.scale_range = tuple(float(v) for v in scale_range)
        self.rotate_deg = float(rotate_deg)
        self.tilt_deg = float(tilt_deg)
        if not 0.0 <= self.p_spatial <= 1.0:
            raise ValueError(f"p_spatial is a probability (0..1), got {self.p_spatial}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(self.scale_range)}")
        self.patch = tuple(int(p) for p in patch)
        self.pp = preprocessing
        self.rng = rng
        self.p_class = p_class
        self.augment = augment
        w = np.ones(len(cases)) if case_weights is None else np.asarray(case_weights, dtype=np.float64)
        self.case_p = w / w.sum()
        # voxel coordinates per class per case, subsampled to keep memory small
        self.coords = []
        for c in cases:
            d = {}
            for lab in c.present():
                idx = np.argwhere(c.labels == lab)
                if len(idx) > 4000:
                    idx = idx[rng.choice(len(idx), 4000, replace=False)]
                d[lab] = idx
            self.coords.append(d)
        # for "global" drawing: per class, the case weights of the cases that have it (derived once, not per patch)
        self.class_case_p = {}
        for lab in sorted({lab for d in self.coords for lab in d}):
            p = np.where([lab in d for d in self.coords], self.case_p, 0.0)
            self.class_case_p[lab] = p / p.sum()

    def _pick(self) -> tuple[int, np.ndarray]:
        """(case index, patch centre)."""
        if self.class_sampling == "global" and self.rng.random() < self.p_class:
            if self.class_case_p:
                lab = int(self.rng.choice(list(self.class_case_p)))
                k = int(self.rng.choice(len(self.cases), p=self.class_case_p[lab]))
                return k, self._at(self.coords[k][lab])
        k = int(self.rng.choice(len(self.cases), p=self.case_p))
        d = self.coords[k]
        if self.class_sampling == "case" and d and self.rng.random() < self.p_class:
            return k, self._at(d[int(self.rng.choice(list(d)))])
        return k, np.array([self.rng.integers(0, s) for s in self.cases[k].image.shape])

    def _at(self, coords: np.ndarray) -> np.ndarray:
        idx = coords[self.rng.integers(len(coords))]
        return idx + self.rng.integers(-np.asarray(self.patch) // 4, np.asarray(self.patch) // 4 + 1)

    def _crop(self, arr: np.ndarray, centre: np.ndarray, fill) -> np.ndarray:
        out = np.full(self.patch, fill, dtype=arr.dtype)
        start = centre - np.asarray(self.patch) // 2
        src, dst = [], []
        for s, p, n in zip(start, self.patch, arr.shape):
            a0, a1 = max(s, 0), min(s + p, n)
            if a1 <= a0:
                return out
            src.append(slice(a0, a1))
            dst.append(slice(a0 - s, a1 - s))
        out[tuple(dst)] = arr[tuple(src)]
        return out

    def _spatial_matrix(self) -> np.ndarray:
        """Patch (z, y, x) offsets from its centre -> source offsets: rotations then per-axis scale (> 1 zooms out)."""
        r = self.rng
        common = r.uniform(*self.scale_range)
        scale = np.diag(common * r.uniform(0.95, 1.05, 3))

        def rot(a, b, deg):  # rotation in the plane of axes a, b
            t = np.deg2rad(deg)
            m = np.eye(3)
            m[a, a], m[a, b], m[b, a], m[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
            return m

        m = rot(1, 2, r.uniform(-self.rotate_deg, self.rotate_deg))  # axial plane (y, x)
        m = rot(0, 1, r.uniform(-self.tilt_deg, self.tilt_deg)) @ m  # tilt (z, y)
        return m @ scale

    def _warp(self, arr: np.ndarray, centre: np.ndarray, matrix: np.ndarray, fill, order: int) -> np.ndarray:
        """Resample ``arr`` onto the patch grid around ``centre`` through ``matrix`` (only the patch is computed)."""
        from scipy import ndimage

        half = (np.asarray(self.patch) // 2).astype(np.float64)  # the same patch origin as _crop
        offset = np.asarray(centre, dtype=np.float64) - matrix @ half
        return ndimage.affine_transform(arr, matrix, offset=offset, output_shape=self.patch, order=order,
                                        mode="constant", cval=float(fill), prefilter=False).astype(arr.dtype)

    def _augment(self, img: np.ndarray, lab: np.ndarray) -> np.ndarray:
        r = self.rng
        img = img.copy()
        if r.random() < 0.6:  # contrast enhancement: shift enhancing organs
            for name, (lo, hi) in _CONTRAST_SHIFT.items():
                li = ontology.ORGAN_NAMES.index(name) + 1
                m = lab == li
                if m.any():
                    img[m] += np.float32(r.uniform(lo, hi))
        img = img * np.float32(r.uniform(0.9, 1.1)) + np.float32(r.uniform(-25, 25))
        if r.random() < 0.5:
            img += r.normal(0, r.uniform(0, 20), img.shape).astype(np.float32)
        return img

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        from appliance.segment import normalise

        xs, ys = [], []
        lo = float(self.pp["clip_hu"][0])
        for _ in range(batch):
            k, c = self._pick()
            if self.augment and self.p_spatial > 0 and self.rng.random() < self.p_spatial:
                m = self._spatial_matrix()
                img = self._warp(self.cases[k].image, c, m, -1000.0, order=1)
                lab = self._warp(self.cases[k].labels, c, m, 0, order=0)
            else:
                img = self._crop(self.cases[k].image, c, np.float32(-1000.0))
                lab = self._crop(self.cases[k].labels, c, np.uint8(0))
            if self.augment:
                img = self._augment(img, lab)
            xs.append(normalise(np.maximum(img, lo), self.pp))
            ys.append(lab)
        return np.stack(xs)[:, None].astype(np.float32), np.stack(ys).astype(np.int64)
