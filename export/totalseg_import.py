"""`totalfm export totalseg --weights DIR --out DIR [--into BUNDLE]`: TotalSegmentator's nnU-Net -> ONNX + recipe.

Reads the installed `total` fast model (Dataset297, 3 mm: fold_0/checkpoint_final.pth + plans.json + dataset.json),
rebuilds the network with nnU-Net's own `get_network_from_plans`, and exports it (dynamo, opset 18, dynamic batch)
so the appliance runs TotalSegmentator's network through appliance.segment.segment_volume without torch.

How nnU-Net's conventions map onto ours (the graph absorbs what the preprocessing dict cannot say):
* orientation: nnU-Net/TotalSegmentator feed arrays of the RAS-canonical image transposed to (z, y, x); our
  canonical layout (appliance.volume.to_canonical) is LPS (z, y, x). RAS vs LPS = flipped y and x, so the exported
  graph flips axes 3 and 4 on the way in and back on the way out; plans' transpose_forward/backward likewise.
* normalisation (CTNormalization): clip to the foreground 0.5/99.5 percentiles, then (x - mean) / std
  -> clip_hu, mean, std.
* spacing / patch size: plans 3d_fullres spacing and patch_size (axis order after transpose_backward).
* class_ids: output channel -> TotalSegmentator `total` class id, matched BY NAME against appliance.ontology.
* step 0.8 (what TotalSegmentator passes for the total task), no mirroring (the total models are trained with NoMirroring), Gaussian sigma 1/8.

Written: OUT/models/totalseg_<dataset>.onnx and OUT/totalseg_model.json (the manifest entry); with --into BUNDLE
the bundle's "segmentation" model is replaced by it (hashes recomputed). Parity (--parity-ct, default the shared
abdomen CT): our runtime path vs the unmodified totalsegmentator() API on the same image, fraction of identical
labels; written into the JSON and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from appliance import ontology
from appliance.errors import TotalFMError
from export.onnx_export import export_onnx, io_signature, ort_session

DEFAULT_DATASET = "Dataset297_TotalSegmentator_total_3mm_1559subj"
MODEL_SUBDIR = "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"


def model_dir(weights: str | Path, dataset: str = DEFAULT_DATASET) -> Path:
    d = Path(weights) / dataset / MODEL_SUBDIR
    for f in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth"):
        if not (d / f).is_file():
            raise TotalFMError(f"TotalSegmentator weights incomplete: {d / f} not found; point --weights at the "
                               f"TotalSegmentator weights directory (the one holding {dataset}/)")
    return d


def load_network(mdir: Path):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((mdir / "plans.json").read_text())
    dataset = json.loads((mdir / "dataset.json").read_text())
    ckpt = torch.load(mdir / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    cfg = PlansManager(plans).get_configuration("3d_fullres")
    n_out = len(dataset["labels"])
    net = get_network_from_plans(cfg.network_arch_class_name, cfg.network_arch_init_kwargs,
                                 cfg.network_arch_init_kwargs_req_import, 1, n_out, allow_init=False,
                                 deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"])
    return net.eval(), plans, dataset, ckpt


def preprocessing_from_plans(plans: dict, dataset: dict) -> dict:
    cfg = plans["configurations"]["3d_fullres"]
    tb = list(plans.get("transpose_backward", [0, 1, 2]))
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    schemes = cfg.get("normalization_schemes", ["CTNormalization"])
    if schemes != ["CTNormalization"]:
        raise TotalFMError(f"normalisation {schemes} cannot be expressed by the segmentation preprocessing dict "
                           f"(only CTNormalization: clip + z-score)")
    labels = dataset["labels"]
    if any(not isinstance(v, int) for v in labels.values()):
        raise TotalFMError("region-based nnU-Net label definitions are not supported")
    by_channel = sorted(labels.items(), key=lambda kv: kv[1])
    class_ids = []
    for name, ch in by_channel:
        if name == "background":
            class_ids.append(0)
        elif name in ontology.TOTALSEG_ID_BY_NAME:
            class_ids.append(int(ontology.TOTALSEG_ID_BY_NAME[name]))
        else:
            raise TotalFMError(f"TotalSegmentator class {name!r} (channel {ch}) is unknown to ontology "
                               f"{ontology.ONTOLOGY_VERSION}; the model is not the `total` task this appliance knows")
    return {
        "spacing_mm": [float(cfg["spacing"][i]) for i in tb],
        "patch_size": [int(cfg["patch_size"][i]) for i in tb],
        "clip_hu": [float(props["percentile_00_5"]), float(props["percentile_99_5"])],
        "mean": float(props["mean"]), "std": float(props["std"]),
        # TotalSegmentator runs its total/total_mr models with tile_step_size 0.8 (totalsegmentator/nnunet.py), not
        # nnU-Net's default 0.5; the blend differs with the window grid, so the step must be the same.
        "label_space": "totalseg", "class_ids": class_ids, "step": 0.8,
        "source": "nnU-Net v2 plans (TotalSegmentator)", "mirroring": False, "gaussian_sigma_scale": 0.125,
        # nnU-Net's blend, which appliance.segment.segment_volume honours when these keys are present: raw logits
        # blended (not softmax), Gaussian centred at index n//2, windows laid out from voxel 0 of the RAS-canonical
        # array (our LPS array's y/x ends are the other side). Measured on the shared CT: 99.80% identical labels
        # vs the totalsegmentator() API with them, 94.8% without (tests/export/test_totalseg_import.py).
        "blend": "logits", "importance_map": "nnunet", "window_frame": "RAS",
        "orientation_in_graph": "LPS->RAS flip of y,x and plans transpose are inside the ONNX graph",
    }


def wrap(net, plans: dict):
    """Module that takes our canonical LPS (z,y,x) patches and returns logits in the same layout."""
    import torch

    tf = [2 + int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    tb = [2 + int(a) for a in plans.get("transpose_backward", [0, 1, 2])]

    class LPSWrapped(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.net = n

        def forward(self, image):
            x = torch.flip(image, dims=(3, 4))  # LPS -> RAS (y: P->A, x: L->R)
            x = x.permute(0, 1, *tf)
            y = self.net(x)
            y = y.permute(0, 1, *tb)
            return torch.flip(y, dims=(3, 4))

    return LPSWrapped(net).eval()


def parity_vs_totalsegmentator(weights: Path, onnx_path: Path, pre: dict, ct_path: Path, threads: int = 2) -> dict:
    """Our runtime (segment_volume + ORT) vs the unmodified totalsegmentator() API on the same CT."""
    from appliance.nifti_io import read_nifti
    from appliance.segment import segment_volume
    from trainer.segmentation.totalseg_adapter import (disable_usage_stats, register_trainers_without_package_walk,
                                                       volume_to_nifti, nifti_labels_to_volume)

    vol = read_nifti(ct_path)
    sess = ort_session(onnx_path, threads)
    t0 = time.perf_counter()
    ours = segment_volume(vol, pre, lambda x: sess.run(["logits"], {"image": x})[0]).array
    t_ours = time.perf_counter() - t0
    disable_usage_stats()
    register_trainers_without_package_walk()
    from totalsegmentator.python_api import totalsegmentator

    prev = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights)
    try:
        t0 = time.perf_counter()
        # whole image, no roi_subset: roi_subset adds a 6 mm cropping pass before the 3 mm network
        out = totalsegmentator(volume_to_nifti(vol), None, task="total", fast=True, device="cpu", quiet=True,
                               nr_thr_resamp=1, nr_thr_saving=1)
        t_ts = time.perf_counter() - t0
    finally:
        if prev is None:
            os.environ.pop("TOTALSEG_WEIGHTS_PATH", None)
        else:
            os.environ["TOTALSEG_WEIGHTS_PATH"] = prev
    ref = nifti_labels_to_volume(out, vol).array
    lut = ontology.organ_index_lut(max(int(ours.max()), int(ref.max()), 117))
    fg = (ref > 0) | (ours > 0)
    return {
        "ct": str(ct_path), "voxels": int(ref.size),
        "identical_labels": float((ours == ref).mean()),
        "identical_labels_in_foreground": float((ours[fg] == ref[fg]).mean()) if fg.any() else 1.0,
        "identical_organ_labels": float((lut[ours] == lut[ref]).mean()),
        "threshold": 0.99, "ok": bool((ours == ref).mean() >= 0.99),
        "labels_present_ref": int(len(np.unique(ref))), "labels_present_ours": int(len(np.unique(ours))),
        "seconds_ours_ort": round(t_ours, 1), "seconds_totalsegmentator_api": round(t_ts, 1),
    }


def import_totalseg(weights: str | Path, out: str | Path, *, dataset: str = DEFAULT_DATASET,
                    parity_ct: str | Path | None = None, into: str | Path | None = None, log=print) -> dict:
    import torch

    mdir = model_dir(weights, dataset)
    net, plans, ds, ckpt = load_network(mdir)
    pre = preprocessing_from_plans(plans, ds)
    out = Path(out)
    rel = f"models/totalseg_{dataset.split('_')[0].lower()}.onnx"
    wrapped = wrap(net, plans)
    ex = torch.zeros((2, 1, *pre["patch_size"]), dtype=torch.float32)
    log(f"exporting {dataset} (patch {pre['patch_size']}, {len(pre['class_ids'])} classes)")
    export_onnx(wrapped, (ex,), out / rel, input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}})
    from export import parity as _parity, real_inputs

    try:
        batches = real_inputs.seg_batches(pre, n=2)
    except TotalFMError:
        batches = [{"image": np.random.default_rng(0).standard_normal((2, 1, *pre["patch_size"])).astype(np.float32)}]
    par = _parity.segmentation_parity("segmentation", wrapped, ort_session(out / rel), batches)
    _parity.require([par])
    ins, outs = io_signature(out / rel)
    entry = {"file": rel, "variants": {"fp32": rel}, "inputs": ins, "outputs": outs, "preprocessing": pre,
             "extra": {"source": "TotalSegmentator", "dataset": dataset, "trainer": ckpt.get("trainer_name"),
                       "export_parity_vs_torch": par.as_dict()}}
    if parity_ct:
        log(f"parity vs totalsegmentator() on {parity_ct} ...")
        entry["extra"]["parity_vs_totalsegmentator_api"] = parity_vs_totalsegmentator(
            Path(weights), out / rel, pre, Path(parity_ct))
        log(json.dumps(entry["extra"]["parity_vs_totalsegmentator_api"]))
    (out / "totalseg_model.json").write_text(json.dumps(entry, indent=2))
    if into:
        from export.bundle_build import update_manifest

        broot = Path(into)
        (broot / "models").mkdir(exist_ok=True)
        shutil.copyfile(out / rel, broot / rel)

        def edit(m):
            m["models"]["segmentation"] = entry

        update_manifest(broot, edit)
        log(f"bundle {broot}: segmentation model replaced by {rel}")
    return entry


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export totalseg", description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="TotalSegmentator weights dir (holds Dataset297_...)")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--into", help="bundle whose segmentation model is replaced")
    p.add_argument("--parity-ct", default="auto",
                   help="CT (NIfTI) for parity vs the totalsegmentator() API; 'auto' = shared abdomen CT; 'none'")
    a = p.parse_args(argv)
    ct = a.parity_ct
    if ct == "auto":
        from export.real_inputs import shared_real_ct

        ct = shared_real_ct() / "ts_abdomen_pelvis" / "ct.nii.gz"
    elif ct == "none":
        ct = None
    entry = import_totalseg(a.weights, a.out, dataset=a.dataset, parity_ct=ct, into=a.into)
    print(json.dumps({"file": entry["file"], "preprocessing": {k: v for k, v in entry["preprocessing"].items()
                                                                if k != "class_ids"},
                      "parity": entry["extra"].get("parity_vs_totalsegmentator_api"),
                      "export_parity": entry["extra"]["export_parity_vs_torch"]}, indent=2))
    return 0
