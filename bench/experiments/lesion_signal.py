"""Session-6 diagnostic (docs/results/model.md, #5): is a finding's signal still in the encoder input?

For each organ crop of a pair dataset's split, a few hand-made intensity features inside the organ mask (mean, 99th
percentile, max, share of voxels above a finding-specific HU inside the window) are scored as AUROC against the study's labels, on
the stored crop (recipe grid) and after fitting it to the encoder grid with two resamplers: the shipped linear one
(point samples) and box averaging (every source voxel contributes). A feature that separates positives on the crop
but not on the encoder grid shows what the resampling throws away; one that separates nothing on the crop points at
the crop (segmentation, placement) or at the labels. Not product code and not tested. Example:

    python bench/experiments/lesion_signal.py var/probe3000/pairs test 16,64,64
"""
import os
import sys
from collections import defaultdict

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from appliance import ontology  # noqa: E402
from appliance.preprocess import fit_to_shape  # noqa: E402
from trainer.evaluate.metrics import auroc  # noqa: E402
from trainer.pairs.dataset import USABLE, PairDataset  # noqa: E402

# finding -> HU above which a voxel counts as "lesion-like" (None: only the mean / percentile features)
THRESH_HU = {"gallstones": 200, "kidney_stone": 300, "atherosclerosis": 300, "coronary_calcification": 300,
             "bladder_wall_thickening": 30, "liver_lesion": None, "renal_cyst": None, "adrenal_nodule": None,
             "lymphadenopathy": None, "biliary_dilation": None, "lung_nodule": -300, "fracture": None,
             "metastatic_disease": None, "renal_hypodensities": None, "free_air": None, "pleural_effusion": None}


def box_fit(a: np.ndarray, shape) -> np.ndarray:
    """Separable box (area) averaging when an axis shrinks, linear (the shipped resampler) when it grows."""
    a = np.asarray(a, np.float64)
    for axis, n_out in enumerate(shape):
        n_in = a.shape[axis]
        if n_out >= n_in:
            continue
        f = n_in / n_out
        edges = np.arange(n_out + 1) * f
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            lo, hi = edges[i], edges[i + 1]
            for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
                w[i, j] = min(hi, j + 1) - max(lo, j)
        w /= f
        a = np.moveaxis(np.tensordot(w, np.moveaxis(a, axis, 0), axes=1), 0, axis)
    return fit_to_shape(a, shape)  # the growing axes, if any


def features(img: np.ndarray, mask: np.ndarray, t01: float | None) -> dict:
    m = ndimage.binary_dilation(mask > 0.5, iterations=1)
    if not m.any():
        m = np.ones_like(m)
    v = img[m]
    out = {"mean": float(v.mean()), "p99": float(np.percentile(v, 99)), "max": float(v.max())}
    if t01 is not None:
        out["frac>T"] = float((v >= t01).mean())
    return out


def main(path, split, shape):
    only = [f for f in os.environ.get("FINDINGS", "").split(",") if f]  # e.g. FINDINGS=gallstones,kidney_stone
    organ_of = {f.name: f.organs for f in ontology.CATEGORY_FINDINGS}
    rows = defaultdict(lambda: defaultdict(list))  # (finding, view) -> feature -> values ; plus labels
    ys = defaultdict(list)
    with PairDataset(path) as ds:
        crops = ds.crops(split=split, status=USABLE)
        labels = {}
        for r in crops:
            if r["study_key"] not in labels:
                labels[r["study_key"]] = ds.organ_labels(r["study_key"])
            lab = labels[r["study_key"]].get(r["organ"]) or {}
            findings = [f for f in THRESH_HU if r["organ"] in organ_of.get(f, ()) and (not only or f in only)]
            if not findings:
                continue
            img, mask = ds.load_crop(r["crop_id"])
            lo, hi = ontology.ORGANS_BY_NAME[r["organ"]].crop.hu_window
            views = {"crop": (img, mask), "linear": (fit_to_shape(img, shape), fit_to_shape(mask, shape)),
                     "box": (box_fit(img, shape), box_fit(mask, shape))}
            for f in findings:
                t = THRESH_HU[f]
                t01 = None if t is None else (t - lo) / (hi - lo)
                ys[f].append(f in lab.get("findings", []))
                for view, (a, m) in views.items():
                    for k, v in features(a, m, t01).items():
                        rows[(f, view)][k].append(v)
    print(f"| finding (positives / crops) | feature | crop | encoder grid, linear | encoder grid, box |")
    print("| --- | --- | --- | --- | --- |")
    for f in THRESH_HU:
        if f not in ys:
            continue
        y = np.array(ys[f])
        for k in rows[(f, "crop")]:
            a = [auroc(y, np.array(rows[(f, v)][k])) for v in ("crop", "linear", "box")]
            print(f"| {f} ({int(y.sum())} / {len(y)}) | {k} | " + " | ".join(f"{x:.3f}" for x in a) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], tuple(int(v) for v in sys.argv[3].split(",")))
