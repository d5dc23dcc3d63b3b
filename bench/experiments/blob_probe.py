"""Session-20 diagnostic (#5, docs/results/model.md): does a Hessian blob measure on an organ crop find the small
focal findings that neither the organ embedding nor the v2 organ measurements rank (lung nodule: zero-shot 0.62,
best single v2 measurement 0.65)? Not product code and not tested.

    python bench/experiments/blob_probe.py var/s20/bigreal/pairs test lungs lung_nodule bright
    python bench/experiments/blob_probe.py var/s20/bigreal/pairs val liver liver_lesion dark

Per usable crop of ORGAN in SPLIT (the crop as the encoder's measurements see it: windowed 0..1 at the organ's recipe
spacing, with its mask), at scales sigma = 2, 3, 5 mm: the scale-normalised Hessian of the Gaussian-smoothed crop,
and at every voxel of the mask eroded by one voxel its "blobness", the weakest of the three curvatures when all three
point the same way (all negative for a BRIGHT blob, all positive for a DARK one; a tube has one flat direction and
scores ~0, a plane two). Printed: AUROC of the crop's maximum and 99.99th percentile blobness against FINDING's truth.
Why the weakest curvature: a nodule is curved in every direction, a vessel or the organ's rim is not.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SIGMAS_MM = (2.0, 3.0, 5.0)


def blobness(img: np.ndarray, mask: np.ndarray, spacing, sigma_mm: float, polarity: str) -> np.ndarray:
    """Blobness at ``sigma_mm`` of every voxel in the eroded mask -> [n] (0 where the curvatures disagree)."""
    from scipy import ndimage

    spacing = np.asarray(spacing, np.float64)
    core = ndimage.binary_erosion(mask)
    idx = np.nonzero(core)
    hess = np.zeros((len(idx[0]), 3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            d = ndimage.gaussian_filter(img, sigma_mm / spacing, order=order)[idx]
            hess[:, i, j] = hess[:, j, i] = d * sigma_mm ** 2 / (spacing[i] * spacing[j])  # per mm^2, scale-normalised
    ev = np.linalg.eigvalsh(hess)  # ascending
    if polarity == "bright":
        return np.where(ev[:, 2] < 0, -ev[:, 2], 0.0)
    return np.where(ev[:, 0] > 0, ev[:, 0], 0.0)


def main():
    from trainer.evaluate import metrics as M
    from trainer.pairs.dataset import USABLE, PairDataset

    pairs, split, organ, finding, polarity = sys.argv[1:6]
    ys, feats, spacing = [], [], None
    with PairDataset(pairs) as ds:
        for r in ds.crops(organ=organ, split=split, status=USABLE):
            img, mask = ds.load_crop(r["crop_id"])
            spacing = r["spacing"]
            spacing = [float(v) for v in (spacing.strip("[]").split(",") if isinstance(spacing, str) else spacing)]
            ys.append(finding in (ds.organ_labels(r["study_key"]).get(organ, {}).get("findings") or []))
            row = []
            for s in SIGMAS_MM:
                b = blobness(np.asarray(img, np.float32), np.asarray(mask) > 0, spacing, s, polarity)
                row += [float(b.max()) if b.size else 0.0, float(np.percentile(b, 99.99)) if b.size else 0.0]
            feats.append(row)
    y, x = np.array(ys), np.array(feats)
    print(f"{organ} / {finding} ({polarity} blobs), {split}: {len(y)} crops, {int(y.sum())} positive, spacing {spacing}")
    for k, (s, stat) in enumerate((s, stat) for s in SIGMAS_MM for stat in ("max", "p99.99")):
        print(f"  sigma {s:.0f} mm, {stat:6s}: AUROC {M.auroc(y, x[:, k]):.3f}")


if __name__ == "__main__":
    main()
