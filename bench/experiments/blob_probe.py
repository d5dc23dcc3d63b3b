"""Session-20 diagnostic (#5, docs/results/model.md): does a Hessian blob measure on an organ crop find the small
focal findings that neither the organ embedding nor the v2 organ measurements rank (lung nodule: zero-shot 0.62,
best single v2 measurement 0.65)? Not product code and not tested.

    python bench/experiments/blob_probe.py var/s20/bigreal/pairs test lungs lung_nodule bright
    python bench/experiments/blob_probe.py var/s20/bigreal/pairs val liver liver_lesion dark

Per usable crop of ORGAN in SPLIT (the crop as the encoder's measurements see it: windowed 0..1 at the organ's recipe
spacing, with its mask), at scales sigma = 2, 3, 5 mm, at every voxel of the mask eroded by one voxel, its blob
strength (``appliance.preprocess.blob_strength``, which organ-measurements-v3 uses): the weakest of the three
scale-normalised curvatures when all three point the same way (all negative for a BRIGHT blob, all positive for a
DARK one; a tube has one flat direction and scores ~0, a plane two). Printed: AUROC of the crop's maximum and
99.99th percentile blob strength against FINDING's truth. Why the weakest curvature: a nodule is curved in every
direction, a vessel or the organ's rim is not.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SIGMAS_MM = (2.0, 3.0, 5.0)


def main():
    from scipy import ndimage

    from appliance import ontology
    from appliance.preprocess import blob_strength
    from trainer.evaluate import metrics as M
    from trainer.pairs.dataset import USABLE, PairDataset

    pairs, split, organ, finding, polarity = sys.argv[1:6]
    spacing = ontology.ORGANS_BY_NAME[organ].crop.spacing_mm  # crops sit on their organ recipe's grid
    ys, feats = [], []
    with PairDataset(pairs) as ds:
        for r in ds.crops(organ=organ, split=split, status=USABLE):
            img, mask = ds.load_crop(r["crop_id"])
            ys.append(finding in (ds.organ_labels(r["study_key"]).get(organ, {}).get("findings") or []))
            row = []
            core = ndimage.binary_erosion(np.asarray(mask) > 0)
            for s in SIGMAS_MM:
                b = blob_strength(img, core, spacing, s)[0 if polarity == "bright" else 1]
                row += [float(b.max()) if b.size else 0.0, float(np.percentile(b, 99.99)) if b.size else 0.0]
            feats.append(row)
    y, x = np.array(ys), np.array(feats)
    print(f"{organ} / {finding} ({polarity} blobs), {split}: {len(y)} crops, {int(y.sum())} positive, "
          f"spacing {spacing}")
    for k, (s, stat) in enumerate((s, stat) for s in SIGMAS_MM for stat in ("max", "p99.99")):
        print(f"  sigma {s:.0f} mm, {stat:6s}: AUROC {M.auroc(y, x[:, k]):.3f}")


if __name__ == "__main__":
    main()
