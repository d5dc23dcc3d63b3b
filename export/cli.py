"""`totalfm export <sub>`: checkpoints / TotalSegmentator weights -> model bundle; TensorRT engines; INT8 variants.

Subcommands are imported only when they run (torch is heavy, TensorRT optional).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bundle": ("export.bundle_cli", "trained checkpoints -> bundle (ONNX, parity on real crops, prompt embeddings)"),
    "seg": ("export.seg_swap", "a retrained segmentation checkpoint -> into an existing bundle (parity, new id)"),
    "calibrate": ("export.calibrate", "re-pick a bundle's finding thresholds on a pair dataset's val split (test measured)"),
    "untrained": ("export.untrained", "tiny bundle of RANDOM networks with the real I/O contracts (plumbing tests)"),
    "totalseg": ("export.totalseg_import", "TotalSegmentator nnU-Net weights -> ONNX segmentation model (+ parity)"),
    "int8": ("export.quantize", "add an INT8 variant of the encoders if zero-shot AUROC stays within 0.01 of fp32"),
    "tensorrt": ("export.tensorrt_build", "build TensorRT engines for this GPU into a bundle (needs tensorrt)"),
    "slim": ("export.slim", "small copy of a bundle for embedding: uint8 word-embedding table, no fp32 text encoder"),
    "verify": ("export.verify", "check a bundle's hashes, versions and ontology; print its summary"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: totalfm export <subcommand> [options]\n\nsubcommands:")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"totalfm export: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    mod = importlib.import_module(SUBCOMMANDS[name][0])
    return int(mod.main(rest) or 0)
