"""`totalfm query "gallstones" [--organ gallbladder] [--top 10]`: rank stored organs by similarity to a text.

The text is encoded with the bundle's text encoder and compared (cosine) with the organ embeddings stored by earlier
analyses made with the SAME bundle. Results are retrieval hints for a radiologist, not diagnoses.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="totalfm query", description=__doc__)
    ap.add_argument("text", help='free text, e.g. "gallstones" or "enlarged spleen"')
    ap.add_argument("--organ", help="only this organ (e.g. gallbladder)")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--bundle", help="model bundle (default: $TOTALFM_BUNDLE or the embedded bundle)")
    ap.add_argument("--db", help="store URL (default sqlite:///var/totalfm.db)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from appliance import ontology
    from appliance.bundle import default_bundle_path, load_bundle
    from appliance.store import open_store
    from appliance.store.search import search_organs
    from appliance.text import TextEncoder

    if args.organ:
        ontology.organ(args.organ)  # unknown organ -> OntologyError listing the known ones
    bundle = load_bundle(args.bundle or default_bundle_path())
    q = TextEncoder.from_bundle(bundle).encode_texts([args.text])[0]
    store = open_store(args.db or "sqlite:///var/totalfm.db")
    try:
        hits = search_organs(store, q, bundle_id=bundle.bundle_id, organ=args.organ, top=args.top)
    finally:
        store.close()
    if args.json:
        json.dump([h.__dict__ for h in hits], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f'query "{args.text}" (bundle {bundle.bundle_id}, {len(hits)} hit(s); retrieval hints for radiologist '
          f'review - not a diagnosis)')
    for rank, h in enumerate(hits, 1):
        print(f"{rank:3d}. {h.score:+.3f}  {h.organ:16s} study {h.study_uid} v{h.version}"
              f"  {h.accession or ''} {h.study_date or ''}  ({h.status})")
    if not hits:
        print("no stored organ embeddings from this bundle yet; analyse studies first")
    return 0
