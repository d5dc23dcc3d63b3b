"""`totalfm train build-pairs` and `totalfm train pairs-query`.

  totalfm train build-pairs --studies DIR --out DATASET [--segmenter labels|totalseg|unet:CKPT] [--engine rules|llm]
                            [--workers N] [--holdout VAL,TEST] [--patient-key FILE]
  totalfm train pairs-query DATASET --organ liver --finding hepatic_steatosis --polarity positive
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from appliance.errors import TotalFMError


def build_pairs_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm train build-pairs",
                                description="organ crops + report sentences -> a resumable, queryable pair dataset")
    p.add_argument("--studies", required=True, help="folder with one sub-folder per study (totalfm synth layout)")
    p.add_argument("--out", required=True, help="dataset folder (created; an existing one is resumed)")
    p.add_argument("--segmenter", default="labels",
                   help="labels (the study's labels.nii.gz) | totalseg (TotalSegmentator, $TOTALSEG_WEIGHTS_PATH) | "
                        "unet:CHECKPOINT (our U-Net)")
    p.add_argument("--engine", choices=("rules", "llm"), default="rules",
                   help="report labelling; llm also runs the rules and counts disagreements")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--limit", type=int, default=None, help="process at most N new studies (trial runs)")
    p.add_argument("--holdout", metavar="VAL,TEST",
                   help="shares of a hospital's patients (studies without truth.json) held out for validation and "
                        "test, split by DICOM PatientID (default 0.1,0.1; fixed when the dataset is created)")
    p.add_argument("--patient-key", metavar="FILE",
                   help="the site's pseudonym key (created when missing; keep it with the site's secrets): a rebuilt "
                        "dataset then puts every patient on the same side as before. Default: DATASET/patient.key")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    holdout = None
    if args.holdout:
        try:
            val, test = (float(x) for x in args.holdout.split(","))
        except ValueError:
            p.error(f"--holdout {args.holdout!r}: give two shares, e.g. 0.1,0.1")
        holdout = (val, test)
    from trainer.pairs.build import build_pairs
    summary = build_pairs(args.studies, args.out, segmenter=args.segmenter, engine=args.engine,
                          workers=args.workers, progress=not args.no_progress, limit=args.limit, holdout=holdout,
                          patient_key=args.patient_key)
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def query_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm train pairs-query",
                                description="crops of a pair dataset with the sentences about them")
    p.add_argument("dataset")
    p.add_argument("--organ")
    p.add_argument("--finding", help="finding name from appliance.ontology (e.g. hepatic_steatosis)")
    p.add_argument("--polarity", choices=("positive", "negated", "normal", "not_a_finding"))
    p.add_argument("--split", choices=("train", "val", "test", "unassigned"))
    p.add_argument("--summary", action="store_true", help="print dataset counts instead")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from appliance.ontology import FINDINGS_BY_NAME, ORGAN_NAMES
    from trainer.pairs.dataset import PairDataset
    if args.organ and args.organ not in ORGAN_NAMES:
        raise TotalFMError(f"unknown organ {args.organ!r}; known: {', '.join(ORGAN_NAMES)}")
    if args.finding and args.finding not in FINDINGS_BY_NAME:
        raise TotalFMError(f"unknown finding {args.finding!r}; see appliance.ontology.FINDINGS")
    try:
        ds = PairDataset(args.dataset)
    except FileNotFoundError as exc:
        raise TotalFMError(str(exc)) from None
    with ds:
        if args.summary:
            print(json.dumps(ds.summary(), indent=1, sort_keys=True))
            return 0
        rows = [dict(r) for r in ds.query(organ=args.organ, finding=args.finding, polarity=args.polarity,
                                           split=args.split)]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['crop_id']:>6}  {r['study_key']:<16} {r['organ']:<15} {r['crop_status']:<17} "
                  f"{r['split']:<10} {r['polarity']:<9} {r['finding'] or '-':<22} {r['text']}")
        crops = {r["crop_id"] for r in rows}
        print(f"{len(crops)} crops, {len(rows)} sentences", file=sys.stderr)
    return 0
