"""`totalfm export verify BUNDLE`: load a bundle exactly as the appliance does and print a summary as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from appliance.bundle import BundleError, load_bundle


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export verify")
    p.add_argument("bundle")
    a = p.parse_args(argv)
    try:
        b = load_bundle(a.bundle)
    except BundleError as e:
        print(f"REFUSED: {e}", file=sys.stderr)
        return 1
    print(json.dumps({
        "bundle_id": b.bundle_id, "root": str(b.root), "ontology": b.manifest["ontology"],
        "models": {n: {"variants": sorted(b.model(n).variants), "inputs": b.model(n).inputs}
                   for n in b.model_names()},
        "findings": len(b.findings), "prompts": int(b.prompt_embeddings.shape[0]),
        "tensorrt": sorted(e.key for e in b.engines()),
        "metrics": b.provenance.get("metrics", {}),
        "thresholds_calibrated": {k: v for k, v in b.provenance.get("calibration", {}).items()
                                  if k in ("data", "n_val", "n_test", "previous_bundle_id")} or None,
    }, indent=2))
    return 0
