"""`totalfm synth`: write N synthetic CT studies with known findings and reports.

Example: totalfm synth --n 20 --kind analytic --out /data/synth --seed 7 --size 256,256,160 --preview
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from appliance.errors import TotalFMError


def _triple(text: str, what: str, cast) -> tuple:
    try:
        vals = tuple(cast(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{what} needs three positive numbers x,y,z, e.g. 256,256,160; got {text!r}")
    return vals


def _pair(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        lo = hi = 0
    if not 1 <= lo <= hi <= 16:
        raise argparse.ArgumentTypeError(f"--findings-per-study needs LO,HI with 1 <= LO <= HI <= 16, got {text!r}")
    return lo, hi


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalfm synth", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1, help="number of studies")
    p.add_argument("--kind", choices=("analytic", "real-backed"), default="analytic")
    p.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per study)")
    p.add_argument("--seed", type=int, default=0, help="run seed; study i uses a seed derived from (seed, i)")
    p.add_argument("--start", type=int, default=0, help="first study index (to split a run across machines)")
    p.add_argument("--size", type=lambda s: _triple(s, "--size", int), default=None,
                   help="voxels x,y,z (analytic default 256,256,160; real-backed: a random crop of the source)")
    p.add_argument("--spacing", type=lambda s: _triple(s, "--spacing", float), default=None,
                   help="voxel size in mm x,y,z (default: the size spread over a whole torso)")
    p.add_argument("--normal-fraction", type=float, default=0.3)
    p.add_argument("--phrasing", choices=("train", "heldout"), default="train")
    p.add_argument("--findings-per-study", type=_pair, default=None, metavar="LO,HI",
                   help="enriched TRAINING plan: LO..HI findings per abnormal study, equal weights, then the realistic "
                        "co-occurrences (default: the realistic plan: 1-4 by prevalence with co-occurrences)")
    p.add_argument("--data-dir", default=None, help="shared data folder for real-backed (else $TOTALFM_SHARED_DATA)")
    p.add_argument("--source", default=None,
                   help="real-backed only: patient A (the NIfTI scans) or B (the DICOM series), or one source name "
                        "(ts_abdomen_pelvis, ts_upper_abdomen, ts_dicom_series); default: any source at random")
    p.add_argument("--compress", action="store_true", help="write the DICOM series compressed")
    p.add_argument("--preview", action="store_true", help="write preview.png per study")
    p.add_argument("--no-dicom", action="store_true", help="skip the DICOM series")
    p.add_argument("--workers", type=int, default=1, help="processes in parallel")
    return p


def _one(args: argparse.Namespace, index: int) -> str:
    from trainer.synth.output import write_study
    from trainer.synth.study import generate_study

    shape = args.size[::-1] if args.size else ((160, 256, 256) if args.kind == "analytic" else None)
    spacing = args.spacing[::-1] if args.spacing else None
    study = generate_study(args.kind, args.seed, index, shape=shape, spacing=spacing,
                           normal_fraction=args.normal_fraction, phrasing=args.phrasing, data_dir=args.data_dir,
                           source=args.source, findings_per_study=args.findings_per_study)
    if args.kind == "real-backed":  # which real patient the phantom is (splits must never mix patients)
        from trainer.synth.realbacked import source_patient
        study.truth["source_patient"] = source_patient(study.truth.get("source"))
    else:
        study.truth["source_patient"] = None
    d = args.out / f"study_{index:05d}"
    paths = write_study(study, d, compress=args.compress, preview=args.preview, dicom=not args.no_dicom)
    names = ", ".join(r["finding"] for r in study.truth["findings"]) or "normal"
    note = f" ({paths['dicom']})" if paths.get("dicom", "").startswith("skipped") else ""
    return f"{d.name}: {names}{note}"


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.n < 1:
        raise TotalFMError("--n must be at least 1")
    if args.source is not None and args.kind != "real-backed":
        raise TotalFMError("--source only applies to --kind real-backed")
    if not 0 <= args.normal_fraction <= 1:
        raise TotalFMError("--normal-fraction must be between 0 and 1")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    idx = range(args.start, args.start + args.n)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as ex:
            lines = list(ex.map(_one, [args] * args.n, idx))
    else:
        lines = [_one(args, i) for i in idx]
    for line in lines:
        print(line)
    print(f"{args.n} studies in {time.time() - t0:.1f} s -> {args.out}", file=sys.stderr)
    return 0
