"""Session-7 diagnostic (docs/results/segmentation.md, #4): does connected-component clean-up of the predicted label
map raise held-out Dice? Predictions are cached, so several rules are scored on one inference. Not product code.

    python bench/experiments/seg_postprocess.py var/models/seg_s4_A.pt [--phantoms 3] [--cache /tmp/s7]

Rules: none; lcc = keep each organ's largest 3D component (two largest for the paired organs); lcc_fill = lcc, and
the voxels it removes go to background.
"""
import argparse, os, sys, time
from pathlib import Path
import numpy as np
from scipy import ndimage
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance import ontology
from appliance.segment import dice_per_label
from trainer.segmentation.evaluate import ORGAN_LABELS, held_out_sets

PAIRED = {"kidneys", "adrenal_glands", "lungs"}


def keep_largest(lab: np.ndarray) -> np.ndarray:
    out = lab.copy()
    for i, o in enumerate(ontology.ORGANS, start=1):
        m = lab == i
        if not m.any():
            continue
        cc, n = ndimage.label(m)
        if n <= 1:
            continue
        sizes = np.bincount(cc.ravel())[1:]
        keep = np.argsort(sizes)[::-1][:2 if o.name in PAIRED else 1] + 1
        out[m & ~np.isin(cc, keep)] = 0
    return out


def drop_small(lab: np.ndarray, frac: float, full: bool = False) -> np.ndarray:
    """Every organ: drop the components smaller than ``frac`` x that organ's largest component."""
    out = lab.copy()
    st = ndimage.generate_binary_structure(3, 3 if full else 1)
    for i in range(1, len(ontology.ORGANS) + 1):
        m = lab == i
        if not m.any():
            continue
        cc, n = ndimage.label(m, structure=st)
        if n <= 1:
            continue
        sizes = np.bincount(cc.ravel())[1:]
        small = np.flatnonzero(sizes < frac * sizes.max()) + 1
        out[np.isin(cc, small)] = 0
    return out


RULES = {"none": lambda p: p, "lcc": keep_largest,
         **{f"drop<{f}": (lambda p, f=f: drop_small(p, f)) for f in (0.1, 0.2, 0.5)},
         **{f"drop<{f}/26": (lambda p, f=f: drop_small(p, f, True)) for f in (0.1, 0.2)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint"); ap.add_argument("--phantoms", type=int, default=3); ap.add_argument("--cache", default="/tmp/s7")
    a = ap.parse_args()
    import torch
    from trainer.segmentation.unet import build_from_checkpoint, load_checkpoint
    from trainer.segmentation.infer_torch import segment_with_model
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    ck = load_checkpoint(a.checkpoint); tp = ck.get("provenance", {}).get("train_patient", "A")
    model, pp = build_from_checkpoint(a.checkpoint)
    rows = {}
    for set_name, name, img, ref in held_out_sets(tp, a.phantoms):
        f = Path(a.cache) / f"{Path(a.checkpoint).stem}_{name.replace(' ', '_')}.npz"
        if f.exists():
            pred = np.load(f)["pred"]
        else:
            t = time.time(); pred = segment_with_model(img, model, pp).array; np.savez_compressed(f, pred=pred)
            print(name, f"{time.time() - t:.0f}s", flush=True)
        for rule, fn in RULES.items():
            p = fn(pred)
            d = dice_per_label(p, ref, ORGAN_LABELS)
            for lab, v in d.items():
                if not np.isnan(v):
                    rows.setdefault((set_name, ontology.ORGANS[lab - 1].name), {}).setdefault(rule, []).append(v)
    print(f"{a.checkpoint} (trained on {tp})\n| set | organ | " + " | ".join(RULES) + " |\n| --- | --- |" + " --- |" * len(RULES))
    for (s, o), r in rows.items():
        print(f"| {s[:16]} | {o} | " + " | ".join(f"{np.mean(r[k]):.3f}" for k in RULES) + " |")


if __name__ == "__main__":
    main()
