"""`totalfm train seg-eval CKPT`: Dice per organ of a segmentation checkpoint, through the runtime path.

    totalfm train seg-eval var/models/seg_demo.pt [--phantoms 3] [--json OUT.json] [--write-metrics]
        [--postprocess RECIPE|none] [--write-postprocess]

Held-out sets (never the training patient, see seg_data): the *other* real patient (checkpoint provenance says which
one it was trained on: A -> test on the DICOM series B; B -> test on both NIfTI scans of A) and analytic phantoms with
seeds >= 2000, in two views: abdominal (as the real scans; the esophagus and prostate are slivers at its edges) and
the whole torso (seeds >= 2100, where they are whole). Prediction is ``appliance.segment.segment_volume`` with a torch
``predict`` (infer_torch), Dice is computed on the test scan's own grid against the TotalSegmentator reference mapped
to organ label space. Every organ present in the reference (or predicted) is reported. CKPT may also be a model
bundle: its segmenter is rebuilt from the ONNX weights (init_weights) and scored with the bundle's preprocessing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from appliance import ontology
from appliance.segment import dice_per_label
from appliance.volume import Volume

ORGAN_LABELS = list(range(1, len(ontology.ORGANS) + 1))


def evaluate_volume(model, pp, image: Volume, ref: np.ndarray) -> dict:
    from trainer.segmentation.infer_torch import segment_with_model

    t = time.time()
    pred = segment_with_model(image, model, pp)
    dt = time.time() - t
    d = dice_per_label(pred.array, ref, ORGAN_LABELS)
    vml = image.voxel_volume_ml
    per = {}
    for lab, v in d.items():
        if math.isnan(v):
            continue
        per[ontology.ORGANS[lab - 1].name] = {
            "dice": round(v, 4), "ref_ml": round(float((ref == lab).sum()) * vml, 1),
            "pred_ml": round(float((pred.array == lab).sum()) * vml, 1)}
    return {"organs": per, "seconds": round(dt, 1), "shape": list(image.shape)}


def held_out_sets(train_patient: str, n_phantoms: int, data_dir=None):
    """Yield (set name, case name, image Volume, organ reference array on that grid)."""
    from trainer.segmentation.seg_data import (TEST_PHANTOM_GEOMETRY, TEST_WHOLE_TORSO_GEOMETRY,
                                               TEST_WHOLE_TORSO_SEED, load_real)
    from appliance.crops import organ_index_map

    held = "B" if train_patient == "A" else "A"
    for name, img, org in load_real(held, data_dir):
        yield f"real patient {held}", name, img, org.array
    from trainer.synth.study import generate_study

    views = (("analytic phantoms (seeds >= 2000)", 2000, TEST_PHANTOM_GEOMETRY),
             (f"analytic phantoms, whole torso (seeds >= {TEST_WHOLE_TORSO_SEED})", TEST_WHOLE_TORSO_SEED,
              TEST_WHOLE_TORSO_GEOMETRY))
    for set_name, seed0, (shape, sp) in views:
        for i in range(n_phantoms):
            st = generate_study(kind="analytic", seed=seed0 + i, index=0, shape=shape, spacing=sp)
            img = Volume(st.image.array.astype(np.float32), st.image.spacing, st.image.origin, st.image.direction)
            yield set_name, f"analytic seed {seed0 + i}", img, organ_index_map(st.labels)


def summarise(results: list[dict]) -> dict:
    """Per set: per organ mean Dice over the cases where the organ is present."""
    out: dict = {}
    for r in results:
        s = out.setdefault(r["set"], {})
        for organ, v in r["organs"].items():
            s.setdefault(organ, []).append(v["dice"])
    return {k: {o: {"mean_dice": round(float(np.mean(v)), 4), "n": len(v)} for o, v in s.items()}
            for k, s in out.items()}


def format_table(summary: dict) -> str:
    sets = list(summary)
    lines = ["| organ | " + " | ".join(sets) + " |", "| --- |" + " --- |" * len(sets)]
    for o in ontology.ORGAN_NAMES:
        cells = []
        for s in sets:
            v = summary[s].get(o)
            cells.append("absent" if v is None else f"{v['mean_dice']:.3f}" + (f" (n={v['n']})" if v["n"] > 1 else ""))
        lines.append(f"| {o} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _from_bundle(path):
    from trainer.segmentation.init_weights import load_init
    from trainer.segmentation.unet import build

    start = load_init(path)
    if start.held_out_patient is None:
        raise SystemExit(f"{path}: the bundle does not say which real patient its segmenter was tested on "
                         "(provenance metrics 'real patient A|B'); evaluate its checkpoint instead")
    model = build(start.config)
    model.load_state_dict(start.state_dict)
    model.eval()
    ck = {"metrics": {}, "provenance": {"init_from": start.source}}
    return ck, model, start.preprocessing, "A" if start.held_out_patient == "B" else "B"


def evaluate_checkpoint(ckpt_path: str | Path, *, n_phantoms: int = 3, data_dir=None, log=print,
                        postprocess="checkpoint") -> dict:
    """``postprocess``: "checkpoint" (the rule the checkpoint carries, what its bundle would run), None (no clean-up)
    or a postprocess dict to try in its place."""
    import torch

    from trainer.segmentation.unet import build_from_checkpoint, load_checkpoint

    torch.set_num_threads(2)
    if Path(ckpt_path).suffix == ".pt":
        ck = load_checkpoint(ckpt_path)
        train_patient = ck.get("provenance", {}).get("train_patient", "A")
        model, pp = build_from_checkpoint(ckpt_path)
    else:  # a bundle: score the segmenter that ships, with the preprocessing and clean-up it runs
        ck, model, pp, train_patient = _from_bundle(ckpt_path)
    if postprocess != "checkpoint":
        pp.pop("postprocess", None)
        if postprocess:
            pp["postprocess"] = dict(postprocess)
    results = []
    t0 = time.time()
    for set_name, name, img, ref in held_out_sets(train_patient, n_phantoms, data_dir):
        r = evaluate_volume(model, pp, img, ref)
        r.update({"set": set_name, "case": name})
        results.append(r)
        log(f"{set_name} / {name}: " + ", ".join(f"{o} {v['dice']:.3f}" for o, v in r["organs"].items())
            + f"  ({r['seconds']}s)")
    summary = summarise(results)
    return {"checkpoint": str(ckpt_path), "train_patient": train_patient,
            "held_out_patient": "B" if train_patient == "A" else "A", "cases": results, "summary": summary,
            "eval_wall_s": round(time.time() - t0, 1), "train_metrics": ck.get("metrics", {}),
            "postprocess": pp.get("postprocess")}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="totalfm train seg-eval", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a seg checkpoint (.pt) or a model bundle folder (scores what it ships)")
    ap.add_argument("--phantoms", type=int, default=3,
                    help="held-out analytic phantoms per view: abdominal (seeds 2000..) and whole torso (2100..)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="write the full result here")
    ap.add_argument("--write-metrics", action="store_true", help="store the Dice summary in the checkpoint's metrics")
    ap.add_argument("--postprocess", default="checkpoint", metavar="RECIPE|none|checkpoint",
                    help="connected-component clean-up to evaluate with: the checkpoint's own (default), none, or a "
                         "seg recipe's [postprocess] table")
    ap.add_argument("--write-postprocess", action="store_true",
                    help="store the --postprocess rule in the checkpoint, so its bundle runs it")
    a = ap.parse_args(argv)
    post = a.postprocess
    if post not in ("checkpoint", "none"):
        from trainer.segmentation.train import load_recipe, postprocess_from_recipe

        post = postprocess_from_recipe(load_recipe(post))
    elif post == "none":
        post = None
    if (a.write_metrics or a.write_postprocess) and Path(a.checkpoint).suffix != ".pt":
        ap.error("--write-metrics / --write-postprocess write into a checkpoint (.pt), never into a bundle (its files "
                 "are checksummed); re-export the bundle from a checkpoint instead")
    if a.write_postprocess and post == "checkpoint":
        ap.error("--write-postprocess needs --postprocess RECIPE or none")
    res = evaluate_checkpoint(a.checkpoint, n_phantoms=a.phantoms, data_dir=a.data_dir,
                              log=lambda m: print(m, flush=True), postprocess=post)
    print()
    print(f"Dice per organ, checkpoint trained on patient {res['train_patient']} "
          f"(held-out real patient {res['held_out_patient']}):")
    print(format_table(res["summary"]))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.write_metrics or a.write_postprocess:
        import torch

        ck = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
        if a.write_metrics:
            ck.setdefault("metrics", {})["dice"] = res["summary"]
            ck["metrics"]["dice_postprocess"] = res["postprocess"]
        if a.write_postprocess:
            ck["preprocessing"].pop("postprocess", None)
            if post:
                ck["preprocessing"]["postprocess"] = post
        tmp = Path(str(a.checkpoint) + ".tmp")
        torch.save(ck, tmp)
        tmp.replace(a.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
