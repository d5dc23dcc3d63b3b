"""`totalfm export seg --seg CKPT --into BUNDLE`: a retrained segmenter into an existing bundle.

The loop it closes: `totalfm train seg-train --init BUNDLE` fine-tunes the segmenter a bundle ships (for instance on a
hospital's own label maps), `totalfm train seg-eval CKPT` measures it on the held-out patient and phantoms, and this
puts it back. The organ encoder, text encoder, prompts and thresholds are kept; parity is checked on real CT patches,
and the bundle gets a new id (export.bundle_build.replace_segmentation).
"""

from __future__ import annotations

import argparse
import json

from appliance.errors import TotalFMError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export seg", description=__doc__.splitlines()[0])
    p.add_argument("--seg", required=True, help="segmentation checkpoint (trainer.segmentation.unet)")
    p.add_argument("--into", required=True, help="bundle folder whose segmenter is replaced")
    p.add_argument("--bundle-id", help="the new bundle id (default: the old one + '-seg-' + the model's hash)")
    a = p.parse_args(argv)
    from export import real_inputs
    from export.bundle_build import replace_segmentation
    from trainer.segmentation.unet import build_from_checkpoint, load_checkpoint

    ck = load_checkpoint(a.seg)
    if "dice" not in (ck.get("metrics") or {}):
        raise TotalFMError(f"{a.seg} has no held-out Dice; run `totalfm train seg-eval {a.seg} --write-metrics` "
                           "first, so the bundle records what its segmenter scores")
    model, pre = build_from_checkpoint(a.seg)
    pre.setdefault("label_space", "organ")
    try:
        batches = real_inputs.seg_batches(pre, n=2)
    except TotalFMError:  # no shared CT on this machine: random patches still check the export
        batches = None
    m = replace_segmentation(a.into, model, pre, checkpoint=a.seg, metrics=ck["metrics"], parity_batches=batches,
                             bundle_id=a.bundle_id, log=print)
    print(json.dumps({"bundle": a.into, "bundle_id": m["bundle_id"],
                      "parity": m["provenance"]["parity"]["segmentation"]}, indent=2))
    return 0
